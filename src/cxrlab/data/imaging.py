"""Read one image file (PNG, JPEG, DICOM, NIfTI) as a single grey channel.

The contract, for every format:

- `read_grey(path)` returns a (H, W) float32 array in [0, 1];
- `read_grey_u8(path)` returns a (H, W) uint8 array (the fast path the cache uses);
- `read_square_u8(path, size)` returns exactly what the image cache stores for that file;
- `decode_square_u8(data, size, name=)` does the same for a file's bytes (an upload): the
  format comes from the content (magic bytes), the name is only checked against it and used
  in messages, never as a path.

How values are scaled (the one rule to remember):

- 8-bit sources (PNG/JPEG in mode L, RGB, RGBA, LA, P, 1) keep their grey values: uint8 is the
  value itself and float is value / 255. Colour becomes grey with Pillow's ITU-R 601 luma
  (`convert("L")`); alpha is dropped, not composited.
- Sources with more than 8 bits (16-bit PNG, DICOM, NIfTI) are min-max scaled over the image:
  its smallest value becomes 0 and its largest 1 (255). A constant image becomes all zeros.
  For DICOM the min-max runs after the modality rescale (slope/intercept or Modality LUT), the
  VOI LUT or window, and the MONOCHROME1 inversion, so bone is bright in every result.

DICOM decoding is pydicom's (its own functions for the LUTs); NIfTI is nibabel's. Every failure
to read a file raises `ImageReadError` naming the file; no raw Pillow/pydicom/nibabel exception
escapes. Heavy readers (pydicom, nibabel) are imported on first use.

Decompression bombs: an image that declares more pixels than Pillow's `Image.MAX_IMAGE_PIXELS`
(PNG/JPEG header, DICOM Rows x Columns) is refused before its pixels are decoded.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from cxrlab.errors import ConfigError, CxrError, ImageReadError

logger = logging.getLogger(__name__)

#: Suffixes `read_grey` understands. A file without a suffix is read as DICOM when it carries
#: the DICOM magic bytes ("DICM" at byte 128), as PACS exports often have no extension.
SUPPORTED_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz")

_PIL_SUFFIXES = {".png", ".jpg", ".jpeg"}
_DICOM_SUFFIXES = {".dcm", ".dicom"}

#: The package that adds a pydicom decoder, by compressed transfer syntax UID. pydicom's own
#: message lists its plugins; this names the `pip install` most likely needed.
_LIBJPEG, _OPENJPEG = "pylibjpeg-libjpeg", "pylibjpeg-openjpeg"
_JPEG_FAMILY = "1.2.840.10008.1.2.4."  # + the last UID component below
_DICOM_DECODER_HINTS: dict[str, str] = {
    **{_JPEG_FAMILY + k: _LIBJPEG for k in ("50", "51", "57", "70")},  # JPEG, JPEG lossless
    **{_JPEG_FAMILY + k: f"{_LIBJPEG} or pyjpegls" for k in ("80", "81")},  # JPEG-LS
    **{_JPEG_FAMILY + k: _OPENJPEG for k in ("90", "91", "92", "93", "201", "202", "203")},
}
_ANY_DECODER = f"a pydicom pixel-data plugin ({_LIBJPEG}, {_OPENJPEG} or gdcm)"

# Pillow modes that carry more than 8 bits of grey; their arrays go through min-max scaling.
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def read_grey(path: str | Path) -> np.ndarray:
    """Read `path` as one grey channel: (H, W) float32 in [0, 1] (see the module docstring)."""
    pixels = _decode(Path(path))
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255)
    return _minmax(pixels).astype(np.float32)


def read_grey_u8(path: str | Path) -> np.ndarray:
    """Read `path` as one grey channel: (H, W) uint8 (see the module docstring)."""
    return _grey_u8(_decode(Path(path)))


def read_square_u8(path: str | Path, size: int) -> np.ndarray:
    """What the cache stores for `path`: grey, padded to a centred square, area-resized to
    (size, size) uint8. Use this at inference so served images match the training cache.

    JPEGs are decoded at full scale on purpose: libjpeg's reduced-scale decode (`draft`) is
    ~1.7x faster but differs from an area mean by up to ~80 grey levels at sharp edges.
    """
    return resize_square(read_grey_u8(path), size)


def decode_square_u8(data: bytes, size: int, *, name: str | None = None) -> np.ndarray:
    """`read_square_u8` for the bytes of a file (an upload), bit for bit.

    The reader is chosen by the content (PNG, JPEG, DICOM with its preamble, NIfTI); `name`,
    when given, must not claim another format (`x.dcm` holding a PNG is refused) and appears
    in messages as a label only. NIfTI goes through a temporary file that is removed at once.
    """
    where = f"uploaded file {name!r}" if name else "uploaded file"
    if not data:
        raise ImageReadError(f"{where} is empty (0 bytes); expected an image")
    try:
        kind = _kind_of_content(data[:_SNIFF_BYTES], where)
        claimed = _kind_of_name(name, where) if name else None
        if claimed is not None and claimed != kind:
            raise ImageReadError(
                f"{where} is named as {_KIND_NAMES[claimed]} but its content is "
                f"{_KIND_NAMES[kind]}; rename it or upload the right file"
            )
        if kind == "nifti":
            pixels = _read_nifti_bytes(data, where)
        else:
            pixels = _READERS[kind](io.BytesIO(data), where)
    except CxrError:
        raise
    except Exception as exc:  # the contract: no raw decoder exception escapes
        raise _unreadable(where, exc) from exc
    return resize_square(_grey_u8(pixels), size)


def _grey_u8(pixels: np.ndarray) -> np.ndarray:
    """Decoded pixels as uint8: 8-bit sources as they are, wider ones min-max scaled."""
    if pixels.dtype == np.uint8:
        return pixels
    return to_u8(_minmax(pixels))


def is_image_file(path: str | Path) -> bool:
    """Whether a folder scan should pick `path` up: a supported suffix, or none and the DICOM
    magic bytes. (Reading it may still fail; this only looks at the name and the preamble.)"""
    path = Path(path)
    name = path.name.lower()
    if not path.is_file() or name.startswith("."):
        return False
    if name.endswith(SUPPORTED_SUFFIXES):
        return True
    return path.suffix == "" and _has_dicom_magic(path)


def to_u8(unit: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8 by rounding to the nearest of 0..255."""
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) in pixels: from the header for PNG/JPEG, else by decoding."""
    path = Path(path)
    if _kind_of(path) == "pil":
        with Image.open(path) as image:  # reads the header only
            return image.size
    height, width = read_grey(path).shape[:2]
    return width, height


def square_offsets(width: int, height: int) -> tuple[int, int, int]:
    """(side, left, top): the square that holds a width x height image, and where the image
    sits in it. The image is centred; an odd remainder goes to the right/bottom padding."""
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def pad_to_square(grey: np.ndarray) -> np.ndarray:
    """Pad a (H, W) image with black (0) to a centred (side, side) square; nothing is cropped."""
    height, width = grey.shape
    side, left, top = square_offsets(width, height)
    if side == width == height:
        return grey
    square = np.zeros((side, side), dtype=grey.dtype)
    square[top : top + height, left : left + width] = grey
    return square


def resize_square(grey_u8: np.ndarray, size: int) -> np.ndarray:
    """Pad a (H, W) uint8 image to a square, then resize it to (size, size) with a box filter.

    Pillow's BOX filter averages each output pixel's exact footprint (an area mean), which is
    what a downsample should do; upsampling with it repeats pixels.
    """
    if size < 1:
        raise ConfigError(f"image size={size} should be >= 1 (e.g. 224)")
    square = pad_to_square(np.ascontiguousarray(grey_u8, dtype=np.uint8))
    if square.shape[0] == size:
        return square
    image = Image.fromarray(square)
    return np.array(image.resize((size, size), Image.Resampling.BOX))


def _decode(path: Path) -> np.ndarray:
    """Grey pixels of `path`: uint8 for 8-bit sources, another dtype when min-max is needed."""
    try:
        kind = _kind_of(path)
        return _READERS[kind](path, str(path))
    except CxrError:
        raise
    except Exception as exc:  # the contract: no raw decoder exception escapes
        raise _unreadable(str(path), exc) from exc


def _unreadable(where: str, exc: Exception) -> ImageReadError:
    detail = " ".join(str(exc).split()) or "no detail given"
    return ImageReadError(
        f"cannot read image {where}: {type(exc).__name__}: {detail}"
        " (the file is corrupt, truncated or not the format its name says)"
    )


def _kind_of(path: Path) -> str:
    """Which reader handles `path`: "pil", "dicom" or "nifti"."""
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    kind = _kind_of_name(path.name, str(path))
    if kind is None and _has_dicom_magic(path):
        return "dicom"
    if kind is None:
        raise ImageReadError(
            f"unsupported image type '(no suffix)' for {path}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)} (and DICOM files without a suffix)"
        )
    return kind


def _kind_of_name(name: str, where: str) -> str | None:
    """The reader a file name asks for; None without a suffix; ImageReadError for others."""
    lower = name.lower()
    if lower.endswith(".nii") or lower.endswith(".nii.gz"):
        return "nifti"
    suffix = Path(lower).suffix
    if suffix in _PIL_SUFFIXES:
        return "pil"
    if suffix in _DICOM_SUFFIXES:
        return "dicom"
    if suffix == "":
        return None
    raise ImageReadError(
        f"unsupported image type {suffix!r} for {where}; "
        f"supported: {', '.join(SUPPORTED_SUFFIXES)} (and DICOM files without a suffix)"
    )


#: Enough of a file's start to recognise every supported format (NIfTI-1 magic at 344).
_SNIFF_BYTES = 352
_KIND_NAMES = {"pil": "PNG/JPEG", "dicom": "DICOM", "nifti": "NIfTI"}


def _kind_of_content(head: bytes, where: str) -> str:
    """The reader for a file that starts with `head`, from its magic bytes."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "pil"
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x1f\x8b") or head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"  # gzip: a .nii.gz (nibabel says so if it is another gzip file)
    raise ImageReadError(
        f"{where} is not a supported image: its content is none of PNG, JPEG, DICOM (with "
        "the 'DICM' preamble) or NIfTI"
    )


def _has_dicom_magic(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _read_pil(source: Path | BinaryIO, where: str) -> np.ndarray:
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise _bomb(where, f"Pillow refused it: {exc}") from None
    with image:
        _check_pixels(image.width, image.height, where)
        image.load()
        return _pil_grey(image)


def _check_pixels(width: int, height: int, where: str) -> None:
    """ImageReadError before decoding when the declared size exceeds Pillow's bomb limit."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise _bomb(where, f"it declares {width}x{height} = {width * height:,} pixels")


def _bomb(where: str, detail: str) -> ImageReadError:
    return ImageReadError(
        f"{where} is refused as a possible decompression bomb: {detail}, more than the "
        f"limit of {Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS)"
    )


def _pil_grey(image: Image.Image) -> np.ndarray:
    """One grey channel of a loaded Pillow image: uint8 for 8-bit modes, else the raw values."""
    if image.mode == "L":
        return np.array(image)  # a writable copy, like every other reader returns
    if image.mode in _WIDE_MODES:
        # I;16B and friends come back big-endian or as int32/float32; min-max handles all.
        return np.asarray(image).astype(np.float64)
    # RGB, RGBA, LA, P, PA, 1, CMYK, ...: Pillow's luma, dropping alpha.
    return np.array(image.convert("L"))


def _read_dicom(source: Path | BinaryIO, where: str) -> np.ndarray:
    """DICOM pixels after modality LUT, VOI LUT/window and MONOCHROME1 inversion, float64.

    Messages and log lines name the file and technical tags only, never a patient tag."""
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(source)
    if "PixelData" not in ds:
        raise ImageReadError(
            f"DICOM file {where} has no Pixel Data (SOP class "
            f"{getattr(ds.get('SOPClassUID'), 'name', 'unknown')}); expected an image"
        )
    _check_pixels(int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), where)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        logger.warning("%s has %d frames; using the first", where, frames)
    pixels = _dicom_pixels(ds, where)  # (H, W) or (H, W, 3)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        return _luma(apply_color_lut(pixels, ds))
    if pixels.ndim == 3:  # RGB (pydicom already turned YBR into RGB)
        return _luma(pixels)
    values = apply_modality_lut(pixels, ds)
    if ds.get("VOILUTSequence"):
        values = _integral(values)
    values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
    if photometric == "MONOCHROME1":
        # Low values are bright in MONOCHROME1. Negating before min-max gives exactly
        # 1 - minmax(values): the inverse, so bone is bright as in MONOCHROME2.
        values = np.negative(values)
    return values


def _dicom_pixels(ds, where: str) -> np.ndarray:
    """The first frame's decoded pixels, or ImageReadError naming the missing decoder."""
    ds.pixel_array_options(index=0)
    try:
        return ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        name = getattr(syntax, "name", str(syntax))
        hint = _DICOM_DECODER_HINTS.get(str(syntax), _ANY_DECODER)
        detail = " ".join(str(exc).split())
        raise ImageReadError(
            f"cannot decode DICOM {where}: no installed decoder handles transfer syntax "
            f"{name} ({syntax}); install {hint}. pydicom said: {detail}"
        ) from exc


def _integral(values: np.ndarray) -> np.ndarray:
    """Whole-number floats (e.g. after slope 1, intercept 0) as int64: pydicom's VOI LUT
    indexes by value and warns on float input."""
    if values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
        return values.astype(np.int64)
    return values


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of a (H, W, 3) array, the weights Pillow's convert("L") uses."""
    weights = np.array([0.299, 0.587, 0.114])
    return rgb[..., :3].astype(np.float64) @ weights


def _read_nifti(path: Path, where: str) -> np.ndarray:
    """A 2-D NIfTI image (singleton axes squeezed) as float64, in nibabel's array order."""
    import nibabel

    volume = nibabel.load(path)
    data = volume.get_fdata(dtype=np.float64)  # applies scl_slope / scl_inter
    grey = np.squeeze(data)
    if grey.ndim != 2:
        raise ImageReadError(
            f"NIfTI {where} has shape {data.shape}; expected a 2-D image (extra axes of length 1 "
            "are fine), not a volume or series"
        )
    if not np.isfinite(grey).all():
        raise ImageReadError(f"NIfTI {where} contains NaN or infinite values; expected finite")
    return grey


def _read_nifti_bytes(data: bytes, where: str) -> np.ndarray:
    """nibabel reads files only: the bytes go to a temporary file removed on return."""
    suffix = ".nii.gz" if data.startswith(b"\x1f\x8b") else ".nii"
    with tempfile.NamedTemporaryFile(suffix=suffix) as handle:
        handle.write(data)
        handle.flush()
        return _read_nifti(Path(handle.name), where)


_READERS = {"pil": _read_pil, "dicom": _read_dicom, "nifti": _read_nifti}


def _minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]: min -> 0, max -> 1; a constant image becomes zeros."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - low) / (high - low)

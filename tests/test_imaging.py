"""Image reading: every format to one grey channel, with values worked out by hand."""

from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from cxrlab.data.imaging import (
    pad_to_square,
    read_grey,
    read_grey_u8,
    read_square_u8,
    resize_square,
    square_offsets,
)
from cxrlab.errors import ImageReadError
from helpers_dicom import write_dicom

# --- PNG / JPEG ---------------------------------------------------------------------------


def _save(tmp_path: Path, name: str, array: np.ndarray, mode: str | None = None) -> Path:
    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_8bit_grey_png_keeps_values(tmp_path):
    pixels = np.array([[0, 1, 128], [200, 254, 255]], dtype=np.uint8)
    path = _save(tmp_path, "g.png", pixels)
    assert np.array_equal(read_grey_u8(path), pixels)
    grey = read_grey(path)
    assert grey.dtype == np.float32 and grey.shape == (2, 3)
    np.testing.assert_allclose(grey, pixels / 255.0, atol=1e-7)


def test_16bit_png_is_minmax_scaled_not_clipped(tmp_path):
    pixels = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    path = _save(tmp_path, "g16.png", pixels)
    assert Image.open(path).mode == "I;16"
    # (v - 1000) / 4000 = 0, .25, .5, 1 -> 0, 63.75, 127.5, 255 -> rint (half to even)
    assert read_grey_u8(path).tolist() == [[0, 64], [128, 255]]
    np.testing.assert_allclose(read_grey(path), [[0, 0.25], [0.5, 1.0]], atol=1e-7)


def test_16bit_gradient_maps_monotonically_onto_full_range(tmp_path):
    gradient = np.linspace(300, 60000, 64 * 64).astype(np.uint16).reshape(64, 64)
    grey = read_grey_u8(_save(tmp_path, "ramp.png", gradient)).ravel()
    assert grey[0] == 0 and grey[-1] == 255
    assert np.all(np.diff(grey.astype(int)) >= 0)
    assert len(np.unique(grey)) == 256  # values above 255 kept their differences


def test_rgb_uses_pillow_luma(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    # Pillow: L = (19595 R + 38470 G + 7471 B + 32768) >> 16
    assert read_grey_u8(_save(tmp_path, "c.png", rgb)).tolist() == [[76, 150, 29]]


def test_rgba_and_la_drop_alpha(tmp_path):
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255]]], dtype=np.uint8)
    assert read_grey_u8(_save(tmp_path, "a.png", rgba)).tolist() == [[76, 76]]
    la = Image.fromarray(np.array([[[100, 0], [7, 255]]], dtype=np.uint8), mode="LA")
    la.save(tmp_path / "la.png")
    assert read_grey_u8(tmp_path / "la.png").tolist() == [[100, 7]]


def test_palette_png(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    image.putdata([1, 0])
    image.save(tmp_path / "p.png")
    assert read_grey_u8(tmp_path / "p.png").tolist() == [[255, 0]]


def test_jpeg_grey_and_rgb(tmp_path):
    flat = np.full((16, 16), 128, dtype=np.uint8)
    _save(tmp_path, "g.jpg", flat)
    assert np.abs(read_grey_u8(tmp_path / "g.jpg").astype(int) - 128).max() <= 1
    Image.new("RGB", (16, 16), (0, 255, 0)).save(tmp_path / "c.JPEG")
    assert np.abs(read_grey_u8(tmp_path / "c.JPEG").astype(int) - 150).max() <= 2


def test_truncated_png_names_the_file(tmp_path):
    path = _save(
        tmp_path, "whole.png", np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)
    )
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_grey_u8(cut)


@pytest.mark.parametrize("name", ["noise.png", "noise.jpg", "noise.dcm", "noise.nii.gz"])
def test_random_bytes_name_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, np.uint8).tobytes())
    with pytest.raises(ImageReadError, match=name.replace(".", r"\.")):
        read_grey(path)


def test_unknown_suffix_lists_supported(tmp_path):
    path = tmp_path / "x.bmp"
    Image.new("L", (2, 2)).save(path)
    with pytest.raises(ImageReadError, match=r"'\.bmp'.*\.png.*\.dcm.*\.nii\.gz"):
        read_grey(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="not found.*nope.png"):
        read_grey(tmp_path / "nope.png")


# --- pad and resize -------------------------------------------------------------------------


def test_square_offsets_centre_with_odd_remainder_right():
    assert square_offsets(16, 8) == (16, 0, 4)
    assert square_offsets(3, 8) == (8, 2, 0)  # 5 columns of padding: 2 left, 3 right


def test_pad_to_square_centres_and_keeps_everything():
    grey = np.full((3, 8), 9, dtype=np.uint8)
    square = pad_to_square(grey)
    assert square.shape == (8, 8)
    assert (square[2:5] == 9).all()
    assert (square[:2] == 0).all() and (square[5:] == 0).all()


def test_resize_square_is_an_area_mean():
    grey = np.array([[0, 100, 10, 10], [200, 100, 10, 10], [0, 0, 40, 0], [0, 0, 0, 0]], np.uint8)
    # 2x2 block means: 100, 10, 0, 10
    assert resize_square(grey, 2).tolist() == [[100, 10], [0, 10]]


# --- DICOM ----------------------------------------------------------------------------------


# Stored [0, 50, 100, 150, 200, 250] * slope 2 - 100 = [-100, 0, 100, 200, 300, 400].
# LINEAR window c=150.5, w=201: <= 50 -> bottom, > 250 -> top, else (x - 150) / 200 + 0.5,
# so 100 -> 0.25 and 200 -> 0.75; min-max over the windowed image keeps those.
_STORED = np.array([[0, 50, 100, 150, 200, 250]], dtype=np.uint16)
_WINDOWED = [0.0, 0.0, 0.25, 0.75, 1.0, 1.0]
_WINDOW = dict(RescaleSlope=2, RescaleIntercept=-100, WindowCenter=150.5, WindowWidth=201)


def test_dicom_rescale_and_window(tmp_path):
    path = write_dicom(tmp_path / "m2.dcm", _STORED, **_WINDOW)
    np.testing.assert_allclose(read_grey(path)[0], _WINDOWED, atol=1e-7)
    assert read_grey_u8(path).tolist() == [[0, 0, 64, 191, 255, 255]]


def test_dicom_monochrome1_is_inverted_after_window(tmp_path):
    path = write_dicom(tmp_path / "m1.dcm", _STORED, "MONOCHROME1", **_WINDOW)
    np.testing.assert_allclose(read_grey(path)[0], 1 - np.array(_WINDOWED), atol=1e-7)
    assert read_grey_u8(path).tolist() == [[255, 255, 191, 64, 0, 0]]


def test_dicom_voi_lut_sequence_wins_over_window(tmp_path):
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 8])  # 4 entries, first value 0, 8 bits each
    item.add_new("LUTData", "US", [0, 10, 200, 255])
    pixels = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    window = dict(WindowCenter=1, WindowWidth=1)  # would make a 0/255 image
    identity = dict(RescaleSlope=1, RescaleIntercept=0)  # float output, integral values
    path = write_dicom(tmp_path / "lut.dcm", pixels, VOILUTSequence=[item], **window, **identity)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "VOI LUT on a float input" warning from pydicom
        # The LUT maps 0..3 to 0, 10, 200, 255; min-max over that leaves it as is.
        assert read_grey_u8(path).tolist() == [[0, 10], [200, 255]]


def test_dicom_rgb_becomes_luma(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 0, 0], [0, 255, 0]]], dtype=np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")
    # luma 76.245, 0, 149.685 -> min-max -> 129.88, 0, 255
    assert read_grey_u8(path).tolist() == [[130, 0, 255]]


def test_dicom_multiframe_uses_first_frame(tmp_path, caplog):
    frames = np.stack([np.array([[0, 10], [20, 30]]), np.array([[30, 0], [0, 0]])]).astype(
        np.uint16
    )
    path = write_dicom(tmp_path / "mf.dcm", frames)
    assert read_grey_u8(path).tolist() == [[0, 85], [170, 255]]
    assert "2 frames; using the first" in caplog.text


def test_dicom_without_suffix_is_recognised(tmp_path):
    path = write_dicom(tmp_path / "IM0001", _STORED, **_WINDOW)
    assert read_grey_u8(path).tolist() == [[0, 0, 64, 191, 255, 255]]


def test_dicom_without_pixels(tmp_path):
    path = tmp_path / "plan.dcm"
    write_dicom(path, _STORED)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="plan.dcm has no Pixel Data"):
        read_grey(path)


def test_compressed_dicom_without_decoder_names_package(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "ls.dcm", _STORED)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless

    def no_decoder(self):
        raise RuntimeError("Unable to decompress: all plugins are missing dependencies")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: ds)
    with pytest.raises(ImageReadError, match=r"ls\.dcm.*JPEG 2000.*pylibjpeg-openjpeg"):
        read_grey(path)


def test_real_jpeg_ls_without_plugin_names_package():
    if any(importlib.util.find_spec(m) for m in ("libjpeg", "jpeg_ls", "gdcm")):
        pytest.skip("a JPEG-LS decoder is installed, so this file decodes")
    path = pydicom.data.get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False)
    with pytest.raises(ImageReadError, match="JPEG-LS.*install pylibjpeg-libjpeg or pyjpegls"):
        read_grey(path)


def test_peer_dicom_monochrome1_reads_as_inverse(peer_dicom):
    """Same stored pixels; one says MONOCHROME1, so a correct reader inverts it."""
    m2 = read_grey_u8(peer_dicom / "siim_cr_chest_pa.dcm").astype(int)
    m1 = read_grey_u8(peer_dicom / "siim_cr_chest_pa_monochrome1.dcm").astype(int)
    assert m2.shape == (1024, 1024) and m2.min() == 0 and m2.max() == 255
    off = np.abs(m1 + m2 - 255)
    assert off.max() <= 1  # ties in rounding half to even
    assert off.mean() < 0.01
    np.testing.assert_allclose(
        read_grey(peer_dicom / "siim_cr_chest_pa_monochrome1.dcm"),
        1 - read_grey(peer_dicom / "siim_cr_chest_pa.dcm"),
        atol=1e-6,
    )


# --- NIfTI ----------------------------------------------------------------------------------


def test_nifti_2d_with_singleton_axis(tmp_path):
    data = np.array([[0, 10, 20], [30, 40, 50]], dtype=np.float32)[:, :, None]
    path = tmp_path / "x.nii.gz"
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), path)
    assert read_grey_u8(path).tolist() == [[0, 51, 102], [153, 204, 255]]
    plain = tmp_path / "y.nii"
    nibabel.save(nibabel.Nifti1Image(data[:, :, 0], np.eye(4)), plain)
    np.testing.assert_allclose(read_grey(plain), data[:, :, 0] / 50, atol=1e-7)


def test_nifti_volume_names_its_shape(tmp_path):
    path = tmp_path / "vol.nii"
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 5, 3), np.float32), np.eye(4)), path)
    with pytest.raises(ImageReadError, match=r"vol\.nii has shape \(4, 5, 3\)"):
        read_grey(path)


def test_read_square_matches_pad_then_resize(tmp_path):
    grey = np.random.default_rng(2).integers(0, 256, (30, 50), np.uint8)
    path = _save(tmp_path, "r.png", grey)
    expected = np.asarray(Image.fromarray(pad_to_square(grey)).resize((10, 10), Image.BOX))
    assert np.array_equal(read_square_u8(path, 10), expected)


# ---- uploads: decode_square_u8 on bytes is read_square_u8 on the file ---------------------------
def _upload_cases(tmp_path: Path) -> list[Path]:
    import nibabel

    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (50, 70), dtype=np.uint8)
    paths = []
    for name, image in (
        ("grey.png", Image.fromarray(grey)),
        ("rgba.png", Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), "RGBA")),
        ("wide.png", Image.fromarray(rng.integers(0, 60000, (30, 44), dtype=np.uint16))),
        ("photo.jpg", Image.fromarray(grey)),
    ):
        image.save(tmp_path / name)
        paths.append(tmp_path / name)
    paths.append(write_dicom(tmp_path / "w.dcm", _STORED, **_WINDOW))
    volume = nibabel.Nifti1Image(rng.normal(size=(20, 30, 1)).astype(np.float32), np.eye(4))
    nibabel.save(volume, tmp_path / "x.nii.gz")
    return [*paths, tmp_path / "x.nii.gz"]


def test_uploaded_bytes_decode_exactly_like_files(tmp_path, monkeypatch):
    import tempfile

    from cxrlab.data.imaging import decode_square_u8

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for path in _upload_cases(tmp_path):
        for name in (path.name, None):
            np.testing.assert_array_equal(
                decode_square_u8(path.read_bytes(), 24, name=name), read_square_u8(path, 24)
            )
    assert list(scratch.iterdir()) == []  # the NIfTI temporary file is gone


def test_upload_refusals_say_why(tmp_path):
    from cxrlab.data.imaging import decode_square_u8

    png = _upload_cases(tmp_path)[0].read_bytes()
    with pytest.raises(ImageReadError, match="is empty"):
        decode_square_u8(b"", 24, name="a.png")
    with pytest.raises(ImageReadError, match="named as DICOM but its content is PNG/JPEG"):
        decode_square_u8(png, 24, name="a.dcm")
    with pytest.raises(ImageReadError, match="none of PNG, JPEG, DICOM"):
        decode_square_u8(b"GIF89a" + b"\0" * 400, 24, name="a")
    with pytest.raises(ImageReadError, match="uploaded file 'cut.png'.*truncated"):
        decode_square_u8(png[: len(png) // 2], 24, name="cut.png")
    big = Image.new("L", (3000, 3000))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 3000 * 3000 - 1  # refused before decoding, not warned about
        with pytest.raises(ImageReadError, match="decompression bomb.*3000x3000"):
            decode_square_u8(buffer.getvalue(), 24, name="big.png")
    finally:
        Image.MAX_IMAGE_PIXELS = limit

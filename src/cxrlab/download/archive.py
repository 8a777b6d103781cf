"""Unpack one NIH image archive into `images/` and check it on the way.

The archives are `tar.gz` files whose members are `images/<Image Index>.png`. Reading the
stream to its end checks gzip's CRC-32 and length and tar's headers; each member must be an
`Image Index` of Data_Entry (an archive of something else is refused early); each PNG is
written to a temporary name and renamed, then decoded in full (a truncated PNG fails here,
not weeks later in a training run).
"""

from __future__ import annotations

import logging
import os
import tarfile
import zlib
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from cxrlab.data.imaging import read_grey_u8
from cxrlab.errors import DataError

log = logging.getLogger(__name__)

#: Errors that mean the archive's bytes are damaged (not that this machine failed).
_DAMAGE = (tarfile.TarError, OSError, EOFError, zlib.error)


class BadArchive(DataError):
    """An archive is damaged or holds what it should not; fetching it again may help."""


def extract_archive(
    path: str | Path, images_dir: str | Path, known: Collection[str], *, workers: int = 1
) -> list[str]:
    """Unpack `path` into `images_dir`, check every image, return their names in order.

    `known` is the set of Data_Entry names. Raises BadArchive naming the archive and what
    is wrong with it.
    """
    path, images_dir = Path(path), Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                name = _image_name(member, path, known)
                if name is None:
                    continue
                handle = tar.extractfile(member)
                _write(images_dir / name, handle.read())
                names.append(name)
    except _DAMAGE as exc:
        raise BadArchive(
            f"archive {path.name} is damaged ({type(exc).__name__}: {exc}) after"
            f" {len(names)} images"
        ) from exc
    if not names:
        raise BadArchive(f"archive {path.name} holds no PNG images")
    check_images([images_dir / n for n in names], path.name, workers=workers)
    return names


def _image_name(member: tarfile.TarInfo, path: Path, known: Collection[str]) -> str | None:
    """The member's Image Index, None for a folder or another file; BadArchive if foreign."""
    if member.isdir():
        return None
    name = PurePosixPath(member.name).name  # only the base name: nothing lands elsewhere
    if not member.isfile() or not name.lower().endswith(".png"):
        log.warning("%s: skipping %s (not a PNG file)", path.name, member.name)
        return None
    if name not in known:
        raise BadArchive(
            f"archive {path.name} holds {member.name}, which is not an Image Index of"
            " Data_Entry: it is not an NIH ChestX-ray14 image archive"
        )
    return name


def _write(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {dest}: {exc}") from exc


def check_images(paths: list[Path], archive: str, *, workers: int = 1) -> None:
    """Decode every image in full; BadArchive names the first that fails and the count."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        errors = [e for e in pool.map(_decode_error, paths) if e is not None]
    if errors:
        raise BadArchive(
            f"archive {archive}: {len(errors)} of {len(paths)} images do not decode, e.g."
            f" {errors[0]}"
        )


def _decode_error(path: Path) -> str | None:
    try:
        read_grey_u8(path)
    except DataError as exc:
        return f"{path.name}: {exc}"
    return None

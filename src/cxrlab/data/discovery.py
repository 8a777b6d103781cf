"""Find the NIH image files on disk and match them to metadata rows.

Layouts accepted under a data root (any mix):

* NIH download:    `root/images/<Image Index>`
* Kaggle download: `root/images_001/images/<Image Index>` ... `root/images_012/images/...`
  (a bare `root/images_001/<Image Index>` is accepted too)
* flat:            `root/<Image Index>`

Only these folders are scanned (not the whole tree), with `os.scandir`, which lists the
112,120 files of the full set without a `stat` call per file.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from cxrlab.data.imaging import SUPPORTED_SUFFIXES
from cxrlab.data.manifest import missing_hint
from cxrlab.errors import DataError
from cxrlab.labels import IMAGE_INDEX

log = logging.getLogger(__name__)

#: Every format the reader decodes (PNG, JPEG, DICOM, NIfTI): a `.dcm` listed in Data_Entry
#: is an image, not a missing file.
IMAGE_SUFFIXES: tuple[str, ...] = SUPPORTED_SUFFIXES
_KAGGLE_PART = re.compile(r"^images_\d+$")
#: How many missing names an error message shows.
SHOW_MISSING = 5


class ResolvedImages(NamedTuple):
    """Rows whose image exists, their paths in row order, and how many rows were dropped."""

    df: pd.DataFrame
    paths: list[Path]
    n_missing: int


def image_folders(root: str | Path) -> list[Path]:
    """The folders `discover_images` scans under `root`, in a fixed order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image root {root} is not a directory")
    folders = [root]
    with os.scandir(root) as entries:
        subdirs = sorted(e.name for e in entries if e.is_dir())
    if "images" in subdirs:
        folders.append(root / "images")
    for name in subdirs:
        if _KAGGLE_PART.match(name):
            part = root / name
            folders.append(part)
            if (part / "images").is_dir():
                folders.append(part / "images")
    return folders


def discover_images(root: str | Path) -> dict[str, Path]:
    """Map each image file name (the `Image Index`) to its path, across all layouts.

    The same name in two folders is a DataError naming both paths, since either could be
    the right one.
    """
    found: dict[str, Path] = {}
    for folder in image_folders(root):
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.lower().endswith(IMAGE_SUFFIXES) or not entry.is_file():
                    continue
                if entry.name in found:
                    raise DataError(
                        f"image {entry.name} is present twice: {found[entry.name]} and"
                        f" {entry.path}; keep one copy per image under {root}"
                    )
                found[entry.name] = Path(entry.path)
    log.info("found %d image files under %s", len(found), root)
    return found


def resolve_images(
    df: pd.DataFrame, root: str | Path, drop_missing: bool = False
) -> ResolvedImages:
    """Attach a path to every row of `df` (by `Image Index`) from the images under `root`.

    A row without an image file is a DataError (count and first names), unless
    `drop_missing`, which drops such rows and logs how many. The returned frame has a fresh
    0..N-1 index and `paths[i]` belongs to its row i.
    """
    available = discover_images(root)
    if not available:
        raise DataError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}; looked in"
            f" {root}, {root}/images and {root}/images_NNN/images"
        )
    names = df[IMAGE_INDEX]
    present = names.isin(available.keys()).to_numpy()
    n_missing = int((~present).sum())
    if n_missing and not drop_missing:
        first = ", ".join(names[~present].iloc[:SHOW_MISSING])
        # A folder filled by `cxrlab download` knows which archives hold the missing images.
        hint = missing_hint(root, names[~present].tolist(), len(df) - n_missing)
        raise DataError(
            f"{n_missing} of {len(df)} listed images are not under {root} (first: {first}); "
            + (hint or "fix the data root or pass --drop-missing to leave them out")
        )
    if n_missing:
        log.warning("dropping %d of %d listed images missing under %s", n_missing, len(df), root)
    kept = df.loc[present].reset_index(drop=True)
    paths = [available[name] for name in kept[IMAGE_INDEX]]
    return ResolvedImages(kept, paths, n_missing)

"""Writing the NIH ChestX-ray14 files of a synthetic data set, byte for byte reproducibly.

`Data_Entry_2017.csv` (2020 revision's 11-field format), `BBox_List_2017.csv` (official odd
header and spelling; boxes in the 1024x1024 NIH frame), `train_val_list.txt`/`test_list.txt`
and 8-bit grey PNGs without metadata chunks. Text is written as UTF-8 bytes with `\n` line
ends on every platform.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlab.labels import BBOX_ALIASES, NO_FINDING
from cxrlab.synth.parameters import Box

#: The files a synthetic data set consists of besides `images/` (named as NIH names them).
DATA_ENTRY_FILE = "Data_Entry_2017.csv"
BBOX_FILE = "BBox_List_2017.csv"
TRAIN_VAL_FILE = "train_val_list.txt"
TEST_FILE = "test_list.txt"
README_FILE = "README.txt"
SYNTH_FILES = (DATA_ENTRY_FILE, BBOX_FILE, TRAIN_VAL_FILE, TEST_FILE, README_FILE)

_DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
    "Patient Gender,View Position,OriginalImage[Width,Height],"
    "OriginalImagePixelSpacing[x,y]"
)
_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
_BBOX_SPELLING = {real: alias for alias, real in BBOX_ALIASES.items()}  # Infiltration->Infiltrate


@dataclass(frozen=True)
class Row:
    """One image's Data_Entry fields and boxes."""

    index: str
    labels: tuple[str, ...]
    follow_up: int
    patient: int
    age: int
    sex: str
    view: str
    original: tuple[int, int, float]
    boxes: tuple[Box, ...]


def write_png(path: Path, image: np.ndarray) -> None:
    # No metadata chunks and fixed zlib settings: same pixels -> same bytes.
    Image.fromarray(image).save(path, format="PNG", optimize=False, compress_level=6)


def write_text(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8"))  # bytes: no platform newline translation


def _csv_text(rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_data_entry(path: Path, rows: Sequence[Row]) -> None:
    """The 2020 revision's format: 11 fields a row, the last two header cells unquoted."""
    body = _csv_text(
        (
            r.index,
            "|".join(r.labels) or NO_FINDING,
            r.follow_up,
            r.patient,
            r.age,
            r.sex,
            r.view,
            r.original[0],
            r.original[1],
            r.original[2],
            r.original[2],
        )
        for r in rows
    )
    write_text(path, _DATA_ENTRY_HEADER + "\n" + body)


def write_bbox_list(path: Path, rows: Sequence[Row]) -> None:
    """Official header and spelling; x, y, w, h in the 1024x1024 NIH frame; 9 fields a row."""
    body = _csv_text(
        (
            r.index,
            _BBOX_SPELLING.get(b.finding, b.finding),
            *(f"{v:.3f}" for v in b.nih()),
            "",
            "",
            "",
        )
        for r in rows
        for b in r.boxes
    )
    write_text(path, _BBOX_HEADER + "\n" + body)


def write_split_lists(root: Path, rows: Sequence[Row], test_patients: set[int]) -> int:
    """The official split lists, one Image Index a line; returns the number of test images."""
    test = [r.index for r in rows if r.patient in test_patients]
    train = [r.index for r in rows if r.patient not in test_patients]
    write_text(root / TRAIN_VAL_FILE, "".join(f"{name}\n" for name in train))
    write_text(root / TEST_FILE, "".join(f"{name}\n" for name in test))
    return len(test)

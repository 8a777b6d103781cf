"""Read the official NIH ChestX-ray14 metadata files.

* `Data_Entry_2017*.csv[.gz]`: one row per image. Both revisions are accepted: the 2017
  file (its header and rows end in an empty column) and the 2020 revision (without it).
  The header cells `OriginalImage[Width,Height]` and `OriginalImagePixelSpacing[x,y]` are
  unquoted, so each splits into two columns; only the seven required columns are kept.
* `train_val_list.txt` / `test_list.txt`: the official split, one Image Index a line.
* `BBox_List_2017.csv[.gz]`: radiologist boxes; its header (`Bbox [x,y,w,h],,,` or
  `Unnamed: 6..8`) is read by position, not by name.

`read_data_entry` returns a frame with normalised columns (see `ENTRY_COLUMNS`);
`findings_matrix(df, targets)` gives the (N, K) uint8 label matrix aligned row for row.
Label strings are parsed once per *unique* string (836 in the full file, not 112,120 rows).
"""

from __future__ import annotations

import csv
import gzip
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.errors import DataError
from cxrlab.labels import (
    FINDINGS,
    IMAGE_INDEX,
    PATIENT_ID,
    label_matrix,
    normalize_bbox_label,
    parse_finding_labels,
)

log = logging.getLogger(__name__)

#: Columns `Data_Entry` must have, with the normalised name each becomes.
REQUIRED_COLUMNS: dict[str, str] = {
    IMAGE_INDEX: IMAGE_INDEX,
    "Finding Labels": "Finding Labels",
    "Follow-up #": "follow_up",
    PATIENT_ID: PATIENT_ID,
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
}

#: Columns of the frame `read_data_entry` returns, in this order.
ENTRY_COLUMNS: tuple[str, ...] = (
    IMAGE_INDEX,
    PATIENT_ID,
    "Finding Labels",
    "follow_up",
    "age",
    "sex",
    "view",
)

SEXES: tuple[str, ...] = ("M", "F")
VIEWS: tuple[str, ...] = ("PA", "AP")
BBOX_COLUMNS: tuple[str, ...] = (IMAGE_INDEX, "label", "x", "y", "w", "h")

DATA_ENTRY_PATTERNS: tuple[str, ...] = ("Data_Entry_2017*.csv", "Data_Entry_2017*.csv.gz")
BBOX_PATTERNS: tuple[str, ...] = ("BBox_List_2017*.csv", "BBox_List_2017*.csv.gz")
SPLIT_LIST_FILES: dict[str, str] = {"train_val": "train_val_list.txt", "test": "test_list.txt"}


@dataclass(frozen=True)
class MetadataFiles:
    """The metadata files found in one data root; optional ones are None when absent."""

    root: Path
    data_entry: Path
    train_val_list: Path | None
    test_list: Path | None
    bbox_list: Path | None


def find_metadata_files(root: str | Path) -> MetadataFiles:
    """Locate Data_Entry (required), the split lists and the BBox list in `root`.

    Where several Data_Entry files match, the 2020 revision (`*v2020*`) is preferred, then
    the first by name; the choice is logged.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} is not a directory")
    data_entry = _pick(root, DATA_ENTRY_PATTERNS)
    if data_entry is None:
        raise DataError(
            f"no NIH metadata in {root}: looked for {' or '.join(DATA_ENTRY_PATTERNS)}"
            f" (split lists {', '.join(SPLIT_LIST_FILES.values())} and"
            f" {' or '.join(BBOX_PATTERNS)} are optional)"
        )
    lists = {key: root / name for key, name in SPLIT_LIST_FILES.items()}
    return MetadataFiles(
        root=root,
        data_entry=data_entry,
        train_val_list=lists["train_val"] if lists["train_val"].is_file() else None,
        test_list=lists["test"] if lists["test"].is_file() else None,
        bbox_list=_pick(root, BBOX_PATTERNS),
    )


def _pick(root: Path, patterns: Sequence[str]) -> Path | None:
    found = sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})
    if not found:
        return None
    # Prefer the corrected 2020 revision, then a stable order by name.
    chosen = sorted(found, key=lambda p: ("v2020" not in p.name, p.name))[0]
    if len(found) > 1:
        log.warning(
            "several files match in %s: %s; using %s", root, [p.name for p in found], chosen.name
        )
    return chosen


def read_data_entry(path: str | Path) -> pd.DataFrame:
    """Read `Data_Entry_2017*.csv[.gz]` into a frame with the columns of `ENTRY_COLUMNS`.

    `Patient ID`, `follow_up` and `age` are ints; `sex` is M/F; `view` is PA/AP. Ages are
    kept as recorded: the 2017 release has a handful above 100 (e.g. 412), which are
    recording errors fixed in the 2020 revision; callers can filter with an age range.
    """
    path = Path(path)
    raw = _read_entry_csv(path)
    where = _row_locator(raw, path)
    _check_unique_index(raw, path)
    findings_matrix_of(raw["Finding Labels"], FINDINGS, where)  # validates every label
    out = pd.DataFrame(
        {
            IMAGE_INDEX: raw[IMAGE_INDEX],
            PATIENT_ID: _int_column(raw[PATIENT_ID], PATIENT_ID, where),
            "Finding Labels": raw["Finding Labels"],
            "follow_up": _int_column(raw["Follow-up #"], "Follow-up #", where),
            "age": _int_column(raw["Patient Age"].str.rstrip("Yy"), "Patient Age", where),
            "sex": _choice_column(raw["Patient Gender"], "Patient Gender", SEXES, where),
            "view": _choice_column(raw["View Position"], "View Position", VIEWS, where),
        }
    )
    _warn_implausible_ages(out["age"], where)
    log.info("read %d rows, %d patients from %s", len(out), out[PATIENT_ID].nunique(), path)
    return out


#: Older than anyone recorded alive; the 2017 release has a few such ages (e.g. 412).
MAX_PLAUSIBLE_AGE = 120


def _warn_implausible_ages(ages: np.ndarray, where) -> None:
    """Keep ages as recorded (the 2017 file is valid NIH data) but never silently."""
    bad = np.flatnonzero(ages > MAX_PLAUSIBLE_AGE)
    if len(bad):
        i = int(bad[0])
        log.warning(
            "%d row(s) have a Patient Age above %d, e.g. %d at %s: recording errors of the 2017"
            " release (the 2020 revision fixes them); kept as recorded, leave them out with"
            " --age-max %d",
            len(bad),
            MAX_PLAUSIBLE_AGE,
            ages[i],
            where(i),
            MAX_PLAUSIBLE_AGE,
        )


def _read_entry_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"metadata file {path} does not exist")
    header = [cell.strip() for cell in _read_header(path)]
    if not any(header):
        raise DataError(
            f"{path} is empty; a Data_Entry file starts with the header "
            f"{','.join(REQUIRED_COLUMNS)} and has one row per image"
        )
    missing = [col for col in REQUIRED_COLUMNS if col not in header]
    if missing:
        raise DataError(
            f"{path} lacks required column(s) {', '.join(repr(c) for c in missing)};"
            f" required: {', '.join(REQUIRED_COLUMNS)}; found: {', '.join(header)}"
        )
    # index_col=False: a 2017 row's trailing comma must never turn column 1 into an index.
    raw = pd.read_csv(
        path,
        dtype=str,
        keep_default_na=False,
        index_col=False,
        skipinitialspace=True,
        usecols=lambda col: col.strip() in REQUIRED_COLUMNS,
    )
    raw.columns = [col.strip() for col in raw.columns]
    if raw.empty:
        raise DataError(f"{path} has a header but no rows; it should list one row per image")
    return raw.apply(lambda col: col.str.strip())


def _read_header(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _row_locator(raw: pd.DataFrame, path: Path):
    """Return where(i) -> 'FILE line L (Image Index X)' for data row i (header is line 1)."""
    names = raw[IMAGE_INDEX].to_numpy()

    def where(i: int) -> str:
        return f"{path} line {i + 2} (Image Index {names[i]})"

    return where


def _check_unique_index(raw: pd.DataFrame, path: Path) -> None:
    dup = raw[IMAGE_INDEX].duplicated(keep=False)
    if dup.any():
        names = raw.loc[dup, IMAGE_INDEX].unique()
        raise DataError(
            f"{path}: {len(names)} Image Index value(s) appear more than once, e.g."
            f" {', '.join(names[:5])}; each image must have exactly one row"
        )


def _int_column(values: pd.Series, column: str, where) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero(numbers.isna().to_numpy() | (numbers % 1 != 0).to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{column} {values.iloc[i]!r} at {where(i)} is not a whole number"
            f" ({len(bad)} bad value(s) in this column)"
        )
    return numbers.to_numpy().astype(np.int64)


def _choice_column(values: pd.Series, column: str, valid: Sequence[str], where) -> np.ndarray:
    upper = values.str.upper()
    bad = np.flatnonzero(~upper.isin(valid).to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{column} {values.iloc[i]!r} at {where(i)} is not one of {', '.join(valid)}"
            f" ({len(bad)} bad value(s) in this column)"
        )
    return upper.to_numpy()


def findings_matrix(df: pd.DataFrame, targets: Sequence[str] = FINDINGS) -> np.ndarray:
    """(N, K) uint8: row i has 1 in column k when image i is positive for targets[k].

    Rows follow `df` (any index); labels come from its `Finding Labels` strings.
    """
    return findings_matrix_of(df["Finding Labels"], targets)


def findings_matrix_of(labels: pd.Series, targets: Sequence[str], where=None) -> np.ndarray:
    """Matrix of a `Finding Labels` series, parsing each distinct string only once."""
    codes, uniques = pd.factorize(labels, use_na_sentinel=False)  # codes: (N,)
    first_rows = np.unique(codes, return_index=True)[1]  # first row of each unique string
    parsed = [
        parse_finding_labels(text, where=where(int(row)) if where else "")
        for text, row in zip(uniques, first_rows, strict=True)
    ]
    return label_matrix(parsed, targets)[codes]  # (U, K) -> (N, K)


def read_split_lists(root: str | Path) -> dict[str, set[str]]:
    """Read the official `train_val_list.txt` and `test_list.txt` in `root`.

    Returns {"train_val": names, "test": names}. An image in both lists is a DataError.
    """
    root = Path(root)
    out: dict[str, set[str]] = {}
    for key, name in SPLIT_LIST_FILES.items():
        path = root / name
        if not path.is_file():
            raise DataError(
                f"official split list {path} not found; the official split needs both"
                f" {' and '.join(SPLIT_LIST_FILES.values())} in {root}"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
        out[key] = {line.strip() for line in lines if line.strip()}
    both = out["train_val"] & out["test"]
    if both:
        raise DataError(
            f"{len(both)} image(s) are in both official lists in {root}, e.g."
            f" {', '.join(sorted(both)[:5])}; the lists must be disjoint"
        )
    return out


def read_bbox_list(path: str | Path) -> pd.DataFrame:
    """Read `BBox_List_2017.csv[.gz]` into columns `Image Index, label, x, y, w, h`.

    Coordinates are floats in the original 1024x1024 frame; `Infiltrate` becomes
    `Infiltration`. The header is checked by its first two cells only, since the box
    columns are spelled differently in each copy of the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"bounding-box file {path} does not exist")
    header = [cell.strip() for cell in _read_header(path)]
    if header[:2] != [IMAGE_INDEX, "Finding Label"]:
        raise DataError(
            f"{path} does not look like BBox_List_2017.csv: header starts {header[:3]},"
            " expected 'Image Index,Finding Label,Bbox [x,y,w,h]'"
        )
    raw = pd.read_csv(
        path, header=None, skiprows=1, usecols=range(6), dtype=str, keep_default_na=False
    )
    raw.columns = list(BBOX_COLUMNS)
    raw = raw.apply(lambda col: col.str.strip())
    where = _row_locator(raw, path)
    out = raw[[IMAGE_INDEX]].copy()
    out["label"] = _bbox_labels(raw["label"], where)
    for col in ("x", "y", "w", "h"):
        out[col] = _float_column(raw[col], col, where)
    return out


def _bbox_labels(labels: pd.Series, where) -> np.ndarray:
    codes, uniques = pd.factorize(labels, use_na_sentinel=False)
    first_rows = np.unique(codes, return_index=True)[1]
    names = [
        normalize_bbox_label(u, where=where(int(r)))
        for u, r in zip(uniques, first_rows, strict=True)
    ]
    return np.asarray(names, dtype=object)[codes]


def _float_column(values: pd.Series, column: str, where) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(numbers) | (numbers < 0))
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"box {column} {values.iloc[i]!r} at {where(i)} is not a non-negative number"
        )
    return numbers

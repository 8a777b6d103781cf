"""A prepared run's cohort, row-aligned with its image cache: what every later stage reads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.cache import CachedImages, open_cache
from cxrlab.errors import DataError
from cxrlab.labels import FINDINGS, IMAGE_INDEX, PATIENT_ID
from cxrlab.rundir import COHORT_FILE, RunDir, as_run_dir
from cxrlab.runinfo import read_json

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class RunData:
    """The cohort of one run directory, row-aligned with its image cache."""

    run_dir: Path
    targets: list[str]  # K target names, in label-column order
    labels: np.ndarray  # (N, K) float32, 0/1
    split: np.ndarray  # (N,) str: train / val / test
    cache: CachedImages  # .images: (N, S, S) uint8 read-only memmap; pickles as a path
    split_hash: str | None
    cohort: pd.DataFrame  # cohort.csv, row i == cache row i; ids as str

    @property
    def paths(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def ids(self) -> np.ndarray:
        """(N,) Image Index of every cohort row."""
        return self.cohort[IMAGE_INDEX].to_numpy()

    @property
    def patient_ids(self) -> np.ndarray:
        """(N,) Patient ID (str) of every cohort row."""
        return self.cohort[PATIENT_ID].to_numpy()

    @property
    def image_size(self) -> int:
        return int(self.cache.size)

    @property
    def images(self) -> np.ndarray:
        return self.cache.images

    def rows(self, split: str) -> np.ndarray:
        """Cohort row numbers (== cache rows) of one split, ascending."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return np.flatnonzero(self.split == split)


def load_run_data(run_dir: str | Path | RunDir) -> RunData:
    """Read `data/cohort.csv`, `data/split_summary.json` and the cache of a prepared run.

    The one reader of cohort.csv: ids and patient ids are strings whatever they look like.
    """
    paths = as_run_dir(run_dir)
    paths.require_prepared()
    cohort_path = paths.cohort
    cohort = read_cohort(cohort_path)
    summary = read_json(paths.split_summary) if paths.split_summary.is_file() else {}
    targets = list(summary.get("targets") or targets_from_columns(cohort, cohort_path))
    labels = _label_matrix(cohort, targets, cohort_path)  # (N, K)
    split = cohort["split"].astype(str).to_numpy()
    unknown = sorted(set(split) - set(SPLITS))
    if unknown:
        raise DataError(f"{cohort_path} column 'split' holds {unknown}; valid: {SPLITS}")
    cache = open_images(paths, cohort[IMAGE_INDEX].tolist())
    return RunData(paths.root, targets, labels, split, cache, summary.get("split_hash"), cohort)


def read_cohort(path: Path) -> pd.DataFrame:
    """A cohort.csv frame with `Image Index` and `Patient ID` read as strings."""
    try:
        cohort = pd.read_csv(path, dtype={IMAGE_INDEX: str, PATIENT_ID: str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise DataError(f"{path} is not a readable cohort table: {exc}") from None
    missing = [c for c in (IMAGE_INDEX, PATIENT_ID, "split") if c not in cohort.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; it has {list(cohort.columns)}")
    return cohort


def _label_matrix(cohort: pd.DataFrame, targets: list[str], where: Path) -> np.ndarray:
    missing = [t for t in targets if t not in cohort.columns]
    if missing:
        raise DataError(f"{where} lacks target columns {missing}; it has {list(cohort)}")
    values = cohort[targets]
    bad = ~values.isin([0, 1]).to_numpy()
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{where} row {row + 2} column {targets[col]!r} holds"
            f" {str(values.iat[row, col])!r}; target columns must be 0 or 1"
        )
    return values.to_numpy(dtype=np.float32)


def targets_from_columns(cohort: pd.DataFrame, where: Path | str = COHORT_FILE) -> list[str]:
    """The target columns: those named like a finding between `split` and `Finding Labels`."""
    cols = list(cohort.columns)
    if "split" not in cols or "Finding Labels" not in cols:
        raise DataError(f"{where} needs columns 'split' and 'Finding Labels'; it has {cols}")
    between = cols[cols.index("split") + 1 : cols.index("Finding Labels")]
    targets = [c for c in between if c in FINDINGS]
    if not targets:
        raise DataError(
            f"{where} has no target columns between 'split' and 'Finding Labels'"
            f" (found {between}); expected names from: {', '.join(FINDINGS)}"
        )
    return targets


def open_images(run_dir: str | Path | RunDir, ids: Sequence[str]) -> CachedImages:
    """The run's image cache, checked to hold exactly `ids` (cohort order) as uint8 S x S."""
    cache = open_cache(as_run_dir(run_dir).cache)
    cache.check_ids(ids)
    return cache

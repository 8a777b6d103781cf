"""Time metadata reading, cohort selection and splitting on the full NIH metadata.

    python bench/bench_split.py [--metadata DIR] [--seed 0]

Prints seconds per step, the patient overlap of each split (must be 0), and, for the
same cohorts, how the patient-level `iterative-stratification` package (one "any" label
row per patient) compares with cxrlab's image-weighted stratification: the largest gap
between a part's prevalence and the cohort's (points), and the largest gap between a
part's image share and 70/15/15. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import IterativeStratification

from cxrlab.data.cohort import select_cohort
from cxrlab.data.metadata import (
    find_metadata_files,
    findings_matrix,
    read_data_entry,
    read_split_lists,
)
from cxrlab.data.split import SPLITS, official_split, patient_overlap, split_patients
from cxrlab.labels import DEFAULT_TARGETS

REPO = Path(__file__).resolve().parents[1]
RATIOS = np.array([0.7, 0.15, 0.15])


def timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    print(f"{label:<44} {seconds:7.3f} s")
    return out, seconds


def iterstrat_split(df: pd.DataFrame, targets, seed: int) -> pd.Series:
    """The package's algorithm on one "any" label row per patient (the alternative)."""
    _, inverse = np.unique(df["Patient ID"].to_numpy(), return_inverse=True)
    per_patient = np.zeros((inverse.max() + 1, len(targets)), dtype=bool)
    np.logical_or.at(per_patient, inverse, findings_matrix(df, targets).astype(bool))
    order = np.random.default_rng(seed).permutation(len(per_patient))
    folds = IterativeStratification(per_patient[order], RATIOS, np.random.RandomState(seed))
    part = np.empty(len(per_patient), dtype=int)
    part[order] = folds
    return pd.Series(np.asarray(SPLITS, dtype=object)[part[inverse]], index=df.index)


def quality(df: pd.DataFrame, split: pd.Series, targets) -> tuple[float, float]:
    """(max prevalence gap in points, max image-share gap in points) over the parts."""
    y = findings_matrix(df, targets)  # (N, K)
    parts = split.to_numpy()
    prevalence_gap = max(
        np.abs(y[parts == name].mean(axis=0) - y.mean(axis=0)).max() for name in SPLITS
    )
    shares = np.array([(parts == name).mean() for name in SPLITS])
    return 100 * prevalence_gap, 100 * np.abs(shares - RATIOS).max()


def bench_cohort(df: pd.DataFrame, targets, n_images, seed: int) -> None:
    name = "all" if n_images is None else f"{n_images:,}"
    cohort, t_select = timed(f"select {name} images, {len(targets)} targets", select_cohort,
                             df, targets, n_images=n_images, seed=seed)  # fmt: skip
    split, t_split = timed(f"patient split of {name} images", split_patients, cohort, targets,
                           seed=seed)  # fmt: skip
    overlap = len(patient_overlap(cohort.assign(split=split)))
    print(f"  selection + split {t_select + t_split:.3f} s; patient overlap {overlap}")
    _, t_other = timed("  (iterative-stratification, patient level)", iterstrat_split,
                       cohort, targets, seed)  # fmt: skip
    print(f"  time ratio iterstrat / weighted: {t_other / t_split:.2f}")


def compare_quality(df: pd.DataFrame, targets, n_images, seeds: int) -> None:
    """Balance of both stratifiers over `seeds` cohorts (mean and worst case)."""
    gaps = {"weighted": [], "iterstrat": []}
    for seed in range(seeds):
        cohort = select_cohort(df, targets, n_images=n_images, seed=seed)
        gaps["weighted"].append(
            quality(cohort, split_patients(cohort, targets, seed=seed), targets)
        )
        gaps["iterstrat"].append(quality(cohort, iterstrat_split(cohort, targets, seed), targets))
    name = "all" if n_images is None else f"{n_images:,}"
    print(f"balance over {seeds} seeds, {name} images (points; mean / max):")
    for method, values in gaps.items():
        prev, share = np.array(values).T
        print(f"  {method:<10} prevalence gap {prev.mean():5.2f} / {prev.max():5.2f}"
              f"   image-share gap {share.mean():5.2f} / {share.max():5.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--metadata",
        type=Path,
        default=REPO.parent / "shared" / "data" / "nih-cxr14-metadata",
        help="folder with Data_Entry_2017*.csv[.gz] and the official split lists",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=10, help="cohorts for the balance table")
    args = parser.parse_args()
    targets = list(DEFAULT_TARGETS)

    files = find_metadata_files(args.metadata)
    df, _ = timed(f"read {files.data_entry.name}", read_data_entry, files.data_entry)
    print(f"  {len(df):,} images, {df['Patient ID'].nunique():,} patients")
    for n_images in (10_000, None):
        bench_cohort(df, targets, n_images, args.seed)
    lists, _ = timed("read official split lists", read_split_lists, args.metadata)
    split, _ = timed("official split (val carved from train_val)", official_split, df, lists,
                     targets, seed=args.seed)  # fmt: skip
    overlap = len(patient_overlap(df.assign(split=split)))
    counts = split.value_counts().reindex(SPLITS).tolist()
    print(f"  train/val/test images {counts}; patient overlap {overlap}")
    for n_images in (2_000, 10_000, None):
        compare_quality(df, targets, n_images, args.seeds if n_images else 2)


if __name__ == "__main__":
    main()

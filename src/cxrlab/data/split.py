"""Patient-wise train/val/test splits, the official NIH split, leakage checks and hashes.

Stratification is iterative stratification (Sechidis et al., 2011) with *patients* as the
samples, weighted by their images: a patient carries its image count and, per target, its
number of positive images. Targets are taken rarest first; within a target, patients (in
seeded random order) go to the part that still wants the most positive images of it, then
the most images, then at random; patients with no positive target are dealt out last to
the part that still wants the most images, so they are spread by ratio too.

Why not the `iterative-stratification` package's `IterativeStratification` on one "any"
label row per patient: it balances *patients*, but NIH patients have 1 to 184 images. Over
ten 10,000-image cohorts (bench/bench_split.py runs both) its largest gap between a part's
prevalence and the cohort's was 2.7 points on average (worst 3.9) and the image shares
missed 70/15/15 by up to 2.5 points; weighting by images gave 0.7 (worst 1.5) points and
exact image shares. Small cohorts stay lumpy either way (2,000 images: 1.8 points on
average, worst 5.5; the package 5.1, worst 10). It is a short loop over patients:
0.1-0.6 s for all 30,805 on a busy 2-core machine.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrlab.data.metadata import findings_matrix
from cxrlab.errors import ConfigError, DataError, LeakageError
from cxrlab.labels import FINDINGS, IMAGE_INDEX, PATIENT_ID, parse_targets

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: How many patient IDs a leakage error shows.
SHOW_PATIENTS = 5


def split_patients(
    df: pd.DataFrame,
    targets: str | Sequence[str],
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
) -> pd.Series:
    """Assign each row "train", "val" or "test" so that every patient is in one part.

    `val` and `test` are shares of images, met closely by moving whole patients, with
    each target's image prevalence balanced across the parts (see the module docstring).
    The result depends only on the patients' labels and the seed, not on row order.
    Returns a Series named "split" on `df`'s index.
    """
    _check_fractions(val=val, test=test)
    targets = parse_targets(targets)
    parts = _stratify(df, targets, np.array([1.0 - val - test, val, test]), seed)
    split = pd.Series(np.asarray(SPLITS, dtype=object)[parts], index=df.index, name="split")
    check_leakage(df.assign(split=split))
    return split


def official_split(
    df: pd.DataFrame,
    split_lists: Mapping[str, set[str]],
    targets: str | Sequence[str] | None = None,
    *,
    val: float = 0.15,
    seed: int = 0,
) -> pd.Series:
    """The official NIH split: test = `test_list.txt`; val carved by patient from train_val.

    `split_lists` is `read_split_lists`'s result; `val` is the share of train_val images
    moved to val (whole patients), stratified over `targets` (default: all 14 findings).
    Every row must be in one of the lists, and no patient may straddle the lists
    (LeakageError otherwise).
    """
    _check_fractions(val=val)
    targets = parse_targets(targets if targets is not None else list(FINDINGS))
    names = df[IMAGE_INDEX]
    in_test = names.isin(split_lists["test"]).to_numpy()
    in_train_val = names.isin(split_lists["train_val"]).to_numpy()
    unlisted = ~(in_test | in_train_val)
    if unlisted.any():
        raise DataError(
            f"{int(unlisted.sum())} image(s) are in neither official list, e.g."
            f" {', '.join(names[unlisted].iloc[:SHOW_PATIENTS])}; the official split needs"
            " every image in train_val_list.txt or test_list.txt"
        )
    split = pd.Series("test", index=df.index, name="split", dtype=object)
    check_leakage(df.assign(split=np.where(in_test, "test", "train_val")))
    train_val = df.loc[in_train_val]
    parts = _stratify(train_val, targets, np.array([1.0 - val, val, 0.0]), seed)
    split.loc[in_train_val] = np.asarray(SPLITS, dtype=object)[parts]
    check_leakage(df.assign(split=split))
    return split


def _check_fractions(**fractions: float) -> None:
    for name, value in fractions.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name}={value} should be a fraction in [0, 1)")
    if sum(fractions.values()) >= 1.0:
        shown = " + ".join(f"{k}={v}" for k, v in fractions.items())
        raise ConfigError(f"{shown} leaves nothing for train; the sum must be below 1")


def _stratify(df: pd.DataFrame, targets: list[str], ratios: np.ndarray, seed: int) -> np.ndarray:
    """Part index (0 train, 1 val, 2 test) per row, assigned per patient."""
    if len(df) == 0:
        return np.zeros(0, dtype=int)
    _, inverse = np.unique(df[PATIENT_ID].to_numpy(), return_inverse=True)
    sizes = np.bincount(inverse)  # (P,) images per patient
    counts = np.zeros((len(sizes), len(targets)), dtype=np.int64)  # (P, K) positive images
    np.add.at(counts, inverse, findings_matrix(df, targets))
    parts = stratify_weighted(sizes, counts, ratios, np.random.default_rng(seed))
    empty = [SPLITS[f] for f in range(len(ratios)) if ratios[f] > 0 and not (parts == f).any()]
    if empty:
        log.warning("split %s got no patient (%d patients in all)", empty, len(sizes))
    return parts[inverse]


def stratify_weighted(
    sizes: np.ndarray, counts: np.ndarray, ratios: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Iterative stratification of weighted samples; returns the part of each sample.

    sizes: (P,) images per patient; counts: (P, K) positive images per patient and target;
    ratios: (F,) wanted share of images per part (sums to 1; a 0 part gets nothing).
    """
    parts = [f for f in range(len(ratios)) if ratios[f] > 0]
    want_images = {f: ratios[f] * sizes.sum() for f in parts}  # images still wanted
    want_pos = {f: (ratios[f] * counts.sum(axis=0)).tolist() for f in parts}  # (K,) each
    ties = rng.random((len(sizes), len(ratios))).tolist()  # (P, F) random tie-breaks
    # Random order, as in the original; largest-first would balance prevalence exactly
    # but packs the multi-image (sicker, more often AP) patients into train.
    order = rng.permutation(len(sizes))
    part = np.full(len(sizes), -1)
    size_of, counts_of = sizes.tolist(), counts.tolist()

    def assign(p: int, best: int) -> None:
        part[p] = best
        want_images[best] -= size_of[p]
        for k, c in enumerate(counts_of[p]):
            want_pos[best][k] -= c

    while (k := _rarest_left(counts, part)) is not None:
        for p in order[(counts[order, k] > 0) & (part[order] < 0)].tolist():
            assign(p, max(parts, key=lambda f: (want_pos[f][k], want_images[f], ties[p][f])))
    for p in order[part[order] < 0].tolist():  # patients with no positive target
        assign(p, max(parts, key=lambda f: (want_images[f], ties[p][f])))
    return part


def _rarest_left(counts: np.ndarray, part: np.ndarray) -> int | None:
    """The target with the fewest (but some) positive images among unassigned patients."""
    left = counts[part < 0].sum(axis=0)  # (K,)
    if not left.any():
        return None
    return int(np.argmin(np.where(left > 0, left, np.iinfo(left.dtype).max)))


def patient_overlap(df: pd.DataFrame, split_col: str = "split") -> np.ndarray:
    """Sorted IDs of patients whose images are in more than one part of `split_col`."""
    parts_per_patient = df.groupby(PATIENT_ID)[split_col].nunique()
    return np.sort(parts_per_patient.index[parts_per_patient.to_numpy() > 1].to_numpy())


def check_leakage(df: pd.DataFrame, split_col: str = "split") -> int:
    """Raise LeakageError if any patient is in two parts; return the overlap count (0)."""
    if split_col not in df.columns:
        raise DataError(f"no {split_col!r} column to check; columns: {', '.join(df.columns)}")
    leaked = patient_overlap(df, split_col)
    if len(leaked):
        shown = ", ".join(str(p) for p in leaked[:SHOW_PATIENTS])
        raise LeakageError(
            f"{len(leaked)} patient(s) have images in more than one split (first Patient IDs:"
            f" {shown}); each patient must be in exactly one of train/val/test"
        )
    return 0


def split_hash(df: pd.DataFrame, targets: str | Sequence[str], split_col: str = "split") -> str:
    """sha256 over the targets (in order) and the sorted (Image Index, split) pairs.

    Identical for the same assignment whatever the row order of `df`.
    """
    targets = parse_targets(targets)
    pairs = df[[IMAGE_INDEX, split_col]].sort_values(IMAGE_INDEX, kind="stable")
    lines = pairs[IMAGE_INDEX].astype(str) + "," + pairs[split_col].astype(str)
    text = "targets:" + "|".join(targets) + "\n" + "\n".join(lines) + "\n"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_summary(df: pd.DataFrame, targets: str | Sequence[str], split_col: str = "split") -> dict:
    """JSON-ready counts and per-target prevalence per split, overlap and split hash."""
    targets = parse_targets(targets)
    y = findings_matrix(df, targets)  # (N, K)
    parts = df[split_col].to_numpy()
    summary: dict = {"targets": targets, "n_images": len(df)}
    summary["n_patients"] = int(df[PATIENT_ID].nunique())
    summary["splits"] = {}
    for name in SPLITS:
        rows = parts == name
        n = int(rows.sum())
        positives = y[rows].sum(axis=0)
        summary["splits"][name] = {
            "images": n,
            "patients": int(df.loc[rows, PATIENT_ID].nunique()),
            "positives": {t: int(c) for t, c in zip(targets, positives, strict=True)},
            "prevalence": {
                t: (float(c / n) if n else None) for t, c in zip(targets, positives, strict=True)
            },
        }
    summary["patient_overlap"] = len(patient_overlap(df, split_col))
    summary["split_hash"] = split_hash(df, targets, split_col)
    return summary

"""AUROC by subgroup (sex, age band, view position) with patient-bootstrap CIs and counts.

A model that is good on average can be poor for AP (portable, sicker patients) films or for
the oldest patients; these tables make that visible. A subgroup without positives (or
negatives) for a class has an undefined AUROC (None + reason), never 0.5.

Each level's macro AUROC averages the classes defined in *every* level of its grouping (the
common class set, listed under `macro.classes`), so the levels of one grouping are compared
on the same classes; a class undefined in any level is left out of all of them and named.
AUROCs on fewer than 10 positives or negatives carry an `unstable` note.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrlab.errors import EvaluationError
from cxrlab.evaluate.bootstrap import bootstrap_auroc
from cxrlab.evaluate.intervals import stability
from cxrlab.evaluate.metrics import NO_NEGATIVES, NO_POSITIVES, Predictions, check_arrays

log = logging.getLogger(__name__)

#: Band edges in years: <40, 40-59, 60-79, >=80.
DEFAULT_AGE_BANDS: tuple[int, ...] = (40, 60, 80)
DEFAULT_GROUPINGS: tuple[str, ...] = ("sex", "age_band", "view")
UNKNOWN = "unknown"


def age_band_labels(edges: Sequence[int] = DEFAULT_AGE_BANDS) -> list[str]:
    """Names of the bands cut at integer `edges`: (40, 60, 80) -> <40, 40-59, 60-79, >=80."""
    edges = list(edges)
    if not edges or any(int(e) != e for e in edges) or sorted(set(edges)) != edges:
        raise EvaluationError(f"age band edges {edges} must be increasing integers, e.g. (40, 60)")
    middle = [f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return [f"<{edges[0]}", *middle, f">={edges[-1]}"]


def age_bands(ages, edges: Sequence[int] = DEFAULT_AGE_BANDS) -> np.ndarray:
    """(N,) band name of each age; missing ages are 'unknown'."""
    labels = age_band_labels(edges)
    ages = pd.to_numeric(pd.Series(ages), errors="coerce").to_numpy(dtype=float)
    which = np.searchsorted(np.asarray(edges, dtype=float), ages, side="right")
    out = np.array(labels, dtype=object)[np.minimum(which, len(labels) - 1)]
    out[np.isnan(ages)] = UNKNOWN
    return out


def subgroup_auroc(
    y,
    p,
    patient_ids: Sequence,
    meta: pd.DataFrame,
    targets: Sequence[str] | None = None,
    by: Sequence[str] = DEFAULT_GROUPINGS,
    age_edges: Sequence[int] = DEFAULT_AGE_BANDS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Per-class and macro AUROC with CI in every level of each grouping in `by`.

    `meta` is row-aligned with y/p and has `sex`, `age` (for "age_band") and `view`.
    Returns {"age_bands", "groupings": {grouping: {level: {"n_images", "n_patients",
    "per_class": {t: {...}}, "macro": {...}}}}}.
    """
    y, p, targets = check_arrays(y, p, targets)
    patient_ids = np.asarray(patient_ids)
    if len(meta) != y.shape[0] or len(patient_ids) != y.shape[0]:
        raise EvaluationError(
            f"meta has {len(meta)} rows and patient_ids {len(patient_ids)} for {y.shape[0]} images"
        )
    groupings = {}
    for grouping in by:
        keys = _group_keys(meta, grouping, age_edges)
        order = age_band_labels(age_edges) if grouping == "age_band" else None
        levels = list(_levels(keys, order))
        common = common_classes([y[rows] for _, rows in levels], targets)
        groupings[grouping] = {
            level_name: _one_group(
                y[rows], p[rows], patient_ids[rows], targets, n_boot, seed, level, common
            )
            for level_name, rows in levels
        }
    return {"age_bands": age_band_labels(age_edges), "groupings": groupings}


def common_classes(parts: Sequence[np.ndarray], targets: Sequence[str]) -> list[str]:
    """Targets with positives and negatives in every part (each an (n_i, K) label block)
    that has any defined class: a level where no AUROC is defined at all (e.g. one image)
    cannot be compared and does not empty the set for the others."""
    defined = np.ones(len(targets), dtype=bool)
    for y in parts:
        n_pos = y.sum(axis=0)
        here = (n_pos > 0) & (n_pos < y.shape[0])
        if here.any():
            defined &= here
    return [t for t, d in zip(targets, defined, strict=True) if d]


def subgroup_auroc_of(preds: Predictions, **kwargs) -> dict:
    """`subgroup_auroc` on a `Predictions` read by `read_predictions`."""
    return subgroup_auroc(preds.y, preds.p, preds.patient_ids, preds.meta, preds.targets, **kwargs)


def _group_keys(meta: pd.DataFrame, grouping: str, age_edges: Sequence[int]) -> np.ndarray:
    column = "age" if grouping == "age_band" else grouping
    if column not in meta.columns:
        raise EvaluationError(
            f"subgroup {grouping!r} needs column {column!r}; meta has {list(meta.columns)}"
        )
    if grouping == "age_band":
        return age_bands(meta["age"], age_edges)
    values = meta[column].astype(object)
    return values.where(values.notna(), UNKNOWN).astype(str).to_numpy()


def _levels(keys: np.ndarray, order: Sequence[str] | None = None):
    """(level name, row indices) for each distinct key: in `order` (age bands run young to
    old), else sorted by name; "unknown" last."""
    present = set(keys.tolist())
    rank = {name: i for i, name in enumerate(order or [])}
    names = sorted(present, key=lambda n: (n == UNKNOWN, rank.get(n, len(rank)), n))
    for name in names:
        yield name, np.flatnonzero(keys == name)


def _one_group(
    y, p, patient_ids, targets, n_boot: int, seed: int, level: float, common: list[str]
) -> dict:
    defined_here = [t for k, t in enumerate(targets) if 0 < y[:, k].sum() < y.shape[0]]
    macro_classes = common if set(common) <= set(defined_here) else []
    ci = bootstrap_auroc(
        y,
        p,
        patient_ids,
        targets,
        n_boot=n_boot,
        seed=seed,
        level=level,
        macro_classes=macro_classes,
    )
    per_class = {}
    for k, name in enumerate(targets):
        n_pos = int(y[:, k].sum())
        n_neg = int(y.shape[0] - n_pos)
        entry = {"n_pos": n_pos, "n_neg": n_neg, **ci["per_class"][name]}
        entry["auroc"] = entry.pop("estimate")
        entry["unstable"] = stability(n_pos=n_pos, n_neg=n_neg)
        if n_pos in (0, y.shape[0]):
            entry["undefined"] = NO_POSITIVES if n_pos == 0 else NO_NEGATIVES
        per_class[name] = entry
    macro = dict(ci["macro"])
    macro["auroc"] = macro.pop("estimate")
    common = macro_classes  # empty for a level with no defined class: not compared
    macro["classes"] = list(common)
    macro["left_out"] = [t for t in targets if t not in common]
    return {
        "n_images": int(y.shape[0]),
        "n_patients": ci["n_patients"],
        "per_class": per_class,
        "macro": macro,
    }

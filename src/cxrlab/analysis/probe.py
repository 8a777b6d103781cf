"""Linear probes: how linearly separable is each pathology in each layer's features?

For each (layer, target) a logistic regression is cross-validated (stratified k-fold; with
patient ids, `StratifiedGroupKFold` so no patient is on both sides of a fold). Standardising
happens inside the pipeline, i.e. is fitted on each training fold only. The split is
repeated `n_repeats` times with different fold assignments (seeds `random_state + r`): one
assignment's result moves with which patients land together (on the demo, Infiltration
0.906-0.958 over fold seeds 1-5), so the result is the mean over repeats of each repeat's
mean fold AUROC, and the sd is *over repeats* (the Monte Carlo spread of the CV estimate,
not the fold-to-fold spread). Patient IDs are coded by first appearance before splitting,
so the folds do not depend on whether IDs were read as integers or strings. A probe is
reported as undefined, with the reason, when a target has too few positives (or negatives,
or patients) to put one in every fold; a fold whose test part still lacks a class is skipped
and counted.

Clusters can miss structure a linear read-out finds (and vice versa), so the probe is the
second half of "do the features group X-rays by pathology?".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxrlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _too_few(y: np.ndarray, groups: np.ndarray | None, n_splits: int) -> str | None:
    """Why `y` cannot be split into `n_splits` folds with both classes in each, or None."""
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if min(n_pos, n_neg) < n_splits:
        return f"{n_pos} positive / {n_neg} negative images; need >= {n_splits} of each"
    if groups is not None:
        g_pos = len(np.unique(groups[y == 1]))
        g_neg = len(np.unique(groups[y == 0]))
        if min(g_pos, g_neg) < n_splits:
            return f"positives from {g_pos} / negatives from {g_neg} patients; need >= {n_splits}"
    return None


def probe_target(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_splits: int = 5,
    n_repeats: int = 5,  # fold assignments averaged; the sd is over these
    C: float = 1.0,  # inverse L2 strength; 1.0 on standardised features is a mild default
    max_iter: int = 1000,
    random_state: int = 0,
) -> dict:
    """Repeated cross-validated AUROC of a standardised logistic-regression probe for one
    0/1 target: mean over repeats, sd over repeats; `fold_aurocs` holds every fold used."""
    if n_repeats < 1:
        raise ConfigError(f"n_repeats={n_repeats} must be >= 1")
    y = np.asarray(y).astype(np.int64)
    if groups is not None:
        groups = pd.factorize(np.asarray(groups))[0]  # first-appearance codes: dtype-free
    reason = _too_few(y, groups, n_splits)
    out = {"n": int(len(y)), "n_positive": int(y.sum()), "n_splits": n_splits,
           "n_repeats": n_repeats}  # fmt: skip
    undefined = {"auroc_mean": None, "auroc_sd": None, "repeat_aurocs": []}
    if reason:
        return {**out, **undefined, "fold_aurocs": [], "reason": reason}
    repeats, folds = [], []
    for r in range(n_repeats):
        aucs = _one_cv(X, y, groups, n_splits, random_state + r, C, max_iter)
        folds += aucs
        if len(aucs) >= 2:
            repeats.append(float(np.mean(aucs)))
    if not repeats:
        reason = f"no repeat had 2 of {n_splits} folds with both classes in train and test"
        return {**out, **undefined, "fold_aurocs": folds, "reason": reason}
    return {
        **out,
        "auroc_mean": float(np.mean(repeats)),
        "auroc_sd": float(np.std(repeats, ddof=1)) if len(repeats) > 1 else None,
        "repeat_aurocs": repeats,
        "fold_aurocs": folds,
        "reason": None,
    }


def _one_cv(X, y, groups, n_splits: int, seed: int, C: float, max_iter: int) -> list[float]:
    """Fold AUROCs of one (patient-grouped) stratified k-fold assignment."""
    if groups is None:
        cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    else:
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    aucs = []
    for train, test in cv.split(X, y, groups):
        if len(np.unique(y[test])) < 2 or len(np.unique(y[train])) < 2:
            continue  # possible with groups; counted via fold_aurocs' length
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
        pipe.fit(X[train], y[train])
        aucs.append(float(roc_auc_score(y[test], pipe.predict_proba(X[test])[:, 1])))
    return aucs


def probe_layers(
    features: Mapping[str, np.ndarray],
    Y: np.ndarray,
    targets: Sequence[str],
    groups: Sequence | None = None,
    *,
    n_splits: int = 5,
    random_state: int = 0,
    **probe_kwargs,
) -> pd.DataFrame:
    """One row per (layer, target): AUROC mean and sd over repeats, folds used, positives,
    reason if undefined."""
    if n_splits < 2:
        raise ConfigError(f"n_splits={n_splits} must be >= 2")
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[1] != len(targets):
        raise DataError(f"label matrix of shape {Y.shape} does not match {len(targets)} targets")
    groups_arr = None if groups is None else np.asarray(groups)
    rows = []
    for layer, X in features.items():
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] != Y.shape[0]:
            raise DataError(f"layer {layer!r} features {X.shape} do not match {Y.shape[0]} images")
        if groups_arr is not None and len(groups_arr) != X.shape[0]:
            raise DataError(f"{len(groups_arr)} patient ids for {X.shape[0]} images")
        for j, target in enumerate(targets):
            res = probe_target(
                X, Y[:, j], groups_arr, n_splits=n_splits, random_state=random_state, **probe_kwargs
            )
            res["n_folds_used"] = len(res["fold_aurocs"])
            rows.append({"layer": layer, "target": target, **res})
            log.info("probe %s / %s: AUROC %s", layer, target, res["auroc_mean"])
    return pd.DataFrame(rows)

"""DeLong's test for two correlated ROC AUCs measured on the same images.

DeLong, DeLong & Clarke-Pearson (Biometrics 1988) give the covariance of AUCs from their
structural components; Sun & Xu (IEEE SPL 2014) compute those components from midranks in
O(N log N). Written here by hand because it is this small and scikit-learn has no DeLong.

For m positives X and n negatives Y, with psi(x, y) = 1 if x > y, 1/2 if equal, 0 otherwise:
  V10(X_i) = mean_j psi(X_i, Y_j) = (rank of X_i among all - rank among positives) / n
  V01(Y_j) = mean_i psi(X_i, Y_j) = 1 - (rank of Y_j among all - rank among negatives) / m
  AUC = mean(V10);  Cov(AUC) = S10 / m + S01 / n  (S = sample covariances, ddof=1).
Note DeLong assumes independent images: with several images per patient the variance is
too small; the patient bootstrap (`cxrlab.evaluate.bootstrap`) is the honest default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from cxrlab.errors import EvaluationError
from cxrlab.evaluate.metrics import NO_NEGATIVES, NO_POSITIVES, check_arrays


class DelongResult(NamedTuple):
    auc_a: float
    auc_b: float
    z: float
    p_value: float


class AucInterval(NamedTuple):
    auc: float
    variance: float
    low: float
    high: float


def structural_components(y, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sun & Xu midrank algorithm. y: (N,) 0/1; scores: (k, N) for k models.

    Returns (aucs (k,), v10 (k, m) over positives, v01 (k, n) over negatives).
    """
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise EvaluationError(f"AUROC undefined: {NO_POSITIVES if m == 0 else NO_NEGATIVES}")
    pos, neg = scores[:, y], scores[:, ~y]
    rank_all = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # midranks, (k, m+n)
    rank_pos = rankdata(pos, axis=1)
    rank_neg = rankdata(neg, axis=1)
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m
    aucs = v10.mean(axis=1)
    return aucs, v10, v01


def delong_covariance(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """(aucs (k,), covariance (k, k)) of the AUCs of k models scored on the same images."""
    aucs, v10, v01 = structural_components(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(aucs), len(aucs)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(aucs), len(aucs)))
    return aucs, s10 / m + s01 / n


def delong_test(y, p_a, p_b) -> DelongResult:
    """Two-sided test of AUC(a) == AUC(b) for two models on the same images (one class).

    Returns (auc_a, auc_b, z, p_value). Identical predictions give z = 0, p = 1; different
    AUCs whose difference has zero variance (tiny degenerate splits) give z = ±inf, p = 0.
    """
    from scipy.stats import norm

    y, p_a = _one_class(y, p_a)
    _, p_b = _one_class(y, p_b)
    aucs, cov = delong_covariance(y, np.stack([p_a, p_b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:  # no variability in the difference: equal AUCs, or a degenerate split
        z = 0.0 if abs(diff) < 1e-12 else float(np.sign(diff) * np.inf)
    else:
        z = float(diff / np.sqrt(var))
    return DelongResult(float(aucs[0]), float(aucs[1]), z, float(2 * norm.sf(abs(z))))


def compare_delong(y, p_a, p_b, targets: Sequence[str] | None = None) -> dict:
    """DeLong per class of (N, K) predictions; undefined classes get None and a reason."""
    y, p_a, targets = check_arrays(y, p_a, targets)
    _, p_b, _ = check_arrays(y, p_b, targets)
    out = {}
    for k, name in enumerate(targets):
        n_pos = int(y[:, k].sum())
        if n_pos in (0, y.shape[0]):
            reason = NO_POSITIVES if n_pos == 0 else NO_NEGATIVES
            out[name] = {
                "auc_a": None,
                "auc_b": None,
                "z": None,
                "p_value": None,
                "undefined": reason,
            }
            continue
        result = delong_test(y[:, k], p_a[:, k], p_b[:, k])._asdict()
        if not np.isfinite(result["z"]):  # keep the dict JSON-safe
            result.update(z=None, note="zero variance of the AUC difference; z is infinite")
        out[name] = result
    return out


def delong_ci(y, p, level: float = 0.95) -> AucInterval:
    """AUROC with its DeLong variance and a normal-approximation interval clipped to [0, 1]."""
    from scipy.stats import norm

    y, p = _one_class(y, p)
    aucs, cov = delong_covariance(y, p[None, :])
    auc, var = float(aucs[0]), float(cov[0, 0])
    half = norm.ppf(0.5 + level / 2) * np.sqrt(max(var, 0.0))
    return AucInterval(auc, var, float(max(0.0, auc - half)), float(min(1.0, auc + half)))


def _one_class(y, p) -> tuple[np.ndarray, np.ndarray]:
    y, p, _ = check_arrays(np.ravel(y), np.ravel(p))
    return y[:, 0], p[:, 0]

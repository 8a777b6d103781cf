"""Calibration: expected calibration error, reliability-diagram data, temperature scaling.

Each class is a binary problem: does the predicted probability match the observed
frequency of the finding? Bins are equal-width on [0, 1] (bin b is [b/B, (b+1)/B), the last
one closed), and ECE = sum_b (n_b / N) * |fraction positive_b - mean predicted_b|. Bin counts
are always reported: an ECE from a handful of images per bin is noise.

Temperature scaling (Guo et al., ICML 2017) fits one temperature T > 0 on validation,
shared by all classes: p' = sigmoid(logit(p) / T). T > 1 softens over-confident outputs.
It changes no ranking, so AUROC/AP are unchanged; only calibration and thresholds move.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from cxrlab.errors import EvaluationError
from cxrlab.evaluate.metrics import check_arrays

log = logging.getLogger(__name__)

_EPS = 1e-7  # keeps logit(p) finite for p in {0, 1}


def reliability(y, p, n_bins: int = 10) -> dict:
    """One class's reliability-diagram data and ECE (empty bins have None means)."""
    if n_bins < 1:
        raise EvaluationError(f"n_bins={n_bins} must be >= 1")
    y = np.asarray(y, dtype=float).ravel()
    p = np.asarray(p, dtype=float).ravel()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.searchsorted(edges[1:-1], p, side="right")  # (N,) bin of each image
    count = np.bincount(which, minlength=n_bins)
    sum_p = np.bincount(which, weights=p, minlength=n_bins)
    sum_y = np.bincount(which, weights=y, minlength=n_bins)
    filled = count > 0
    mean_p = np.divide(sum_p, count, out=np.zeros(n_bins), where=filled)
    frac_y = np.divide(sum_y, count, out=np.zeros(n_bins), where=filled)
    ece = float(np.sum(count * np.abs(frac_y - mean_p)) / p.size)
    return {
        "ece": ece,
        "n": int(p.size),
        "n_bins": n_bins,
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "count": count.tolist(),
        "mean_predicted": [float(v) if f else None for v, f in zip(mean_p, filled, strict=True)],
        "fraction_positive": [float(v) if f else None for v, f in zip(frac_y, filled, strict=True)],
    }


def expected_calibration_error(y, p, n_bins: int = 10) -> float:
    """ECE of one class with `n_bins` equal-width bins."""
    return reliability(y, p, n_bins)["ece"]


def calibration_report(y, p, targets: Sequence[str] | None = None, n_bins: int = 10) -> dict:
    """Per-class reliability data and ECE, their mean over classes, and the NLL."""
    y, p, targets = check_arrays(y, p, targets)
    per_class = {t: reliability(y[:, k], p[:, k], n_bins) for k, t in enumerate(targets)}
    return {
        "n_bins": n_bins,
        "per_class": per_class,
        "macro_ece": float(np.mean([c["ece"] for c in per_class.values()])),
        "nll": binary_nll(y, p),
    }


def binary_nll(y, p) -> float:
    """Mean binary cross-entropy over all (image, class) pairs, p clipped to [eps, 1-eps]."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)


class TemperatureScaler:
    """One temperature for all classes, fitted on validation by minimising the NLL.

    `inputs` says what `fit`/`transform` receive: "probabilities" (the predictions file) or
    "logits". The search is over log T in `log_bounds` (T from e^-5 to e^5 by default).
    """

    def __init__(self, inputs: str = "probabilities", log_bounds: tuple = (-5.0, 5.0)) -> None:
        self.inputs = inputs
        self.log_bounds = log_bounds

    def _logits(self, scores) -> np.ndarray:
        if self.inputs not in ("probabilities", "logits"):
            raise EvaluationError(f"inputs={self.inputs!r}; expected 'probabilities' or 'logits'")
        scores = np.asarray(scores, dtype=float)
        if np.isnan(scores).any():
            raise EvaluationError(f"{int(np.isnan(scores).sum())} NaN scores given to calibrate")
        if self.inputs == "logits":
            return scores
        if scores.min() < 0 or scores.max() > 1:
            raise EvaluationError("probabilities outside [0, 1]; pass inputs='logits' for logits")
        return _logit(scores)

    def fit(self, scores, y) -> TemperatureScaler:
        """Learn `temperature_` on validation scores (N, K) and labels (N, K)."""
        from scipy.optimize import minimize_scalar

        z = self._logits(scores)
        y = np.asarray(y, dtype=float)
        if y.shape != z.shape:
            raise EvaluationError(f"labels shape {y.shape} != scores shape {z.shape}")

        def nll(log_t: float) -> float:
            return binary_nll(y, _sigmoid(z / np.exp(log_t)))

        found = minimize_scalar(nll, bounds=self.log_bounds, method="bounded")
        self.temperature_ = float(np.exp(found.x))
        self.nll_before_ = nll(0.0)
        self.nll_after_ = float(found.fun)
        log.info(
            "temperature %.3f: validation NLL %.4f -> %.4f",
            self.temperature_,
            self.nll_before_,
            self.nll_after_,
        )
        return self

    def transform(self, scores) -> np.ndarray:
        """Calibrated probabilities sigmoid(logit / T) for new scores (e.g. test)."""
        if not hasattr(self, "temperature_"):
            raise EvaluationError("TemperatureScaler is not fitted; call fit() on validation")
        return _sigmoid(self._logits(scores) / self.temperature_)

    def fit_transform(self, scores, y) -> np.ndarray:
        return self.fit(scores, y).transform(scores)

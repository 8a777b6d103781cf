"""Per-class decision thresholds, chosen on the validation split only and saved with the model.

Methods (an image is positive when `p >= threshold`):
- `max_f1` (default): the threshold with the highest F1 on validation; ties go to the lowest.
- `youden`: the threshold maximising J = sensitivity + specificity - 1; ties go to the highest.
- `fixed_sensitivity`: the highest threshold whose validation sensitivity is >= the target
  (e.g. 0.90), i.e. the most specific operating point that still meets it.

A class without positives in validation (or, for `youden`, without negatives) cannot have a
threshold chosen: it gets 0.5 and a note. Metrics at 0.5 are always reported next to the
chosen thresholds (`compute_metrics` does both), so the choice is visible, not hidden.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cxrlab.errors import EvaluationError
from cxrlab.evaluate.metrics import NO_NEGATIVES, NO_POSITIVES, check_arrays

log = logging.getLogger(__name__)

METHODS = ("max_f1", "youden", "fixed_sensitivity")
FALLBACK = 0.5
FORMAT_VERSION = 1


def choose_thresholds(
    y_val,
    p_val,
    targets: Sequence[str] | None = None,
    method: str = "max_f1",
    target_sensitivity: float = 0.90,
) -> dict[str, dict]:
    """Pick one threshold per class on validation predictions.

    Returns `{target: {"threshold", "method", "val_value"}}` (plus `"note"` on fallback);
    `val_value` is the criterion at that threshold on validation (F1, J, or sensitivity).
    """
    if method not in METHODS:
        raise EvaluationError(f"unknown threshold method {method!r}; choose from {METHODS}")
    if not 0 < target_sensitivity <= 1:
        raise EvaluationError(f"target_sensitivity={target_sensitivity} must be in (0, 1]")
    y, p, targets = check_arrays(y_val, p_val, targets)
    chosen = {}
    for k, name in enumerate(targets):
        chosen[name] = _choose_one(y[:, k], p[:, k], method, target_sensitivity)
        if "note" in chosen[name]:
            log.warning("threshold for %s: %s", name, chosen[name]["note"])
    return chosen


def _choose_one(y: np.ndarray, p: np.ndarray, method: str, target_sens: float) -> dict:
    n_pos = int(y.sum())
    reason = NO_POSITIVES if n_pos == 0 else None
    if method == "youden" and n_pos == y.size:
        reason = NO_NEGATIVES
    if reason:
        note = f"{reason.replace('this split', 'validation')}; threshold falls back to {FALLBACK}"
        return {"threshold": FALLBACK, "method": method, "val_value": None, "note": note}
    if method == "max_f1":
        threshold, value = _max_f1(y, p)
    elif method == "youden":
        threshold, value = _youden(y, p)
    else:
        threshold, value = _fixed_sensitivity(y, p, target_sens)
    out = {"threshold": threshold, "method": method, "val_value": value}
    if method == "fixed_sensitivity":
        out["target_sensitivity"] = target_sens
    return out


def _max_f1(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, p)  # thresholds increasing
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))  # first maximum = lowest threshold among ties
    return float(thresholds[best]), float(f1[best])


def _roc_points(y: np.ndarray, p: np.ndarray):
    """(fpr, tpr, thresholds), thresholds decreasing, without sklearn's +inf start point."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    return fpr[1:], tpr[1:], thresholds[1:]


def _youden(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    fpr, tpr, thresholds = _roc_points(y, p)
    j = tpr - fpr
    best = int(np.argmax(j))  # thresholds decrease: first maximum = highest threshold
    return float(thresholds[best]), float(j[best])


def _fixed_sensitivity(y: np.ndarray, p: np.ndarray, target: float) -> tuple[float, float]:
    _, tpr, thresholds = _roc_points(y, p)
    # tpr is non-decreasing as the threshold falls; the first point that meets the target
    # is the highest threshold that does. tpr reaches 1 at the last point, so one exists.
    best = int(np.argmax(tpr >= target - 1e-12))
    return float(thresholds[best]), float(tpr[best])


def save_thresholds(thresholds: Mapping[str, Mapping], path: str | Path) -> Path:
    """Write `thresholds.json`: {"format_version", "chosen_on": "val", "thresholds": {...}}."""
    path = Path(path)
    _validate(thresholds, where="thresholds to save")
    payload = {"format_version": FORMAT_VERSION, "chosen_on": "val", "thresholds": thresholds}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def load_thresholds(path: str | Path, targets: Sequence[str] | None = None) -> dict[str, dict]:
    """Read `thresholds.json`; with `targets`, insist it covers exactly those classes."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"cannot read thresholds file {path}: {exc}") from exc
    if not isinstance(payload, dict) or "thresholds" not in payload:
        raise EvaluationError(f"{path}: not a thresholds file (no 'thresholds' key)")
    if payload.get("chosen_on") != "val":
        raise EvaluationError(
            f"{path}: thresholds were chosen on {payload.get('chosen_on')!r}; only 'val' is valid"
        )
    thresholds = payload["thresholds"]
    _validate(thresholds, where=str(path))
    if targets is not None and set(targets) != set(thresholds):
        raise EvaluationError(
            f"{path}: thresholds for {sorted(thresholds)}, but the targets are {sorted(targets)}"
        )
    return {t: dict(thresholds[t]) for t in (targets or thresholds)}


def _validate(thresholds: Mapping, where: str) -> None:
    if not isinstance(thresholds, Mapping) or not thresholds:
        raise EvaluationError(f"{where}: expected a non-empty {{target: {{'threshold': t}}}}")
    for name, entry in thresholds.items():
        value = entry.get("threshold") if isinstance(entry, Mapping) else None
        if not isinstance(value, int | float) or not 0 <= value <= 1:
            raise EvaluationError(
                f"{where}: threshold for {name!r} is {value!r}; a number in [0, 1] is required"
            )

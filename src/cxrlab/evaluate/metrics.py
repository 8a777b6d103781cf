"""Honest multi-label metrics from predictions: ranking, threshold and all-label scores.

Every multi-label accuracy (Hamming, exact match) is reported beside the all-negative
predictor's value on the same data, because at NIH prevalence "predict nothing" scores
~89% Hamming accuracy on four labels. A class without positives (or without negatives)
has an *undefined* AUROC and AP: the value is `None`, the reason is recorded under
`undefined`, and the class is left out of macro averages with a note; never 0.5.

Conventions (documented once, used everywhere in `cxrlab.evaluate`):
- an image is predicted positive for a class when `p >= threshold`;
- precision with no predicted positives is undefined (`None` + reason), not 0; likewise
  sensitivity with no positives and specificity with no negatives. F1 is `2TP/(2TP+FP+FN)`,
  which is 0 (not undefined) when there are positives but none is predicted.
- AUROC and AP come from scikit-learn; AP's chance level is the class prevalence.

The result of `compute_metrics` is a plain nested dict that `json.dumps` accepts.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.errors import EvaluationError
from cxrlab.labels import IMAGE_INDEX, PATIENT_ID

log = logging.getLogger(__name__)

ID_COLUMN = IMAGE_INDEX
PATIENT_COLUMN = PATIENT_ID
META_COLUMNS = ("age", "sex", "view")
NO_POSITIVES = "no positives in this split"
NO_NEGATIVES = "no negatives in this split"
NO_PREDICTED_POSITIVES = "no predicted positives at this threshold"
RUN_META_KEYS = ("run_id", "split_hash", "model", "targets")


@dataclass(frozen=True)
class Predictions:
    """One split's predictions, row-aligned: y[i], p[i] and meta.iloc[i] are image ids[i]."""

    ids: np.ndarray  # (N,) image names
    patient_ids: np.ndarray  # (N,) patient of each image
    targets: tuple[str, ...]  # K class names, column order of y and p
    y: np.ndarray  # (N, K) int8, 0/1 ground truth
    p: np.ndarray  # (N, K) float64 probabilities in [0, 1]
    meta: pd.DataFrame  # age, sex, view (and any other non-label columns), RangeIndex


def read_predictions(path: str | Path, targets: Sequence[str] | None = None) -> Predictions:
    """Read and check a `predictions.csv` (columns `p_<T>`, `y_<T>` per target T)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"predictions file not found: {path}")
    frame = pd.read_csv(path, dtype={ID_COLUMN: str, PATIENT_COLUMN: str})
    missing = [c for c in (ID_COLUMN, PATIENT_COLUMN) if c not in frame.columns]
    if missing:
        raise EvaluationError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    if frame.empty:
        raise EvaluationError(f"{path}: no rows; a predictions file needs at least one image")
    found = _label_set(frame, path)
    if targets is not None and set(targets) != set(found):
        raise EvaluationError(
            f"{path}: targets differ from those expected: file has {sorted(found)}, "
            f"expected {sorted(targets)}"
        )
    order = tuple(targets) if targets is not None else tuple(found)
    p = frame[[f"p_{t}" for t in order]].to_numpy(dtype=float)
    y = frame[[f"y_{t}" for t in order]].to_numpy(dtype=float)
    _check_probabilities(p, order, where=str(path))
    _check_labels(y, order, where=str(path))
    label_cols = [f"{k}_{t}" for t in order for k in "py"]
    meta = frame.drop(columns=[ID_COLUMN, PATIENT_COLUMN, *label_cols]).reset_index(drop=True)
    return Predictions(
        ids=frame[ID_COLUMN].to_numpy(),
        patient_ids=frame[PATIENT_COLUMN].to_numpy(),
        targets=order,
        y=y.astype(np.int8),
        p=p,
        meta=meta,
    )


def _label_set(frame: pd.DataFrame, path: Path) -> list[str]:
    """Targets in file order; every `p_<T>` needs a `y_<T>` and the other way round."""
    p_names = [c[2:] for c in frame.columns if c.startswith("p_")]
    y_names = [c[2:] for c in frame.columns if c.startswith("y_")]
    if not p_names:
        raise EvaluationError(f"{path}: no probability columns (p_<Pathology>) found")
    if set(p_names) != set(y_names):
        raise EvaluationError(
            f"{path}: label columns do not pair up: p_ columns for {sorted(p_names)}, "
            f"y_ columns for {sorted(y_names)}"
        )
    return p_names


def _check_probabilities(p: np.ndarray, targets: Sequence[str], where: str) -> None:
    for k, name in enumerate(targets):
        col = p[:, k]
        n_nan = int(np.isnan(col).sum())
        if n_nan:
            raise EvaluationError(f"{where}: column p_{name} has {n_nan} NaN probabilities")
        bad = col[(col < 0) | (col > 1)]
        if bad.size:
            raise EvaluationError(
                f"{where}: column p_{name} has {bad.size} value(s) outside [0, 1] "
                f"(e.g. {bad[0]:.4g}); probabilities are required, not logits"
            )


def _check_labels(y: np.ndarray, targets: Sequence[str], where: str) -> None:
    for k, name in enumerate(targets):
        col = y[:, k]
        bad = col[~np.isin(col, (0, 1))]
        if bad.size:
            raise EvaluationError(
                f"{where}: column y_{name} has {bad.size} value(s) that are not 0/1 "
                f"(e.g. {bad[0]!r})"
            )


def check_same_run(meta: Mapping | str | Path, expected_split_hash: str) -> dict:
    """Refuse predictions made on another run's split (the `predictions.json` sidecar).

    `meta` is the sidecar's dict or its path. Returns the dict when it matches.
    """
    if not isinstance(meta, Mapping):
        try:
            meta = json.loads(Path(meta).read_text())
        except (OSError, ValueError) as exc:
            raise EvaluationError(f"cannot read predictions sidecar {meta}: {exc}") from exc
    missing = [key for key in RUN_META_KEYS if key not in meta]
    if missing:
        raise EvaluationError(
            f"predictions sidecar lacks {missing}; it needs {list(RUN_META_KEYS)}"
        )
    if meta["split_hash"] != expected_split_hash:
        raise EvaluationError(
            f"predictions come from another run: split_hash {meta['split_hash']!r} "
            f"(run {meta['run_id']!r}) != this run's {expected_split_hash!r}"
        )
    return dict(meta)


def check_arrays(y, p, targets: Sequence[str] | None = None):
    """Validate (N, K) labels and probabilities; returns (y int8, p float64, targets list)."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if y.ndim == 1 and p.ndim == 1:  # one class
        y, p = y[:, None], p[:, None]
    if y.shape != p.shape or y.ndim != 2:
        raise EvaluationError(f"y shape {y.shape} and p shape {p.shape} must be equal (N, K)")
    if y.shape[0] == 0:
        raise EvaluationError("no images: y and p have 0 rows")
    targets = [f"class_{k}" for k in range(y.shape[1])] if targets is None else list(targets)
    if len(targets) != y.shape[1]:
        raise EvaluationError(f"{len(targets)} target names for {y.shape[1]} columns")
    _check_probabilities(p, targets, where="predictions")
    _check_labels(y, targets, where="labels")
    return y.astype(np.int8), p, targets


def resolve_thresholds(thresholds, targets: Sequence[str]) -> np.ndarray:
    """(K,) thresholds from None (0.5), a number, a sequence, `{target: t}` or thresholds.json's
    `{target: {"threshold": t, ...}}`."""
    k = len(targets)
    if thresholds is None:
        out = np.full(k, 0.5)
    elif isinstance(thresholds, Mapping):
        if set(thresholds) != set(targets):
            raise EvaluationError(
                f"thresholds are for {sorted(thresholds)} but the targets are {sorted(targets)}"
            )
        values = [thresholds[t] for t in targets]
        out = np.array([v["threshold"] if isinstance(v, Mapping) else v for v in values], float)
    elif np.ndim(thresholds) == 0:
        out = np.full(k, float(thresholds))
    else:
        out = np.asarray(thresholds, dtype=float)
        if out.shape != (k,):
            raise EvaluationError(f"{out.size} thresholds given for {k} targets")
    if not np.all((out >= 0) & (out <= 1)):
        raise EvaluationError(f"thresholds must lie in [0, 1]; got {out.tolist()}")
    return out


def compute_metrics(y, p, thresholds=None, targets: Sequence[str] | None = None) -> dict:
    """All metrics of one split at per-class thresholds (and at 0.5, always, for reference).

    y, p: (N, K). Returns {"n_images", "targets", "thresholds", "per_class", "macro",
    "micro", "multilabel", "notes"}; undefined values are None with a reason.
    """
    y, p, targets = check_arrays(y, p, targets)
    thr = resolve_thresholds(thresholds, targets)
    per_class = {}
    for k, name in enumerate(targets):
        per_class[name] = class_metrics(y[:, k], p[:, k], float(thr[k]))
    notes = _threshold_notes(thresholds)
    result = {
        "n_images": int(y.shape[0]),
        "targets": targets,
        "thresholds": {t: float(v) for t, v in zip(targets, thr, strict=True)},
        "per_class": per_class,
        "macro": _macro(per_class, notes),
        "micro": _micro(y, p, thr),
        "multilabel": multilabel_metrics(y, p >= thr),
        "notes": notes,
    }
    result["multilabel"]["at_0.5"] = _strip_baseline(multilabel_metrics(y, p >= 0.5))
    notes.extend(_baseline_notes(result["multilabel"]))
    for note in notes:
        log.info(note)
    return result


def _threshold_notes(thresholds) -> list[str]:
    """Carry `choose_thresholds` fallback notes (e.g. no positives in validation) along."""
    if not isinstance(thresholds, Mapping):
        return []
    return [
        f"threshold for {name}: {entry['note']}"
        for name, entry in thresholds.items()
        if isinstance(entry, Mapping) and entry.get("note")
    ]


def class_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """One class: prevalence, AUROC, AP (baseline = prevalence), and threshold metrics."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    out: dict = {"n": int(y.size), "n_pos": n_pos, "n_neg": n_neg, "prevalence": n_pos / y.size}
    reason = NO_POSITIVES if n_pos == 0 else NO_NEGATIVES if n_neg == 0 else None
    undefined = {}
    if reason:
        out["auroc"] = out["ap"] = None
        undefined = {"auroc": reason, "ap": reason}
    else:
        out["auroc"] = float(roc_auc_score(y, p))
        out["ap"] = float(average_precision_score(y, p))
    out["ap_baseline"] = out["prevalence"]
    at_thr = threshold_metrics(y, p >= threshold)
    undefined.update(at_thr.pop("undefined"))
    out.update(threshold=threshold, **at_thr, undefined=undefined)
    out["at_0.5"] = {"threshold": 0.5, **threshold_metrics(y, p >= 0.5)}
    return out


def threshold_metrics(y: np.ndarray, y_hat: np.ndarray) -> dict:
    """Confusion counts and the rates built on them for one class; None + reason if undefined."""
    y = y.astype(bool)
    y_hat = np.asarray(y_hat, dtype=bool)
    tp = int(np.sum(y & y_hat))
    fp = int(np.sum(~y & y_hat))
    fn = int(np.sum(y & ~y_hat))
    tn = int(y.size - tp - fp - fn)
    undefined: dict[str, str] = {}

    def ratio(num: int, den: int, name: str, reason: str) -> float | None:
        if den == 0:
            undefined[name] = reason
            return None
        return num / den

    sens = ratio(tp, tp + fn, "sensitivity", NO_POSITIVES)
    f1_reason = "no positives and no predicted positives"
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": (tp + tn) / y.size,
        "accuracy_all_negative": (tn + fp) / y.size,
        "precision": ratio(tp, tp + fp, "precision", NO_PREDICTED_POSITIVES),
        "sensitivity": sens,
        "recall": sens,
        "specificity": ratio(tn, tn + fp, "specificity", NO_NEGATIVES),
        "f1": ratio(2 * tp, 2 * tp + fp + fn, "f1", f1_reason),
        "undefined": undefined,
    }


MACRO_METRICS = ("auroc", "ap", "f1", "sensitivity", "specificity", "precision")


def _macro(per_class: dict, notes: list[str]) -> dict:
    """Unweighted mean over the classes where each metric is defined; list the others."""
    macro: dict = {"excluded": {}}
    for metric in MACRO_METRICS:
        values = {t: m[metric] for t, m in per_class.items() if m[metric] is not None}
        excluded = [t for t in per_class if t not in values]
        macro[metric] = float(np.mean(list(values.values()))) if values else None
        macro["excluded"][metric] = excluded
        if excluded:
            reasons = {per_class[t]["undefined"][metric] for t in excluded}
            notes.append(
                f"macro {metric} excludes {', '.join(excluded)} "
                f"(undefined: {'; '.join(sorted(reasons))}); averaged over {len(values)} "
                f"of {len(per_class)} classes"
            )
    macro["n_classes"] = {m: len(per_class) - len(macro["excluded"][m]) for m in MACRO_METRICS}
    return macro


def _micro(y: np.ndarray, p: np.ndarray, thr: np.ndarray) -> dict:
    """Pool all (image, class) pairs: AUROC/AP over the flattened (N*K) arrays, summed counts."""
    flat = class_metrics(y.ravel(), p.ravel(), 0.5)
    counts = threshold_metrics(y.ravel(), (p >= thr).ravel())
    keep = ("precision", "sensitivity", "recall", "specificity", "f1", "tp", "fp", "tn", "fn")
    out = {"auroc": flat["auroc"], "ap": flat["ap"], "ap_baseline": flat["prevalence"]}
    out.update({key: counts[key] for key in keep})
    undefined = {k: v for k, v in flat["undefined"].items() if k in ("auroc", "ap")}
    out["undefined"] = {**undefined, **counts["undefined"]}
    return out


def multilabel_metrics(y: np.ndarray, y_hat: np.ndarray) -> dict:
    """Hamming and exact-match accuracy, beside the all-negative predictor's on the same y."""
    y = np.asarray(y, dtype=bool)
    correct = y == np.asarray(y_hat, dtype=bool)  # (N, K)
    return {
        "hamming_accuracy": float(correct.mean()),
        "exact_match": float(correct.all(axis=1).mean()),
        "all_negative": {
            "hamming_accuracy": float(1.0 - y.mean()),
            "exact_match": float((~y.any(axis=1)).mean()),
        },
        "n_images": int(y.shape[0]),
        "n_labels": int(y.shape[1]),
    }


def _strip_baseline(block: dict) -> dict:
    return {k: block[k] for k in ("hamming_accuracy", "exact_match")}


def _baseline_notes(multilabel: dict) -> list[str]:
    """Say loudly when a multi-label accuracy does not beat predicting 'no finding'."""
    notes = []
    base = multilabel["all_negative"]
    for key, label in (("hamming_accuracy", "Hamming accuracy"), ("exact_match", "exact match")):
        ours, theirs = multilabel[key], base[key]
        if ours <= theirs or math.isclose(ours, theirs):
            notes.append(
                f"{label} {ours:.3f} does not beat the all-negative predictor's {theirs:.3f} "
                "on the same images; it is no evidence of skill (use AUROC/AP)"
            )
    return notes

"""Patient-level bootstrap confidence intervals and paired model comparison.

Images of one patient are correlated, so the unit of resampling is the patient: draw patient
IDs with replacement and take all their images. A resample is represented by per-image
weights (how many times the image's patient was drawn); every metric below is computed from
weights exactly as scikit-learn would compute it on the materialised resample (duplicated
images are tied scores, so AUROC/AP with weights == AUROC/AP on the repeated rows). That
turns B resamples into a few (B, N) matrix operations per class instead of B sklearn calls.

Intervals are percentile intervals, except for the proportions (sensitivity, specificity,
precision): a percentile interval of 6 of 6 predicted positives is [1, 1], so those get a
Wilson interval widened by the patient design effect (`intervals.proportion_ci`). A resample
in which a metric is undefined (e.g. a class drew no positives) is skipped *for that metric*
and counted in `n_skipped`. Estimates resting on fewer than `MIN_STABLE` positives or
negatives carry an `unstable` note. Randomness comes only from `np.random.default_rng(seed)`;
results do not depend on the chunk size.

Verdicts (`better` / `worse` / `not shown`) come from the CI of a *difference*: the model
minus the all-negative predictor (Hamming, exact match) in `bootstrap_ci`, model A minus
model B in `paired_bootstrap`, whose per-class p-values are Holm-adjusted across classes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from cxrlab.errors import EvaluationError
from cxrlab.evaluate.intervals import (
    NOT_SHOWN,
    holm,
    proportion_ci,
    stability,
    verdict_from_ci,
)
from cxrlab.evaluate.metrics import check_arrays, resolve_thresholds

log = logging.getLogger(__name__)

#: Elements of one (chunk, N*K) block: 32 MB of float64 (fastest of 8, 32, 128 MB measured).
_CHUNK_ELEMENTS = 4_000_000
THRESHOLD_METRICS = ("f1", "sensitivity", "specificity", "precision")
ALPHA = 0.05  # two-sided level of every verdict


class PatientResampler:
    """Draw patients with replacement; express each resample as indices or image weights."""

    def __init__(self, patient_ids: Sequence) -> None:
        codes, uniques = pd.factorize(np.asarray(patient_ids), use_na_sentinel=False)
        self.codes = codes  # (N,) patient number of each image
        self.n_images = codes.size
        self.n_patients = len(uniques)
        self._order = np.argsort(codes, kind="stable")  # images grouped by patient
        self._sizes = np.bincount(codes, minlength=self.n_patients)
        self._starts = np.cumsum(self._sizes) - self._sizes

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """(size, n_patients) patient numbers: each row is one resample of the patients."""
        return rng.integers(0, self.n_patients, size=(size, self.n_patients))

    def counts(self, draws: np.ndarray) -> np.ndarray:
        """(size, n_patients) how many times each patient was drawn in each resample."""
        size, m = draws.shape
        flat = (np.arange(size)[:, None] * m + draws).ravel()
        return np.bincount(flat, minlength=size * m).reshape(size, m)

    def weights(self, draws: np.ndarray) -> np.ndarray:
        """(size, N) float weights: an image counts as often as its patient was drawn."""
        return self.counts(draws)[:, self.codes].astype(np.float64)

    def indices(self, draw: np.ndarray) -> np.ndarray:
        """Image indices of one resample (one row of `draw`): all images of each drawn patient."""
        lengths = self._sizes[draw]
        firsts = np.repeat(self._starts[draw], lengths)
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return self._order[firsts + within]

    def iter_weights(self, n_boot: int, seed: int, width: int = 1) -> Iterator[np.ndarray]:
        """Yield (chunk, N) weight matrices for `n_boot` resamples; `width` = columns per image
        the caller will expand to (sizes chunks so chunk*N*width stays bounded)."""
        if n_boot < 1:
            raise EvaluationError(f"n_boot={n_boot} must be >= 1")
        rng = np.random.default_rng(seed)
        chunk = int(np.clip(_CHUNK_ELEMENTS // max(1, self.n_images * width), 1, n_boot))
        for start in range(0, n_boot, chunk):
            yield self.weights(self.draw(rng, min(chunk, n_boot - start)))


class RankedScores:
    """One class's scores, pre-sorted once, for AUROC and AP under many weight vectors.

    For each positive i: `below` = negative weight scored lower, `tied` = negative weight
    scored equal. AUROC = sum_i w_i (below_i + tied_i / 2) / (W_pos W_neg). AP, as sklearn
    defines it (tied scores form one threshold), = sum_i w_i precision(s_i) / W_pos with
    precision(s) = (weight of positives >= s) / (weight of all images >= s).
    `column` maps score j to its weight column (for micro: the image of flattened cell j).
    """

    def __init__(self, y: np.ndarray, p: np.ndarray, column: np.ndarray | None = None) -> None:
        y = np.asarray(y).astype(bool)
        column = np.arange(y.size) if column is None else column
        pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
        neg_sorted = neg[np.argsort(p[neg], kind="stable")]
        pos_sorted = pos[np.argsort(p[pos], kind="stable")]
        neg_scores, pos_scores = p[neg_sorted], p[pos_sorted]
        self.pos_col = column[pos]  # (m,) weight column of each positive
        self.neg_sorted_col = column[neg_sorted]  # (n,) negatives, ascending score
        self.pos_sorted_col = column[pos_sorted]  # (m,) positives, ascending score
        self.neg_lo = np.searchsorted(neg_scores, p[pos], side="left")  # negatives < s_i
        self.neg_hi = np.searchsorted(neg_scores, p[pos], side="right")  # negatives <= s_i
        self.pos_lo = np.searchsorted(pos_scores, p[pos], side="left")  # positives < s_i
        self.has_ties = bool(np.any(self.neg_hi != self.neg_lo))

    def auroc_ap(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,) AUROC and AP under (B, N) weights; NaN where a class has no weight."""
        b = weights.shape[0]
        if self.pos_col.size == 0 or self.neg_sorted_col.size == 0:
            return np.full(b, np.nan), np.full(b, np.nan)
        w_pos = weights[:, self.pos_col]  # (B, m)
        cum_neg = _cumsum0(weights[:, self.neg_sorted_col])  # (B, n + 1)
        cum_pos = _cumsum0(weights[:, self.pos_sorted_col])  # (B, m + 1)
        n_neg, n_pos = cum_neg[:, -1], cum_pos[:, -1]
        below = cum_neg[:, self.neg_lo]
        pairs = below + 0.5 * (cum_neg[:, self.neg_hi] - below) if self.has_ties else below
        tp = n_pos[:, None] - cum_pos[:, self.pos_lo]  # positive weight scored >= s_i
        fp = n_neg[:, None] - below  # negative weight scored >= s_i
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            auroc = (w_pos * pairs).sum(axis=1) / (n_pos * n_neg)
            ap = (w_pos * precision).sum(axis=1) / n_pos
        undefined = (n_pos == 0) | (n_neg == 0)
        auroc[undefined] = np.nan
        ap[undefined] = np.nan
        return auroc, ap


def _cumsum0(values: np.ndarray) -> np.ndarray:
    """Cumulative sums along axis 1 with a leading 0 column: out[:, j] = sum(values[:, :j])."""
    out = np.zeros((values.shape[0], values.shape[1] + 1))
    np.cumsum(values, axis=1, out=out[:, 1:])
    return out


def _rates(weights: np.ndarray, y: np.ndarray, y_hat: np.ndarray) -> dict[str, np.ndarray]:
    """(B, K) threshold metrics and (B,) Hamming/exact match under weights; NaN = undefined."""
    y, y_hat = y.astype(np.float64), y_hat.astype(np.float64)
    total = weights.sum(axis=1)  # (B,)
    tp = weights @ (y * y_hat)
    pos, pred = weights @ y, weights @ y_hat
    fp, fn = pred - tp, pos - tp
    tn = total[:, None] - tp - fp - fn
    correct = (y == y_hat).astype(np.float64)
    # Per image: cells the model gets right minus cells "predict nothing" gets right, and
    # exact match of the model minus that of predicting nothing; both are paired per image.
    cells_gained = correct.sum(axis=1) - (1 - y).sum(axis=1)
    exact_gained = correct.all(axis=1).astype(np.float64) - (y.sum(axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "sensitivity": tp / pos,
            "specificity": tn / (tn + fp),
            "precision": tp / pred,
            "f1": 2 * tp / (2 * tp + fp + fn),
            "hamming_accuracy": (weights @ correct.sum(axis=1)) / (total * y.shape[1]),
            "exact_match": (weights @ correct.all(axis=1).astype(np.float64)) / total,
            "hamming_accuracy_gain": (weights @ cells_gained) / (total * y.shape[1]),
            "exact_match_gain": (weights @ exact_gained) / total,
        }
    return out


class _Evaluator:
    """All headline metrics for many weight vectors at once; ranks are precomputed."""

    def __init__(self, y: np.ndarray, p: np.ndarray, thr: np.ndarray) -> None:
        self.y, self.y_hat, self.k = y, p >= thr, y.shape[1]
        self.ranks = [RankedScores(y[:, k], p[:, k]) for k in range(self.k)]
        self.micro = RankedScores(
            y.ravel(), p.ravel(), column=np.repeat(np.arange(y.shape[0]), self.k)
        )

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        pairs = [r.auroc_ap(weights) for r in self.ranks]
        out = {
            "auroc": np.stack([a for a, _ in pairs], axis=1),  # (B, K)
            "ap": np.stack([b for _, b in pairs], axis=1),
            "micro_auroc": self.micro.auroc_ap(weights)[0],
        }
        out.update(_rates(weights, self.y, self.y_hat))
        return out


def _run(evaluator, resampler: PatientResampler, n_boot: int, seed: int, width: int) -> dict:
    parts = [evaluator(w) for w in resampler.iter_weights(n_boot, seed, width)]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def summarize(estimate: float, samples: np.ndarray, level: float = 0.95) -> dict:
    """Percentile interval of the defined (non-NaN) samples, with counts of skipped ones."""
    valid = samples[~np.isnan(samples)]
    out = {"estimate": None if np.isnan(estimate) else float(estimate), "low": None, "high": None}
    if out["estimate"] is not None and valid.size:
        tail = 100 * (1 - level) / 2
        out["low"], out["high"] = (float(v) for v in np.percentile(valid, [tail, 100 - tail]))
    out.update(n_valid=int(valid.size), n_skipped=int(samples.size - valid.size))
    return out


def _macro(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Row means over the classes defined on the full data; NaN if one of them is undefined
    in a resample (so every macro value averages the same classes)."""
    if not keep.any():
        return np.full(values.shape[0], np.nan)
    return values[:, keep].mean(axis=1)


def bootstrap_ci(
    y,
    p,
    patient_ids: Sequence,
    thresholds=None,
    targets: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Patient-bootstrap CIs of per-class AUROC, AP, F1; clustered Wilson intervals of
    sensitivity, specificity, precision; macro AUROC/AP/F1; micro AUROC; Hamming accuracy and
    exact match, and their differences from the all-negative predictor with a verdict.

    Bootstrap entries are `{"estimate", "low", "high", "n_valid", "n_skipped"}` (per class
    also the counts and `unstable`); proportions `{"estimate", "low", "high", "n",
    "method", "design_effect", "unstable"}`; `vs_all_negative` entries add `"verdict"`.
    """
    y, p, targets = check_arrays(y, p, targets)
    resampler = _resampler(patient_ids, y.shape[0], level)
    thr = resolve_thresholds(thresholds, targets)
    evaluator = _Evaluator(y, p, thr)
    point = evaluator(np.ones((1, y.shape[0])))
    boot = _run(evaluator, resampler, n_boot, seed, width=y.shape[1])
    per_class = {
        name: _class_intervals(point, boot, k, y[:, k], p[:, k] >= thr[k], patient_ids, level)
        for k, name in enumerate(targets)
    }
    macro = {}
    for m in ("auroc", "ap", "f1"):
        keep = ~np.isnan(point[m][0])
        macro[m] = summarize(_macro(point[m], keep)[0], _macro(boot[m], keep), level)
    multilabel = {m: summarize(point[m][0], boot[m], level) for m in _MULTILABEL}
    log.info("bootstrap: %d resamples of %d patients", n_boot, resampler.n_patients)
    return {
        **_header(resampler, n_boot, seed, level),
        "per_class": per_class,
        "macro": macro,
        "micro": {"auroc": summarize(point["micro_auroc"][0], boot["micro_auroc"], level)},
        "multilabel": multilabel,
        "vs_all_negative": {
            metric: _gain(point[f"{metric}_gain"][0], boot[f"{metric}_gain"], level)
            for metric in _MULTILABEL
        },
    }


_PER_CLASS = ("auroc", "ap", "f1")
_PROPORTIONS = ("sensitivity", "specificity", "precision")
_MULTILABEL = ("hamming_accuracy", "exact_match")


def _class_intervals(point, boot, k, y, y_hat, patient_ids, level) -> dict:
    """One class: percentile intervals of AUROC, AP, F1; Wilson intervals of the
    proportions, each over its own denominator; `unstable` notes on small counts."""
    y, y_hat = y.astype(bool), np.asarray(y_hat, dtype=bool)
    patients = np.asarray(patient_ids)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    out = {m: summarize(point[m][0, k], boot[m][:, k], level) for m in _PER_CLASS}
    for m in ("auroc", "ap"):
        out[m].update(n_pos=n_pos, n_neg=n_neg, unstable=stability(n_pos=n_pos, n_neg=n_neg))
    out["f1"].update(n_pos=n_pos, unstable=stability(n_pos=n_pos))
    denominators = {  # (images in the denominator, hit of each, unit shown)
        "sensitivity": (y, y_hat[y], "n_pos"),
        "specificity": (~y, ~y_hat[~y], "n_neg"),
        "precision": (y_hat, y[y_hat], "n_pred"),
    }
    for m, (rows, hits, unit) in denominators.items():
        out[m] = proportion_ci(hits, patients[rows], level, unit=unit)
    return out


def _gain(estimate: float, samples: np.ndarray, level: float) -> dict:
    """Model minus all-negative predictor, with its CI and a three-way verdict."""
    out = summarize(estimate, samples, level)
    out["verdict"] = verdict_from_ci(out["low"], out["high"])
    return out


def _header(resampler: PatientResampler, n_boot: int, seed: int, level: float) -> dict:
    return {
        "unit": "patient",
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "n_patients": resampler.n_patients,
        "n_images": resampler.n_images,
    }


def _resampler(patient_ids: Sequence, n_images: int, level: float) -> PatientResampler:
    if not 0 < level < 1:
        raise EvaluationError(f"level={level} must be in (0, 1), e.g. 0.95")
    if len(patient_ids) != n_images:
        raise EvaluationError(f"{len(patient_ids)} patient IDs for {n_images} images")
    missing = int(pd.isna(pd.Series(patient_ids)).sum())
    if missing:
        raise EvaluationError(f"{missing} images have no patient ID; every image needs one")
    return PatientResampler(patient_ids)


class _AurocOnly:
    def __init__(self, y: np.ndarray, ps: Sequence[np.ndarray]) -> None:
        self.models = [[RankedScores(y[:, k], p[:, k]) for k in range(y.shape[1])] for p in ps]

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        return {
            f"auroc_{i}": np.stack([r.auroc_ap(weights)[0] for r in ranks], axis=1)
            for i, ranks in enumerate(self.models)
        }


def bootstrap_auroc(
    y,
    p,
    patient_ids: Sequence,
    targets=None,
    n_boot: int = 1000,
    seed: int = 0,
    level=0.95,
    macro_classes: Sequence[str] | None = None,
) -> dict:
    """Patient-bootstrap CI of per-class and macro AUROC only (e.g. for subgroups).

    The macro averages `macro_classes` (default: the classes defined on these images)."""
    y, p, targets = check_arrays(y, p, targets)
    resampler = _resampler(patient_ids, y.shape[0], level)
    evaluator = _AurocOnly(y, [p])
    point = evaluator(np.ones((1, y.shape[0])))["auroc_0"]
    boot = _run(evaluator, resampler, n_boot, seed, width=1)["auroc_0"]
    keep = ~np.isnan(point[0])
    if macro_classes is not None:
        unknown = sorted(set(macro_classes) - set(targets))
        if unknown or not keep[[targets.index(t) for t in macro_classes]].all():
            raise EvaluationError(
                f"macro classes {list(macro_classes)} must be targets with a defined AUROC here"
                f" (unknown: {unknown})"
            )
        keep = np.isin(np.asarray(targets), list(macro_classes))
    return {
        **_header(resampler, n_boot, seed, level),
        "per_class": {t: summarize(point[0, k], boot[:, k], level) for k, t in enumerate(targets)},
        "macro": summarize(_macro(point, keep)[0], _macro(boot, keep), level),
    }


def paired_bootstrap(
    y,
    p_a,
    p_b,
    patient_ids: Sequence,
    n_boot: int = 1000,
    seed: int = 0,
    targets: Sequence[str] | None = None,
    level: float = 0.95,
) -> dict:
    """Compare two models on the same images: ΔAUROC = A − B per class and macro, with a
    percentile CI and a two-sided bootstrap p-value from the same patient resamples."""
    y, p_a, targets = check_arrays(y, p_a, targets)
    _, p_b, _ = check_arrays(y, p_b, targets)
    resampler = _resampler(patient_ids, y.shape[0], level)
    evaluator = _AurocOnly(y, [p_a, p_b])
    point = evaluator(np.ones((1, y.shape[0])))
    boot = _run(evaluator, resampler, n_boot, seed, width=1)
    a, b = point["auroc_0"], point["auroc_1"]
    per_class = {
        t: _delta(a[0, k], b[0, k], boot["auroc_0"][:, k] - boot["auroc_1"][:, k], level)
        for k, t in enumerate(targets)
    }
    for k, t in enumerate(targets):
        n_pos = int(y[:, k].sum())
        n_neg = int(y.shape[0] - n_pos)
        per_class[t].update(n_pos=n_pos, n_neg=n_neg, unstable=stability(n_pos=n_pos, n_neg=n_neg))
    _holm_verdicts(per_class)
    keep = ~(np.isnan(a[0]) | np.isnan(b[0]))
    macro_boot = _macro(boot["auroc_0"], keep) - _macro(boot["auroc_1"], keep)
    macro = _delta(_macro(a, keep)[0], _macro(b, keep)[0], macro_boot, level)
    macro["classes"] = [t for t, k in zip(targets, keep, strict=True) if k]
    macro["verdict"] = verdict_from_ci(macro["low"], macro["high"])
    return {
        **_header(resampler, n_boot, seed, level),
        "p_floor": 2 / (n_boot + 1),
        "adjustment": "holm across classes (per-class verdicts); macro: one test, unadjusted",
        "per_class": per_class,
        "macro": macro,
    }


def _holm_verdicts(per_class: dict) -> None:
    """Holm-adjust the per-class p-values of one comparison; a class is `better` (A over B)
    or `worse` only when its adjusted p < ALPHA, else `not shown`."""
    names = list(per_class)
    adjusted = holm([per_class[t]["p_value"] for t in names])
    for t, q in zip(names, adjusted, strict=True):
        entry = per_class[t]
        entry["p_holm"] = q
        if q is None or entry["delta"] is None:
            entry["verdict"] = None
        elif q < ALPHA:
            entry["verdict"] = verdict_from_ci(entry["low"], entry["high"]) or NOT_SHOWN
        else:
            entry["verdict"] = NOT_SHOWN


def _delta(auc_a: float, auc_b: float, deltas: np.ndarray, level: float) -> dict:
    summary = summarize(auc_a - auc_b, deltas, level)
    valid = deltas[~np.isnan(deltas)]
    p_value = None
    if summary["estimate"] is not None and valid.size:
        # Two-sided: twice the smaller tail mass at 0, with the +1 correction so p > 0.
        below = (np.sum(valid <= 0) + 1) / (valid.size + 1)
        above = (np.sum(valid >= 0) + 1) / (valid.size + 1)
        p_value = float(min(1.0, 2 * min(below, above)))
    floor = 2 / (valid.size + 1) if valid.size else None
    return {
        "auroc_a": None if np.isnan(auc_a) else float(auc_a),
        "auroc_b": None if np.isnan(auc_b) else float(auc_b),
        "delta": summary.pop("estimate"),
        **summary,
        "p_value": p_value,
        # p = 2/(B+1) means no resample fell on the other side of 0: the true p is smaller.
        "p_at_floor": p_value is not None and p_value <= floor + 1e-12,
    }

"""Intervals and verdicts that stay honest on small samples.

- `proportion_ci`: a Wilson interval (statsmodels) for a proportion such as sensitivity,
  widened for clustering by the patient design effect (Kish): images of one patient are
  correlated, so n images carry the information of n / deff independent ones, with deff
  from the between-patient variance of the ratio estimator (never below 1). Unlike a
  bootstrap percentile interval it cannot collapse: 6 of 6 is [0.61, 1.00], not [1, 1].
- `MIN_STABLE` and `stability`: an estimate resting on fewer than 10 positives or negatives
  (or predicted positives, for precision) is marked unstable wherever it is shown.
- `verdict_from_ci`: three outcomes from a CI of a difference: better, worse, not shown.
- `holm`: Holm's step-down adjustment across the classes of one comparison.

The design-effect step and `holm` are this project's own; the interval is a library call.
`holm` is the five lines of statsmodels' `multipletests(method="holm")`, which also runs a
full `gc.collect()` on every call: 0.2 s each in a process that holds torch (tested equal).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: Fewer positives or negatives than this under an AUROC, or fewer images in a proportion's
#: denominator, and the estimate is marked unstable.
MIN_STABLE = 10
BETTER, WORSE, NOT_SHOWN = "better", "worse", "not shown"


def stability(**counts: int) -> str | None:
    """`"unstable: n+ = 6 < 10"` for the smallest count under `MIN_STABLE`, else None.

    Keyword names are the labels shown (`n_pos` -> n+, `n_neg` -> n-, anything else as is)."""
    labels = {"n_pos": "n+", "n_neg": "n-", "n_pred": "predicted+"}
    low = [(n, labels.get(k, k)) for k, n in counts.items() if n is not None and n < MIN_STABLE]
    if not low:
        return None
    n, label = min(low)
    return f"unstable: {label} = {n} < {MIN_STABLE}"


def design_effect(hits: np.ndarray, clusters: np.ndarray) -> float:
    """Kish design effect of a proportion of `hits` (0/1 per image) over patient `clusters`.

    Ratio-estimator (linearisation) variance over patients divided by the one that treats
    images as independent; 1 for one image per patient, one patient, or a proportion of 0
    or 1 (no variance either way); never below 1 (clustering is not allowed to narrow)."""
    m = hits.size
    p = hits.mean()
    codes, _ = pd.factorize(clusters)
    n_c = int(codes.max()) + 1 if m else 0
    if n_c < 2 or p in (0.0, 1.0):
        return 1.0
    a = np.bincount(codes, weights=hits.astype(float))  # hits per patient
    size = np.bincount(codes).astype(float)  # images per patient
    # Both variances with their own small-sample factor, so one image per patient gives 1.
    var_cluster = n_c / (n_c - 1) * np.sum((a - p * size) ** 2) / m**2
    var_images = m / (m - 1) * np.sum((hits - p) ** 2) / m**2
    return float(max(1.0, var_cluster / var_images))


def proportion_ci(
    hits: Sequence, clusters: Sequence | None = None, level: float = 0.95, unit: str = "n"
) -> dict:
    """Wilson interval of mean(`hits`) with the patient design effect; `hits` holds the
    0/1 outcome of each image in the denominator (e.g. detected?, for each positive)."""
    from statsmodels.stats.proportion import proportion_confint

    hits = np.asarray(hits, dtype=float).ravel()
    n = int(hits.size)
    out = {"estimate": None, "low": None, "high": None, "n": n, "method": "wilson"}
    if n == 0:
        return {**out, "design_effect": None, "unstable": None}
    deff = 1.0 if clusters is None else design_effect(hits, np.asarray(clusters))
    p = float(hits.mean())
    n_eff = n / deff
    low, high = proportion_confint(p * n_eff, n_eff, alpha=1 - level, method="wilson")
    low, high = min(float(low), p), max(float(high), p)  # 6/6 gives 0.999...: keep p inside
    method = "wilson" if clusters is None else "wilson, patient design effect"
    return {
        **out,
        "estimate": p,
        "low": float(low),
        "high": float(high),
        "method": method,
        "design_effect": deff,
        "unstable": stability(**{unit: n}),
    }


def verdict_from_ci(low: float | None, high: float | None) -> str | None:
    """`better` when the CI of a difference lies above 0, `worse` below, else `not shown`."""
    if low is None or high is None:
        return None
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return NOT_SHOWN


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values: the i-th smallest of m times (m - i), made non-decreasing in
    that order and capped at 1; None stays None (and does not count in m)."""
    defined = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    p = np.array([p_values[i] for i in defined], dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(p[order] * (p.size - np.arange(p.size))), 1)
    for i, q in zip(defined, adjusted, strict=True):
        out[i] = float(q)
    return out

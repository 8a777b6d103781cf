"""Do clusters correspond to pathology -- or to how the X-ray was taken?

Three views of one cluster assignment:

1. Enrichment: a cluster x pathology table of prevalence, with a Fisher exact test per cell
   (in cluster vs not, positive vs not), odds ratio, and Benjamini-Hochberg q-values over
   all cells. A cell is flagged ``enriched``/``depleted`` at q < alpha.
2. Agreement with a single pathology label per image: ARI, NMI and purity against the
   *single-label* images. Choice (documented in `single_label_classes`): an image belongs
   to class T when T is its only positive target; an image with none of the chosen targets
   forms its own class ``NONE_CLASS`` ("no target finding" -- it may still carry other NIH
   findings); images with two or more targets are left out, since one class cannot name them.
3. Confounds: the same association statistics of the clusters against view position, sex,
   age band and follow-up band, ranked next to the pathology attributes, so a user sees when
   clusters follow acquisition technique rather than disease.

Cramer's V is bias-corrected (Bergsma 2013): the raw V of an attribute with many categories
is inflated by chance (expected chi-square ~ its degrees of freedom), which would otherwise
favour the 16-category "label set" over the 2-category "sex" for no reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, false_discovery_control, fisher_exact
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from cxrlab.errors import DataError

NONE_CLASS = "no target finding"

#: cohort.csv column -> the raw NIH Data_Entry column accepted as its alias.
META_ALIASES = {
    "view": "View Position",
    "sex": "Patient Gender",
    "age": "Patient Age",
    "follow_up": "Follow-up #",
}
AGE_BINS = (0, 20, 40, 60, 80)  # lower edges: <20, 20-39, 40-59, 60-79, 80+
FOLLOW_UP_BINS = (0, 1, 5, 20)  # lower edges: 0 (first visit), 1-4, 5-19, 20+


def bh_adjust(p_values) -> np.ndarray:
    """Benjamini-Hochberg q-values (scipy's `false_discovery_control`); NaN stays NaN."""
    p = np.asarray(p_values, dtype=float)
    q = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = false_discovery_control(p[ok], method="bh")
    return q


def _check_labels(clusters, Y, targets) -> tuple[np.ndarray, np.ndarray]:
    clusters = np.asarray(clusters)
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape != (len(clusters), len(targets)):
        raise DataError(
            f"label matrix of shape {Y.shape} does not match {len(clusters)} cluster labels "
            f"and {len(targets)} targets; expected ({len(clusters)}, {len(targets)})"
        )
    if not np.isin(Y, (0, 1)).all():
        raise DataError("label matrix must hold only 0/1 values")
    return clusters, Y.astype(np.int64)


def prevalence_table(clusters, Y, targets: Sequence[str]) -> pd.DataFrame:
    """Rows = clusters, columns = ``n`` then each target's fraction of positives in the cluster."""
    clusters, Y = _check_labels(clusters, Y, targets)
    ids = np.unique(clusters)
    rows = [[int((clusters == c).sum()), *Y[clusters == c].mean(axis=0)] for c in ids]
    table = pd.DataFrame(rows, index=pd.Index(ids, name="cluster"), columns=["n", *targets])
    return table.astype({"n": int})


def enrichment_table(clusters, Y, targets: Sequence[str], alpha: float = 0.05) -> pd.DataFrame:
    """One row per (cluster, target): counts, prevalences, Fisher odds ratio, p, BH q, flag."""
    clusters, Y = _check_labels(clusters, Y, targets)
    rows = []
    for c in np.unique(clusters):
        inside = clusters == c
        for j, target in enumerate(targets):
            a = int(Y[inside, j].sum())  # in cluster, positive
            b = int(inside.sum()) - a  # in cluster, negative
            c_ = int(Y[~inside, j].sum())  # elsewhere, positive
            d = int((~inside).sum()) - c_  # elsewhere, negative
            odds, p = fisher_exact([[a, b], [c_, d]])
            rows.append(
                {
                    "cluster": int(c),
                    "target": target,
                    "n_in_cluster": a + b,
                    "positives_in_cluster": a,
                    "prevalence_in_cluster": a / max(a + b, 1),
                    "prevalence_elsewhere": c_ / max(c_ + d, 1),
                    "odds_ratio": float(odds),
                    "p_value": float(p),
                }
            )
    table = pd.DataFrame(rows)
    table["q_value"] = bh_adjust(table["p_value"])
    significant = table["q_value"] < alpha
    higher = table["prevalence_in_cluster"] > table["prevalence_elsewhere"]
    table["flag"] = np.where(significant, np.where(higher, "enriched", "depleted"), "")
    return table


def single_label_classes(Y, targets: Sequence[str], include_none: bool = True):
    """(mask, classes): images with exactly one positive target get that target's name;
    with `include_none`, images with no positive target get `NONE_CLASS`. `classes` has one
    entry per True in `mask`."""
    Y = np.asarray(Y)
    n_pos = Y.sum(axis=1)
    mask = (n_pos == 1) | ((n_pos == 0) if include_none else False)
    names = np.asarray(list(targets) + [NONE_CLASS], dtype=object)
    index = np.where(n_pos == 1, Y.argmax(axis=1), len(targets))
    return mask, names[index[mask]]


def purity(clusters, classes) -> float:
    """Fraction of images in their cluster's most common class (1.0 = every cluster is pure)."""
    table = pd.crosstab(np.asarray(clusters), np.asarray(classes))
    if table.values.sum() == 0:
        raise DataError("purity of zero images is undefined")
    return float(table.values.max(axis=1).sum() / table.values.sum())


def cramers_v(clusters, attribute) -> dict:
    """Chi-square test of independence and bias-corrected Cramer's V (0 = none, 1 = perfect)."""
    table = pd.crosstab(np.asarray(clusters), np.asarray(attribute)).values
    n = table.sum()
    r, k = table.shape
    if r < 2 or k < 2:
        return {
            "cramers_v": float("nan"),
            "cramers_v_raw": float("nan"),
            "chi2": float("nan"),
            "p_value": float("nan"),
            "dof": 0,
        }
    chi2, p, dof, expected = chi2_contingency(table, correction=False)
    p, p_method = _chi2_p(clusters, attribute, p, expected)
    phi2 = chi2 / n
    raw = np.sqrt(phi2 / (min(r, k) - 1))
    # Bergsma (2013): subtract the chance expectation of phi^2 and shrink r, k accordingly.
    phi2c = max(0.0, phi2 - (k - 1) * (r - 1) / (n - 1))
    rc, kc = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
    denom = min(kc - 1, rc - 1)
    corrected = np.sqrt(phi2c / denom) if denom > 0 else float("nan")
    return {
        "cramers_v": float(corrected),
        "cramers_v_raw": float(raw),
        "chi2": float(chi2),
        "p_value": float(p),
        "p_method": p_method,
        "dof": int(dof),
    }


#: Cochran's rule: the chi-square approximation needs every expected count >= 1 and at most
#: 20% of them below 5; otherwise the p-value comes from permutations of the attribute.
N_PERMUTATIONS = 1999


def _chi2_p(clusters, attribute, p_asymptotic: float, expected: np.ndarray) -> tuple:
    small = float(np.mean(expected < 5))
    if expected.min() >= 1 and small <= 0.2:
        return float(p_asymptotic), "chi-square"
    p = permutation_chi2_p(clusters, attribute, N_PERMUTATIONS)
    why = f"{small:.0%} of expected counts < 5"
    return p, f"permutation ({N_PERMUTATIONS} shuffles; chi-square invalid: {why})"


def permutation_chi2_p(clusters, attribute, n_permutations: int, seed: int = 0) -> float:
    """Monte Carlo permutation p of the chi-square statistic: shuffle `attribute` against
    `clusters` (fixed margins), p = (1 + #{chi2* >= chi2}) / (1 + n_permutations)."""
    rows, row_codes = np.unique(np.asarray(clusters), return_inverse=True)
    cols, col_codes = np.unique(np.asarray(attribute).astype(str), return_inverse=True)
    r, k, n = len(rows), len(cols), len(row_codes)
    expected = np.outer(np.bincount(row_codes), np.bincount(col_codes)) / n  # same every time
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.tile(col_codes, (n_permutations + 1, 1)), axis=1)
    shuffled[0] = col_codes  # row 0 is the observed table
    flat = (np.arange(n_permutations + 1)[:, None] * r * k + row_codes * k + shuffled).ravel()
    counts = np.bincount(flat, minlength=(n_permutations + 1) * r * k)
    counts = counts.reshape(n_permutations + 1, r, k)
    stat = ((counts - expected) ** 2 / expected).sum(axis=(1, 2))
    return float((1 + np.sum(stat[1:] >= stat[0] - 1e-9)) / (1 + n_permutations))


def association(clusters, attribute) -> dict:
    """ARI, NMI, purity and Cramer's V of clusters against one categorical attribute."""
    clusters, attribute = np.asarray(clusters), np.asarray(attribute).astype(str)
    if len(clusters) != len(attribute):
        raise DataError(f"{len(clusters)} cluster labels but {len(attribute)} attribute values")
    if len(clusters) == 0:
        raise DataError("no images to compare clusters with")
    return {
        "n": int(len(clusters)),
        "n_categories": int(len(np.unique(attribute))),
        "ari": float(adjusted_rand_score(attribute, clusters)),
        "nmi": float(normalized_mutual_info_score(attribute, clusters)),
        "purity": purity(clusters, attribute),
        **cramers_v(clusters, attribute),
    }


def metadata_factors(meta: pd.DataFrame) -> dict[str, np.ndarray]:
    """Categorical acquisition/patient attributes present in `meta`: view, sex, age and
    follow-up bands. Missing columns are left out (the caller reports which)."""
    out: dict[str, np.ndarray] = {}
    for name in ("view", "sex"):
        col = _column(meta, name)
        if col is not None:
            out[name] = col.fillna("unknown").astype(str).to_numpy()
    for name, bins in (("age", AGE_BINS), ("follow_up", FOLLOW_UP_BINS)):
        col = _column(meta, name)
        if col is not None:
            out[f"{name}_band"] = _band(pd.to_numeric(col, errors="coerce"), bins)
    return out


def _column(meta: pd.DataFrame, name: str) -> pd.Series | None:
    for key in (name, META_ALIASES[name]):
        if key in meta.columns:
            return meta[key].reset_index(drop=True)
    return None


def _band(values: pd.Series, edges: Sequence[int]) -> np.ndarray:
    """Label each value by the band of `edges` (lower bounds) it falls in, e.g. ``40-59``."""
    labels = [
        f"{lo}-{hi - 1}" if hi - lo > 1 else f"{lo}"
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]
    labels.append(f"{edges[-1]}+")
    cut = pd.cut(values, bins=[*edges, np.inf], right=False, labels=labels)
    return cut.astype(object).where(cut.notna(), "unknown").astype(str).to_numpy()


def confound_table(clusters, Y, targets: Sequence[str], meta: pd.DataFrame | None) -> pd.DataFrame:
    """Association of clusters with pathology and metadata attributes, strongest first.

    Pathology rows: the single-label class (on single-label images), the set of positive
    targets (e.g. ``Effusion|Infiltration``, on all images) and each target alone (positive
    vs not). Metadata rows: whatever of view, sex, age band, follow-up band `meta` holds.
    Ranked by bias-corrected Cramer's V; ARI and NMI are given alongside.
    """
    clusters, Y = _check_labels(clusters, Y, targets)
    mask, classes = single_label_classes(Y, targets)
    rows = []
    if mask.any():
        rows.append(_row("pathology: single-label class", "pathology", clusters[mask], classes))
    names = np.asarray(targets, dtype=object)
    label_set = ["|".join(names[row.astype(bool)]) or NONE_CLASS for row in Y]
    rows.append(_row("pathology: target label set", "pathology", clusters, label_set))
    for j, target in enumerate(targets):
        rows.append(_row(f"pathology: {target}", "pathology", clusters, Y[:, j]))
    if meta is not None:
        if len(meta) != len(clusters):
            raise DataError(f"metadata has {len(meta)} rows but there are {len(clusters)} images")
        for name, values in metadata_factors(meta).items():
            rows.append(_row(name, "metadata", clusters, values))
    table = pd.DataFrame(rows)
    return table.sort_values("cramers_v", ascending=False, na_position="last").reset_index(
        drop=True
    )


def _row(attribute: str, kind: str, clusters, values) -> dict:
    return {"attribute": attribute, "kind": kind, **association(clusters, values)}


def strongest_explanation(confounds: pd.DataFrame) -> dict:
    """Which attribute, and which kind (pathology or metadata), the clusters follow most."""
    ranked = confounds.dropna(subset=["cramers_v"])
    if ranked.empty:
        return {"attribute": None, "kind": None, "best_pathology": None, "best_metadata": None}
    best = ranked.iloc[0]
    out = {"attribute": best["attribute"], "kind": best["kind"], "cramers_v": best["cramers_v"]}
    for kind in ("pathology", "metadata"):
        sub = ranked[ranked["kind"] == kind]
        out[f"best_{kind}"] = (
            None
            if sub.empty
            else {
                "attribute": sub.iloc[0]["attribute"],
                "cramers_v": float(sub.iloc[0]["cramers_v"]),
            }
        )
    return out

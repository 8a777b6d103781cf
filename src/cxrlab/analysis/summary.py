"""The analysis end to end on one feature array, and its plain-words report.

`run_analysis` scales, projects (PCA) and clusters (K-Means) the features, relates clusters
to pathology and to acquisition metadata, probes each layer linearly, draws the figures and
writes ``analysis.json`` (every number), ``summary.md`` (the same in words), CSV tables and
figures into `out_dir` (``RUN_DIR/analysis/<name>/`` by contract).

The interpretive words (e.g. "ARI 0.002: no correspondence") follow stated rules of thumb,
so a reader can disagree with the wording while the numbers stay in ``analysis.json``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.analysis import correspondence as corr
from cxrlab.analysis import figures
from cxrlab.analysis.embedding import ClusterAnalysis, thread_limit
from cxrlab.analysis.probe import probe_layers
from cxrlab.errors import DataError
from cxrlab.labels import IMAGE_INDEX, PATIENT_ID, parse_finding_labels, parse_targets
from cxrlab.rundir import ANALYSIS_FILE, ANALYSIS_SUMMARY

log = logging.getLogger(__name__)

#: Rules of thumb used for words only: (upper bound, phrase), first match wins.
ARI_WORDS = (
    (0.05, "essentially no correspondence"),
    (0.2, "weak correspondence"),
    (0.5, "moderate correspondence"),
    (math.inf, "strong correspondence"),
)
#: Kaufman & Rousseeuw's reading of the average silhouette width.
SILHOUETTE_WORDS = (
    (0.25, "no substantial cluster structure"),
    (0.5, "weak structure"),
    (0.7, "reasonable structure"),
    (math.inf, "strong structure"),
)
#: Conventional reading of Cramér's V (Cohen's 0.1 / 0.3 / 0.5 for effect sizes).
V_WORDS = ((0.1, "negligible"), (0.3, "weak"), (0.5, "moderate"), (math.inf, "strong"))


def _words(value: float | None, table) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    return next(phrase for bound, phrase in table if value < bound)


def label_frame(meta: pd.DataFrame, targets: Sequence[str]) -> np.ndarray:
    """(N, K) 0/1 matrix from the target columns of `meta` (cohort.csv layout)."""
    missing = [t for t in targets if t not in meta.columns]
    if missing:
        raise DataError(
            f"metadata lacks target column(s) {missing}; "
            f"it has: {', '.join(map(str, meta.columns))}"
        )
    Y = meta[list(targets)].to_numpy()
    if not np.isin(Y, (0, 1)).all():
        raise DataError(f"target columns {list(targets)} must hold only 0/1 values")
    return Y.astype(np.int64)


def _n_findings(meta: pd.DataFrame, Y: np.ndarray) -> tuple[str, np.ndarray]:
    if "Finding Labels" in meta.columns:
        counts = [
            len(parse_finding_labels(t, where=f"row {i}"))
            for i, t in enumerate(meta["Finding Labels"])
        ]
        return "number of findings", np.asarray(counts)
    return "number of target findings", Y.sum(axis=1)


def _ids(meta: pd.DataFrame) -> np.ndarray:
    if IMAGE_INDEX in meta.columns:
        return meta[IMAGE_INDEX].astype(str).to_numpy()
    return np.asarray([f"row {i}" for i in range(len(meta))])


def run_analysis(
    features: np.ndarray,
    meta: pd.DataFrame,
    targets: str | Sequence[str],
    out_dir: str | Path,
    *,
    scaling: str = "none",
    k: int | None = None,
    k_range: tuple[int, int] = (2, 10),
    n_components: int = 50,
    seed: int = 0,
    layer: str = "features",
    probe_features: Mapping[str, np.ndarray] | None = None,
    alpha: float = 0.05,  # BH false discovery rate for enrichment flags
    n_splits: int = 5,
    n_threads: int | None = None,  # BLAS/OpenMP cap (1 is fastest on a busy, shared machine)
) -> dict:
    """PCA + K-Means + enrichment + confounds + linear probes + figures + summary, into out_dir.

    `meta` is row-aligned with `features` and holds the target columns (0/1) and, where
    available, ``Image Index``, ``Patient ID`` (groups the probe's folds), ``Finding Labels``,
    ``view``, ``sex``, ``age``, ``follow_up``. `probe_features` maps layer names to arrays to
    probe (default: `features` alone, named `layer`). Returns what ``analysis.json`` holds.
    """
    targets = parse_targets(targets)
    meta = meta.reset_index(drop=True)
    if len(meta) != len(features):
        raise DataError(f"metadata has {len(meta)} rows but features have {len(features)}")
    Y = label_frame(meta, targets)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"k_range": k_range, "k": k, "scaling": scaling, "n_components": n_components}
    groups = meta[PATIENT_ID].to_numpy() if PATIENT_ID in meta.columns else None
    with thread_limit(n_threads):
        ca = ClusterAnalysis(**params, random_state=seed).fit(features)
        tables = _correspondence(ca.labels_, Y, targets, meta, alpha)
        probes = probe_layers(
            probe_features or {layer: features},
            Y,
            targets,
            groups,
            n_splits=n_splits,
            random_state=seed,
        )
    _write_tables(out_dir, meta, ca, tables, probes)
    files = _draw(out_dir, meta, ca, Y, targets, tables, seed)
    result = _result(ca, tables, probes, targets, layer, alpha, groups is not None)
    result["files"] = sorted(str(p.relative_to(out_dir)) for p in files)
    write_outputs(result, out_dir)
    return result


def _correspondence(labels, Y, targets, meta, alpha) -> dict:
    mask, classes = corr.single_label_classes(Y, targets)
    agreement = corr.association(labels[mask], classes) if mask.any() else None
    confounds = corr.confound_table(labels, Y, targets, meta)
    return {
        "prevalence": corr.prevalence_table(labels, Y, targets),
        "enrichment": corr.enrichment_table(labels, Y, targets, alpha),
        "agreement": agreement,
        "class_counts": pd.Series(classes).value_counts().to_dict(),
        "confounds": confounds,
        "strongest": corr.strongest_explanation(confounds),
    }


def _write_tables(out_dir: Path, meta, ca: ClusterAnalysis, tables: dict, probes) -> None:
    n_pc = min(3, ca.n_components_)
    assign = pd.DataFrame({IMAGE_INDEX: _ids(meta), "cluster": ca.labels_})
    for i in range(n_pc):
        assign[f"PC{i + 1}"] = ca.embedding_[:, i]
    assign.to_csv(out_dir / "clusters.csv", index=False)
    tables["prevalence"].to_csv(out_dir / "prevalence.csv")
    tables["enrichment"].to_csv(out_dir / "enrichment.csv", index=False)
    tables["confounds"].to_csv(out_dir / "confounds.csv", index=False)
    probes.drop(columns=["fold_aurocs", "repeat_aurocs"], errors="ignore").to_csv(
        out_dir / "probe.csv", index=False
    )


def _panels(meta, Y, targets, labels) -> dict[str, np.ndarray]:
    panels = {f"{t}": np.where(Y[:, j] == 1, "positive", "negative") for j, t in enumerate(targets)}
    name, counts = _n_findings(meta, Y)
    panels[name] = np.minimum(counts, 3).astype(str)
    panels[name] = np.where(counts >= 3, "3+", panels[name])
    factors = corr.metadata_factors(meta)
    for key in ("view", "sex", "age_band"):
        if key in factors:
            panels[key] = factors[key]
    panels["cluster"] = labels.astype(str)
    return panels


def _draw(out_dir: Path, meta, ca: ClusterAnalysis, Y, targets, tables, seed) -> list[Path]:
    hover = _ids(meta)
    if "Finding Labels" in meta.columns:
        labels = meta["Finding Labels"].astype(str)
        hover = [f"{i}<br>{f}" for i, f in zip(hover, labels, strict=True)]
    panels = _panels(meta, Y, targets, ca.labels_)
    return figures.draw_all(out_dir, ca, panels, hover, tables, seed=seed)


def _result(ca, tables, probes, targets, layer, alpha, grouped) -> dict:
    enrich = tables["enrichment"]
    return {
        "layer": layer,
        "targets": list(targets),
        "embedding": ca.summary(),
        "alpha": alpha,
        "prevalence": tables["prevalence"].reset_index().to_dict(orient="records"),
        "enrichment": enrich.to_dict(orient="records"),
        "significant_cells": enrich[enrich["flag"] != ""].to_dict(orient="records"),
        "single_label": {
            "agreement": tables["agreement"],
            "class_counts": tables["class_counts"],
            "definition": "exactly one positive target, or none of the targets "
            f"('{corr.NONE_CLASS}'); multi-target images excluded",
        },
        "confounds": tables["confounds"].to_dict(orient="records"),
        "strongest_explanation": tables["strongest"],
        "probe": probes.to_dict(orient="records"),
        "probe_grouped_by_patient": grouped,
    }


def jsonable(obj):
    """Plain JSON types: numpy scalars/arrays unwrapped, NaN and +-inf become null."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_outputs(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``analysis.json`` and ``summary.md`` for `result` (from `run_analysis`)."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / ANALYSIS_FILE, out_dir / ANALYSIS_SUMMARY
    json_path.write_text(json.dumps(jsonable(result), indent=2, allow_nan=False) + "\n")
    md_path.write_text(summary_markdown(result))
    log.info("wrote %s and %s", json_path, md_path)
    return json_path, md_path


def _fmt(value, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def summary_markdown(result: dict) -> str:
    """The analysis in plain words, every claim with its number (from `run_analysis`)."""
    parts = [
        f"# Unsupervised analysis of layer `{result['layer']}`\n",
        _md_answer(result),
        _md_pca(result["embedding"]),
        _md_clusters(result["embedding"]),
        _md_enrichment(result),
        _md_agreement(result["single_label"]),
        _md_confounds(result["confounds"], result["strongest_explanation"]),
        _md_probe(result["probe"], result["probe_grouped_by_patient"]),
    ]
    return "\n".join(parts)


def _md_answer(r: dict) -> str:
    agree = r["single_label"]["agreement"] or {}
    ari = agree.get("ari")
    best = r["strongest_explanation"]
    defined = [p for p in r["probe"] if p["auroc_mean"] is not None]
    lines = [
        "## Answer: do these features group X-rays by pathology?\n",
        f"- Clusters vs single-label pathology: ARI = {_fmt(ari)} ({_words(ari, ARI_WORDS)}).",
        _md_strongest(best),
    ]
    if defined:
        top = max(defined, key=lambda p: p["auroc_mean"])
        lines.append(
            f"- A linear probe separates pathology best for {top['target']} on "
            f"`{top['layer']}`: AUROC {_fmt(top['auroc_mean'])} ± {_fmt(top['auroc_sd'])}"
            " (0.5 = chance)."
        )
    return "\n".join(lines) + "\n"


def _md_strongest(best: dict) -> str:
    if best.get("attribute") is None:
        return "- No attribute could be compared with the clusters."
    v = best["cramers_v"]
    return (
        f"- Of the attributes checked, the clusters are most associated with "
        f"**{best['attribute']}** ({best['kind']}): Cramér's V = {_fmt(v)}, "
        f"{_words(v, V_WORDS)} (<0.1 negligible, 0.1-0.3 weak, 0.3-0.5 moderate, >0.5 strong)."
    )


def _md_pca(e: dict) -> str:
    evr = e["explained_variance_ratio"]
    cum = e["cumulative_explained_variance"]
    first = ", ".join(f"PC{i + 1} {100 * v:.1f}%" for i, v in enumerate(evr[:5]))
    text = (
        f"## PCA\n\n{e['n_samples']} images × {e['n_channels']} channels, scaling "
        f"`{e['scaling']}`, {e['n_components']} components. Explained variance: {first}; "
        f"first {min(5, len(cum))} together {100 * cum[min(5, len(cum)) - 1]:.1f}%, all "
        f"{len(cum)} together {100 * cum[-1]:.1f}%.\n"
    )
    if evr[0] >= 0.5 and e["top_channel_variance_share"] >= 0.5:
        text += (
            f"\n**Caution:** one channel (index {e['top_channel']}) holds "
            f"{100 * e['top_channel_variance_share']:.1f}% of all variance under scaling "
            f"`{e['scaling']}`, so PC1 mostly measures that channel's magnitude — a scale "
            "effect, not structure among images. Compare `robust` scaling.\n"
        )
    elif evr[0] >= 0.5:
        text += (
            "\n**Note:** PC1 alone carries over half the variance; one direction (often "
            "overall activation level) dominates. Check what it follows in the scatter "
            "plots coloured by view and sex.\n"
        )
    return text


def _md_clusters(e: dict) -> str:
    sil = dict(zip(e["k_values"], e["silhouette"], strict=True))
    s_k = sil.get(e["k"])
    if e["k_source"] == "silhouette":
        why = (
            f"the silhouette maximum over k = {e['k_values'][0]}..{e['k_values'][-1]} "
            f"(computed on a seeded subsample of {e['silhouette_sample']} images)"
        )
    else:
        best = max((k for k in sil if sil[k] is not None), key=lambda k: sil[k], default=None)
        why = f"fixed by the user (the silhouette maximum in range would be k = {best})"
    scan = " | ".join(f"k={k}: {_fmt(s, '.3f')}" for k, s in sil.items())
    return (
        f"## Clusters\n\nK-Means (n_init = {e['n_init']}, random_state = {e['random_state']})"
        f" on the PCA scores: **k = {e['k']}**, {why}. Silhouette at k = {e['k']}: "
        f"{_fmt(s_k)} — {_words(s_k, SILHOUETTE_WORDS)} (Kaufman & Rousseeuw: <0.25 none, "
        f"0.25-0.5 weak, 0.5-0.7 reasonable, >0.7 strong). Cluster sizes: "
        f"{e['cluster_sizes']}.\n\nSilhouette by k: {scan}.\n"
    )


def _md_enrichment(r: dict) -> str:
    cells = r["significant_cells"]
    head = (
        f"## Pathology enrichment\n\nFisher's exact test per cluster × pathology cell, "
        f"Benjamini–Hochberg over all {len(r['enrichment'])} cells, flagged at q < "
        f"{r['alpha']}.\n"
    )
    if not cells:
        return head + "\nNo cluster is enriched or depleted for any target.\n"
    lines = [
        f"- cluster {c['cluster']}: {c['target']} **{c['flag']}** — "
        f"{100 * c['prevalence_in_cluster']:.0f}% positive vs "
        f"{100 * c['prevalence_elsewhere']:.0f}% elsewhere (odds ratio "
        f"{_fmt(c['odds_ratio'], '.2f')}, q = {c['q_value']:.2g})"
        for c in cells
    ]
    return head + "\n" + "\n".join(lines) + "\n"


def _md_agreement(s: dict) -> str:
    a = s["agreement"]
    if a is None:
        return "## Agreement with pathology\n\nNo single-label images: not computed.\n"
    counts = s["class_counts"]
    baseline = max(counts.values()) / sum(counts.values())
    classes = ", ".join(f"{k} {v}" for k, v in counts.items())
    return (
        f"## Agreement with pathology\n\nOn {a['n']} single-label images ({s['definition']};"
        f" {classes}): ARI = {_fmt(a['ari'])} ({_words(a['ari'], ARI_WORDS)}; 0 is chance, "
        f"1 identical partitions — ARI near 0 means the clusters do not correspond to "
        f"pathology), NMI = {_fmt(a['nmi'])} (0 = no shared information, 1 = identical), "
        f"purity = {_fmt(a['purity'])} against {baseline:.3f} for a single cluster (the "
        f"largest class's share), i.e. {a['purity'] - baseline:+.3f} above that baseline.\n"
    )


def _perm(row: dict) -> str:
    """Mark a permutation p (the chi-square approximation failed for this table)."""
    return " (permutation)" if str(row.get("p_method", "")).startswith("permutation") else ""


def _md_confounds(rows: list[dict], best: dict) -> str:
    table = ["| attribute | kind | images | Cramér's V | ARI | NMI | p |", "|---" * 7 + "|"]
    for r in rows:
        table.append(
            f"| {r['attribute']} | {r['kind']} | {r['n']} | {_fmt(r['cramers_v'])} | "
            f"{_fmt(r['ari'])} | {_fmt(r['nmi'])} | {_fmt(r['p_value'], '.2g')}{_perm(r)} |"
        )
    bp, bm = best.get("best_pathology"), best.get("best_metadata")
    if bm is None or bp is None:
        verdict = "Only one kind of attribute was available, so no comparison is made."
    elif max(bp["cramers_v"], bm["cramers_v"]) < 0.1:
        verdict = "Neither pathology nor metadata is associated with the clusters (all V < 0.1)."
    elif bm["cramers_v"] > bp["cramers_v"]:
        verdict = (
            f"**Metadata explains the clusters better than pathology** "
            f"({_words(bm['cramers_v'], V_WORDS)} association): {bm['attribute']}"
            f" (V = {bm['cramers_v']:.3f}) vs best pathology attribute "
            f"{bp['attribute']} (V = {bp['cramers_v']:.3f}). The clusters reflect how "
            "the X-ray was taken or who the patient is more than the disease."
        )
    else:
        verdict = (
            f"**Pathology explains the clusters better than metadata** "
            f"({_words(bp['cramers_v'], V_WORDS)} association): "
            f"{bp['attribute']} (V = {bp['cramers_v']:.3f}) vs {bm['attribute']} "
            f"(V = {bm['cramers_v']:.3f})."
        )
    return (
        "## Pathology or acquisition?\n\nAssociation of the clusters with each attribute, "
        "strongest first (Cramér's V bias-corrected; 0 = independent, 1 = determined).\n\n"
        + "\n".join(table)
        + f"\n\n{verdict}\n"
    )


def _md_probe(rows: list[dict], grouped: bool) -> str:
    cv = "patient-grouped stratified" if grouped else "stratified"
    header = "| layer | target | AUROC (mean ± sd over repeats) | folds used | positives |"
    table = [header, "|---|---|---|---|---|"]
    for r in rows:
        sd = "—" if r.get("auroc_sd") is None else f"{r['auroc_sd']:.3f}"
        auc = (
            f"{r['auroc_mean']:.3f} ± {sd}"
            if r["auroc_mean"] is not None
            else f"undefined: {r['reason']}"
        )
        folds = f"{r['n_folds_used']} of {r['n_splits'] * r.get('n_repeats', 1)}"
        table.append(f"| {r['layer']} | {r['target']} | {auc} | {folds} | {r['n_positive']} |")
    repeats = rows[0].get("n_repeats", 1) if rows else ""
    return (
        f"## Linear probes\n\nLogistic regression on standardised features, {cv} "
        f"{rows[0]['n_splits'] if rows else ''}-fold cross-validation repeated {repeats} times "
        "with different fold assignments; mean and sd over the repeats (0.5 = chance).\n\n"
        + "\n".join(table)
        + "\n"
    )

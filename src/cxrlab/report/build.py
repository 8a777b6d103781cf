"""`build_report(run_dir)`: one self-contained `report.html` from a run directory's artifacts.

Offline by design: CSS is inline, there is no external script, font or stylesheet, and every
figure is embedded as a base64 PNG data URI. The one exception is the interactive 3-D PCA of
the analysis stage: plotly.js adds ~3.5 MB per plot, so by default it is *linked* relatively
(`analysis/<name>/pca_3d.html`, opened from the run directory) while its static PNG is
embedded; `embed_interactive=True` embeds it once per analysis in an `<iframe srcdoc>` so the
report file alone carries everything.

Sections whose stage has not run render a "not run" note with the command that makes them.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from cxrlab.report import card, summary, views
from cxrlab.report.collect import collect_run
from cxrlab.rundir import RunDir
from cxrlab.runinfo import write_atomic

log = logging.getLogger(__name__)

WIDE_PX = 1600  # figures at least this wide (multi-panel) span both columns of a grid
SECTIONS = (
    ("summary", "Summary"),
    ("cohort", "Cohort"),
    ("training", "Training"),
    ("metrics", "Metrics"),
    ("comparison", "Model comparison"),
    ("analysis", "Unsupervised analysis"),
    ("explain", "Grad-CAM gallery"),
    ("card", "Model card"),
)
FIGURE_CAPTIONS = {
    "roc": "ROC curves per class (diagonal = chance)",
    "pr": "Precision-recall curves per class (dashed = prevalence, the chance level)",
    "confusion": "Confusion matrices at the thresholds chosen on validation",
    "reliability": "Reliability diagrams (calibration; diagonal = perfectly calibrated; the"
    " number at each point is its bin's image count)",
    "auroc_bars": "AUROC per class with 95% CI, all models",
    "training": "Training curves: losses and validation AUROC per epoch",
    "pca_variance": "PCA explained variance",
    "pca_scatter": "PCA scatter plots coloured by pathology and metadata",
    "pca_3d": "PCA 3-D view by cluster (static; see the interactive version)",
    "k_selection": "Choice of k: silhouette and inertia by k",
    "enrichment_heatmap": "Pathology prevalence per cluster (enriched/depleted cells flagged)",
    "confounds": "Cluster association with pathology vs acquisition metadata (Cramér's V)",
}


def build_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    split: str = "test",
    embed_interactive: bool = False,
) -> Path:
    """Write the HTML report of `run_dir` (default `RUN_DIR/report.html`) and return its path."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else RunDir(run_dir).report_html
    data = collect_run(run_dir, split)
    page = Page(run_dir, out.parent, embed_interactive)
    text = render(page.context(data))
    write_atomic(out, text)
    log.info("wrote %s (%.1f MB, %d figures embedded)", out, len(text) / 1e6, page.n_images)
    return out


def render(context: dict) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("cxrlab.report", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ci"] = ci_html
    env.filters["signed_ci"] = signed_ci
    env.filters["p"] = summary.fmt_p
    env.filters["num"] = _num
    env.filters["pct"] = views.pct
    return env.get_template("page.html").render(**context)


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


#: `0.812 [0.790, 0.834]` (also signed, for ΔAUROC) as written by `cxrlab.evaluate.tables`.
_CI = re.compile(r"([+-]?\d+\.\d+) (\[[+-]?\d+\.\d+, [+-]?\d+\.\d+\])")


def ci_spans(text: str) -> str:
    """Put each `[low, high]` after an estimate on its own small line (escaped HTML in/out)."""
    return _CI.sub(r'\1<span class="ci">\2</span>', text)


def signed_ci(entry) -> Markup:
    """`+0.001 [-0.028, +0.031]` for a difference; `—` without an interval."""
    if not entry or entry.get("estimate") is None:
        return Markup("—")
    text = f"{entry['estimate']:+.3f}"
    if entry.get("low") is not None and entry.get("high") is not None:
        text += f'<span class="ci">[{entry["low"]:+.3f}, {entry["high"]:+.3f}]</span>'
    return Markup(text)


def ci_html(entry) -> Markup:
    return Markup(ci_spans(str(Markup.escape(summary.fmt_ci(entry)))))


def frame_html(frame: pd.DataFrame | None, index: bool = True) -> Markup | None:
    """A DataFrame as an escaped HTML table; index levels become the first columns."""
    if frame is None:
        return None
    if index:
        frame = frame.reset_index()
    text = frame.to_html(classes="data", border=0, escape=True, na_rep="—", index=False)
    return Markup(ci_spans(text.replace(' style="text-align: right;"', "")))


def markdown_html(text: str | None, shift: int = 2) -> Markup | None:
    """Markdown (analysis summary.md) as HTML; raw HTML in the source is escaped, headings
    are demoted by `shift` levels to sit under the report's own."""
    if not text:
        return None
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + shift)}"
    return Markup(md.renderer.render(tokens, md.options, {}))


def named_paired_table(paired: dict, a: str, b: str) -> pd.DataFrame:
    """`paired_table` of a paired bootstrap, its A/B columns named after the two models."""
    from cxrlab.evaluate.tables import paired_table

    return paired_table(paired).rename(
        columns={"AUROC A": f"AUROC {a}", "AUROC B": f"AUROC {b}",
                 "ΔAUROC (A - B)": "ΔAUROC [95% CI]"}
    )  # fmt: skip


class Page:
    """Turns collected artifacts into the template's context; embeds images as it goes."""

    def __init__(self, run_dir: Path, out_dir: Path, embed_interactive: bool) -> None:
        self.run_dir = run_dir
        self.out_dir = out_dir
        self.embed_interactive = embed_interactive
        self.n_images = 0

    def image(self, path: Path | None) -> str | None:
        """A PNG as a data URI (None when there is no file)."""
        if path is None or not Path(path).is_file():
            return None
        self.n_images += 1
        return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()

    def link(self, relative: Path) -> str:
        """Href of a run-directory file, relative to where the report is written."""
        target = (self.run_dir / relative).resolve()
        return Path(os.path.relpath(target, self.out_dir.resolve())).as_posix()

    def figures(self, found: dict[str, Path]) -> list[dict]:
        """Embedded figures with captions; `width` is the CSS size at which a 150-dpi PNG
        reads at print size (wide multi-panel figures then take the full row)."""
        out = []
        for stem, path in found.items():
            width = views.png_width(path)
            out.append(
                {
                    "src": self.image(path),
                    "width": round(width / 1.5),
                    "wide": width >= WIDE_PX,
                    "caption": FIGURE_CAPTIONS.get(stem, stem.replace("_", " ")),
                }
            )
        return out

    # ---- the context ------------------------------------------------------------------

    def context(self, data: dict) -> dict:
        colors = views.colors(data)
        status = {key: bool(data.get(key)) for key, _ in SECTIONS}
        status["summary"] = bool(data["metrics"])
        status["card"] = True
        status["comparison"] = bool(data["comparison"] or data["crossval"])
        return {
            "title": f"cxrlab report: {self.run_dir.resolve().name}",
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "run_dir": str(self.run_dir.resolve()),
            "split": data["split"],
            "models": [{"name": n, "color": colors[n]} for n in data["models"]],
            "colors": colors,
            "toc": [{"id": k, "title": t, "done": status[k]} for k, t in SECTIONS],
            "data_kind": card.data_kind(data),
            "summary": self.summary_view(data),
            "cohort": self.cohort_view(data["cohort"]),
            "training": self.training_view(data["training"]),
            "metrics": self.metrics_view(data["metrics"]),
            "comparison": self.comparison_view(data["comparison"]),
            "crossval": self.crossval_view(data["crossval"]),
            "analysis": self.analysis_view(data["analysis"]),
            "explain": self.explain_view(data["explain"]),
            "card": self.card_view(data),
        }

    def card_view(self, data: dict) -> dict:
        view = card.card_view(data)
        view["versions"] = frame_html(view["versions"])
        return view

    def summary_view(self, data: dict) -> dict | None:
        metrics = data["metrics"]
        if not metrics:
            return None
        targets = views.targets_of(data)
        comparison = (data["comparison"] or {}).get("summary")
        rows = summary.best_rows(metrics, targets, comparison)
        pairs = list((comparison or {}).get("pairs", {}).values())
        n_boot = pairs[0]["paired_bootstrap"].get("n_boot") if pairs else None
        return {
            "n_boot": n_boot,
            "p_floor": 2 / (n_boot + 1) if n_boot else None,
            "n_classes": len(targets),
            "rows": rows,
            "headline": summary.headline(rows),
            "baseline": summary.baseline_rows(metrics),
            "compared": comparison is not None,
            "n_models": len(metrics),
            "alpha": summary.ALPHA,
            "n_images": next(iter(metrics.values()))["result"].get("n_images"),
            "n_patients": next(iter(metrics.values()))["result"].get("n_patients"),
        }

    def cohort_view(self, cohort: dict | None) -> dict | None:
        if cohort is None:
            return None
        s = cohort["summary"]
        rows = []
        for split, part in (s.get("splits") or {}).items():
            cells = {"split": split, "images": part.get("images"), "patients": part.get("patients")}
            for t in cohort["targets"]:
                pos, prev = part.get("positives", {}).get(t), part.get("prevalence", {}).get(t)
                cells[t] = "—" if pos is None else f"{pos} ({views.pct(prev)})"
            rows.append(cells)
        table = pd.DataFrame(rows).set_index("split") if rows else None
        options = (cohort["prepare"] or {}).get("options") or {}
        return {
            "summary": s,
            "targets": cohort["targets"],
            "split_table": frame_html(table),
            "cooccurrence": views.cooccurrence_cells(cohort["cooccurrence"]),
            "demographics": frame_html(cohort["demographics"]),
            "options": {k: v for k, v in options.items() if k not in ("pathologies",)},
            "data_root": (cohort["prepare"] or {}).get("data_root"),
            "boxes": cohort["boxes"],
        }

    def training_view(self, training: dict | None) -> list[dict] | None:
        if not training:
            return None
        return [
            {
                "name": name,
                **views.training_highlights(block),
                "figure": self.image(block["figure"]),
                "curve": frame_html(views.curve_table(block["curve"]), index=False),
            }
            for name, block in training.items()
        ]

    def metrics_view(self, metrics: dict | None) -> list[dict] | None:
        if not metrics:
            return None
        from cxrlab.evaluate import tables

        out = []
        for name, block in metrics.items():
            r = block["result"]
            m, ci = r["metrics"], r["ci"]
            cal = r.get("calibration") or {}
            out.append(
                {
                    "name": name,
                    "n_images": r.get("n_images"),
                    "n_patients": r.get("n_patients"),
                    "options": r.get("options") or {},
                    "boot": {k: ci.get(k) for k in ("n_boot", "seed", "unit", "level")},
                    **{k: frame_html(f) for k, f in views.class_tables(m, ci).items()},
                    "multilabel": frame_html(tables.multilabel_table(m, ci)),
                    "rule": views.threshold_rule(r.get("thresholds") or {}),
                    "calibration": views.calibration(cal),
                    "temperature": r.get("temperature"),
                    "thresholds_on": r.get("thresholds_on") or "validation",
                    "split": r.get("split") or (r.get("options") or {}).get("split"),
                    "subgroups": frame_html(tables.subgroup_table(r["subgroups"]))
                    if r.get("subgroups")
                    else None,
                    "notes": [*r.get("notes", []), *m.get("notes", [])],
                    "figures": self.figures(block["figures"]),
                }
            )
        return out

    def crossval_view(self, blocks: list[dict] | None) -> dict | None:
        """Pooled out-of-fold AUROC per cross-validated config, and their saved pairs."""
        if not blocks:
            return None
        rows = []
        for block in blocks:
            s = block["summary"]
            cells = {t: s["pooled"]["per_class"].get(t) for t in s["targets"]}
            rows.append({"name": s["name"], "cells": cells, "macro": s["pooled"]["macro"],
                         "folds": len(s["fold_macro"]), "fold_mean": s["fold_mean"],
                         "fold_sd": s["fold_sd"], "n_images": s.get("n_images"),
                         "n_patients": s.get("n_patients")})  # fmt: skip
        pairs = [
            {"a": p["a"], "b": p["b"], "n_boot": p.get("n_boot"),
             "table": frame_html(named_paired_table(p, p["a"], p["b"]))}
            for block in blocks for p in block["pairs"]
        ]  # fmt: skip
        targets = list(dict.fromkeys(t for b in blocks for t in b["summary"]["targets"]))
        return {"rows": rows, "targets": targets, "pairs": pairs}

    def comparison_view(self, comparison: dict | None) -> dict | None:
        if comparison is None:
            return None
        from cxrlab.evaluate.tables import DELONG_COLUMN

        s = comparison["summary"]
        keys = [*s["targets"], summary.MACRO]
        best = {k: (s.get("best") or {}).get(k, {}).get("model") for k in keys}
        pairs = []
        for label, pair in s["pairs"].items():
            frame = named_paired_table(pair["paired_bootstrap"], pair["a"], pair["b"]).rename(
                columns={"p": "bootstrap p"}
            )
            frame[DELONG_COLUMN] = [
                summary.fmt_p((pair.get("delong") or {}).get(c, {}).get("p_value"))
                for c in frame.index
            ]
            pairs.append(
                {
                    "label": label,
                    "a": pair["a"],
                    "b": pair["b"],
                    "n_boot": pair["paired_bootstrap"].get("n_boot"),
                    "n_classes": len(s["targets"]),
                    "table": frame_html(frame),
                }
            )
        return {
            "summary": s,
            "columns": keys,
            "best": best,
            "pairs": pairs,
            "figures": self.figures(comparison["figures"]),
        }

    def analysis_view(self, blocks: list[dict] | None) -> list[dict] | None:
        if not blocks:
            return None
        out = []
        for block in blocks:
            r = block["result"]
            interactive = [
                {"href": self.link(rel), "name": rel.as_posix(), "srcdoc": self._srcdoc(rel)}
                for rel in block["interactive"]
            ]
            out.append(
                {
                    "name": block["name"],
                    "key": views.analysis_numbers(r),
                    "confounds": None
                    if block["summary_md"]
                    else frame_html(views.confound_frame(r)),
                    "summary": markdown_html(block["summary_md"]),
                    "figures": self.figures(block["figures"]),
                    "interactive": interactive,
                }
            )
        return out

    def _srcdoc(self, relative: Path) -> str | None:
        if not self.embed_interactive:
            return None
        return (self.run_dir / relative).read_text()

    def explain_view(self, explain: dict | None) -> list[dict] | None:
        if not explain:
            return None
        out = []
        for name, block in explain.items():
            gallery = []
            for target, groups in views.gallery_groups(block["gallery"]).items():
                items = [
                    {**views.gallery_caption(row), "group": g, "src": self.image(row["png_path"])}
                    for g, rows in groups.items()
                    for row in rows
                ]
                empty = [g for g, rows in groups.items() if not rows]
                gallery.append({"target": target, "items": items, "empty": empty})
            out.append(
                {
                    "name": name,
                    "localization": views.localization_rows(block),
                    "faithfulness": views.faithfulness_rows(block),
                    "cam": views.cam_setting(block),
                    "notes": views.explain_notes(block),
                    "gallery": gallery,
                }
            )
        return out

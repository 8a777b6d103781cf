"""Small, pure helpers that shape collected artifacts for the template: model colours,
training highlights, analysis key numbers, Grad-CAM rows, and the metric tables and cells."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cxrlab.errors import DataError
from cxrlab.evaluate.figures import PALETTE, model_colors
from cxrlab.report.collect import EXPLAIN_GROUPS as GROUPS


def colors(data: dict) -> dict[str, str]:
    """Each model's colour, as in the figures: `model_colors` over the models the comparison
    figures drew (or the evaluated ones); models without figures take the next colours."""
    comparison = (data.get("comparison") or {}).get("summary")
    drawn = list(comparison["models"]) if comparison else list(data.get("metrics") or {})
    out = model_colors(drawn or data["models"])
    rest = [n for n in data["models"] if n not in out]
    for i, name in enumerate(rest, start=len(out)):
        out[name] = PALETTE[i % len(PALETTE)]
    return out


def _weights_used(train: dict) -> str:
    rule = "final epoch" if train.get("select") == "last" else "highest val macro AUROC"
    return f"{rule}{', weight EMA' if train.get('ema') else ''}"


def _lrs(optim: dict, train: dict) -> str:
    lr, mult = optim.get("lr"), optim.get("backbone_lr_mult", 1.0)
    backbone = (
        "none" if train.get("strategy") == "linear-probe" else show(lr * mult if lr else None)
    )
    if optim.get("layer_decay") is not None and backbone != "none":
        backbone = f"x {show(optim['layer_decay'])} per layer below the head"
    return f"{show(optim.get('name'))}, {show(lr)} ({backbone})"


def training_highlights(block: dict) -> dict:
    """Config and outcome of one model's training, as (label, value) rows."""
    config, run = block["config"] or {}, block["run"] or {}
    model, train, optim = config.get("model", {}), config.get("train", {}), config.get("optim", {})
    curve = block["curve"]
    best_epoch, best_val = run.get("best_epoch"), run.get("best_val_auroc_macro")
    if best_epoch is None and curve is not None and curve["val_auroc_macro"].notna().any():
        top = curve.loc[curve["val_auroc_macro"].idxmax()]  # first of ties, as training does
        best_epoch, best_val = int(top["epoch"]), float(top["val_auroc_macro"])
    epochs_run = run.get("epochs_run", None if curve is None else len(curve))
    rows = [
        ("architecture", model.get("name")),
        ("pretrained", _pretrained(model)),
        ("strategy", train.get("strategy")),
        ("epochs run / max", f"{show(epochs_run)} / {show(train.get('epochs'))}"),
        ("epoch used (from 0)", show(best_epoch)),
        ("its val macro AUROC", show(best_val)),
        ("weights used", _weights_used(train)),
        ("stopped early", show(run.get("stopped_early"))),
        ("optimizer, lr (backbone)", _lrs(optim, train)),
        ("batch size", show(train.get("batch_size"))),
        ("image size", show(run.get("image_size"))),
        ("pos_weight", show(train.get("pos_weight"))),
        ("seed", show(train.get("seed"))),
        ("precision / devices", _trainer(run)),
    ]
    finished = run.get("finished") is not None
    return {"rows": rows, "best_epoch": best_epoch, "best_val": best_val, "finished": finished}


def _pretrained(model: Mapping) -> str:
    if model.get("weights"):
        return f"yes ({model['weights']})"
    return show(model.get("pretrained"))


def _trainer(run: Mapping) -> str:
    trainer = run.get("trainer") or {}
    return f"{trainer.get('precision', '—')} / {trainer.get('devices', '—')}"


def show(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if value == 0 or 1e-3 <= abs(value) < 1e3 else f"{value:.3g}"
    return str(value)


# ---- analysis -----------------------------------------------------------------------------


def analysis_numbers(result: dict) -> list[tuple[str, str, str]]:
    """(label, value, how to read it) rows of one analysis.json."""
    e = result.get("embedding") or {}
    sil = dict(zip(e.get("k_values", []), e.get("silhouette", []), strict=False))
    agree = (result.get("single_label") or {}).get("agreement") or {}
    best = result.get("strongest_explanation") or {}
    bp, bm = best.get("best_pathology") or {}, best.get("best_metadata") or {}
    probes = [p for p in result.get("probe", []) if p.get("auroc_mean") is not None]
    top = max(probes, key=lambda p: p["auroc_mean"]) if probes else None
    rows = [
        ("layer", str(result.get("layer")), ""),
        ("k (clusters)", show(e.get("k")), f"chosen by {e.get('k_source', '—')}"),
        (
            "silhouette at k",
            show(sil.get(e.get("k"))),
            "<0.25 none, 0.25-0.5 weak, >0.5 reasonable",
        ),
        ("ARI vs pathology", show(agree.get("ari")), "0 = chance, 1 = identical"),
        ("NMI vs pathology", show(agree.get("nmi")), "0 = no shared information"),
        ("purity vs pathology", show(agree.get("purity")), "largest class share is the floor"),
        ("best pathology attribute", _attr(bp), "Cramér's V with the clusters"),
        ("best metadata attribute", _attr(bm), "view, sex, age band, follow-up"),
        ("clusters follow", f"{best.get('attribute', '—')} ({best.get('kind', '—')})", ""),
    ]
    if top is not None:
        value = f"{top['auroc_mean']:.3f} ± {top.get('auroc_sd') or 0:.3f}"
        note = "AUROC, mean ± sd over repeated CV; 0.5 = chance"
        rows.append((f"best linear probe ({top['target']})", value, note))
    return rows


def _attr(entry: Mapping) -> str:
    if not entry:
        return "—"
    return f"{entry.get('attribute')}: V = {show(entry.get('cramers_v'))}"


def confound_frame(result: dict) -> pd.DataFrame | None:
    rows = result.get("confounds") or []
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    keep = [c for c in ("attribute", "kind", "cramers_v", "ari", "nmi", "p_value") if c in frame]
    frame = frame[keep].set_index("attribute")
    for col in ("cramers_v", "ari", "nmi"):
        if col in frame:
            frame[col] = frame[col].map(show)
    if "p_value" in frame:
        frame["p_value"] = frame["p_value"].map(lambda v: "—" if v is None else f"{v:.2g}")
    return frame.rename(columns={"cramers_v": "Cramér's V", "p_value": "p"})


# ---- Grad-CAM -----------------------------------------------------------------------------

#: localization.json per-pathology fields, in display order, with their column titles.
LOCALIZATION_COLUMNS = (
    ("n", "boxed positives"),
    ("n_boxes", "boxes"),
    ("hits", "hits"),
    ("hit_rate", "pointing-game hit rate"),
    ("random_point_hit_rate", "random point (expected)"),
    ("centre_point_hit_rate", "centre point"),
    ("mean_iou", "mean IoU"),
    ("centre_map_iou", "centre-map IoU"),
)


def localization_rows(block: dict) -> dict | None:
    """localization.json's `per_pathology` as a table (the model beside its baselines)."""
    loc = block.get("localization")
    per = loc.get("per_pathology") if isinstance(loc, Mapping) else None
    if not per:
        return None
    columns = [(k, t) for k, t in LOCALIZATION_COLUMNS if any(k in e for e in per.values())]
    rows = [[name, *[show(entry.get(k)) for k, _ in columns]] for name, entry in per.items()]
    definitions = loc.get("definitions") or {}
    return {
        "header": [t for _, t in columns],
        "rows": rows,
        "definitions": [(t, definitions[k]) for k, t in columns if k in definitions],
    }


#: Column titles of `faithfulness_rows`, after the pathology's.
FAITHFULNESS_HEADER = (
    "pairs",
    "deletion AUC (random) ↓",
    "deletion gain [95% CI]",
    "insertion AUC (random) ↑",
    "insertion gain [95% CI]",
    "",  # unstable mark
)


def faithfulness_rows(block: dict) -> dict | None:
    """localization.json's deletion/insertion summary: the map beside a random ranking, the
    gain over random with its interval and verdict, per pathology and over all targets."""
    faith = (block.get("localization") or {}).get("faithfulness")
    per = faith.get("per_pathology") if isinstance(faith, Mapping) else None
    if not per:
        return None
    rows = []
    for name, e in per.items():
        row = [name, str(e["n"])]
        for curve in ("deletion", "insertion"):
            ci, verdict = e[f"{curve}_gain"], e.get(f"{curve}_verdict") or "no interval"
            row += [
                f"{show(e[curve])} ({show(e[f'{curve}_random'])})",
                f"{show(ci['estimate'])} [{show(ci['low'])}, {show(ci['high'])}] {verdict}",
            ]
        rows.append(row + [e.get("unstable") or ""])
    definitions = faith.get("definitions") or {}
    return {
        "header": list(FAITHFULNESS_HEADER),
        "rows": rows,
        "pairs": faith.get("pairs"),
        "definitions": list(definitions.items()),
    }


def explain_notes(block: dict) -> list[str]:
    """Notes of explain.json and localization.json, and per-pathology notes (e.g. no boxes)."""
    notes = []
    for source in (block.get("localization"), block.get("index")):
        if isinstance(source, Mapping):
            notes += list(source.get("notes") or [])
    per = (block.get("localization") or {}).get("per_pathology") or {}
    notes += [e["note"] for e in per.values() if isinstance(e, Mapping) and e.get("note")]
    return list(dict.fromkeys(notes))


def gallery_groups(entries: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """explain.json entries as {pathology: {"TP": [...], "FP": [...], "FN": [...]}}."""
    out: dict[str, dict[str, list[dict]]] = {}
    for row in entries:
        groups = out.setdefault(str(row.get("pathology")), {g: [] for g in GROUPS.values()})
        group = GROUPS.get(row.get("group"), str(row.get("group")))
        groups.setdefault(group, []).append(row)
    return out


def gallery_caption(row: Mapping) -> dict:
    return {
        "image": str(row.get("image", "?")),
        "prob": row.get("probability"),
        "hit": None if row.get("hit") is None else bool(row["hit"]),
        "iou": row.get("iou"),
    }


# ---- tables and cells --------------------------------------------------------------------


def png_width(path: Path) -> int:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # reads the header only
            return image.size[0]
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path} is not a readable PNG ({exc})") from exc


def targets_of(data: dict) -> list[str]:
    if data["cohort"]:
        return data["cohort"]["targets"]
    first = next(iter(data["metrics"].values()))["result"]["metrics"]
    return list(first.get("targets") or first["per_class"])


def pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def cooccurrence_cells(frame: pd.DataFrame | None) -> dict | None:
    """Co-occurrence counts with a shade per cell (share of the row's diagonal count)."""
    if frame is None:
        return None
    rows = []
    for t in frame.index:
        diag = max(int(frame.loc[t, t]), 1)
        cells = [
            {
                "n": int(frame.loc[t, c]),
                "shade": round(int(frame.loc[t, c]) / diag, 3),
                "diag": t == c,
            }
            for c in frame.columns
        ]
        rows.append({"name": t, "cells": cells})
    return {"columns": list(frame.columns), "rows": rows}


def curve_table(curve: pd.DataFrame | None) -> pd.DataFrame | None:
    if curve is None or curve.empty:
        return None
    out = curve.copy()
    for col in out.columns:
        if col == "epoch":
            out[col] = out[col].astype(int)
        elif col == "lr":
            out[col] = out[col].map(lambda v: f"{v:.2e}")
        elif col == "seconds":
            out[col] = out[col].map(lambda v: f"{v:.1f}")
        else:
            out[col] = out[col].map(lambda v: "—" if pd.isna(v) else f"{v:.3f}")
    return out


_COUNTS = ["threshold", "TP", "FP", "TN", "FN"]


def class_tables(metrics: dict, ci: dict) -> dict:
    """Per-class scores with CIs; thresholds beside 0.5 with the confusion counts (one table
    each, so neither is too wide for a laptop screen)."""
    from cxrlab.evaluate import tables

    per_class = tables.per_class_table(metrics, ci)
    counts = per_class.loc[list(metrics["per_class"]), _COUNTS[1:]]
    thresholds = tables.threshold_table(metrics).join(counts)
    return {"per_class": per_class.drop(columns=_COUNTS), "thresholds": thresholds}


def threshold_rule(thresholds: dict) -> str:
    methods = sorted({str(v.get("method")) for v in thresholds.values() if isinstance(v, dict)})
    return ", ".join(methods) if methods else "unknown"


def calibration(cal: dict) -> dict | None:
    if not cal:
        return None
    per_class = {t: c.get("ece") for t, c in (cal.get("per_class") or {}).items()}
    return {
        "per_class": per_class,
        "macro_ece": cal.get("macro_ece"),
        "nll": cal.get("nll"),
        "n_bins": cal.get("n_bins"),
    }


def cam_setting(block: dict) -> str | None:
    """'gradcam at blocks.2' (+ the reference film, when used) from localization.json."""
    head = block.get("localization") or block.get("index") or {}
    if not head.get("method"):
        return None
    text = f"{head['method']} at {head.get('layer') or 'auto'}"
    reference = head.get("reference")
    if reference:
        films = f"{reference['images']} {reference['from']}"
        text += f"; change from a reference film: the mean of {films}"
    return text

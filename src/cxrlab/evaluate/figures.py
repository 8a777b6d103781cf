"""Evaluation figures: ROC, PR, confusion matrices, training curves, AUROC bars, reliability.

Every function draws on a `matplotlib.figure.Figure` (no pyplot, so no global backend or
state is touched), writes `<stem>.png` and `<stem>.svg` into `out_dir` and returns both
paths. Fonts are >= 10 pt. A model keeps its colour in every figure: `model_colors` maps
the sorted model names onto one fixed, colour-blind-safe palette (Okabe & Ito).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.errors import EvaluationError
from cxrlab.evaluate.calibration import reliability
from cxrlab.evaluate.metrics import check_arrays, resolve_thresholds

log = logging.getLogger(__name__)

#: Okabe-Ito colours (yellow left out: unreadable on white), then greys.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
CHANCE = "#888888"
_STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "svg.hashsalt": "cxrlab",  # stable SVG element ids: same figure, same file
}


def model_colors(names: Sequence[str]) -> dict[str, str]:
    """Fixed colour per model: sorted names take the palette in order (cycling after 7)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(names)))}


@contextmanager
def _style():
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        yield


def _figure(n_panels: int, panel: tuple[float, float] = (4.0, 4.6), max_cols: int = 4):
    from matplotlib.figure import Figure

    cols = min(n_panels, max_cols)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(panel[0] * cols, panel[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig, out_dir: str | Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    # bbox_inches="tight": legends below the axes and titles above must not be clipped.
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", pad_inches=0.15)
    fig.savefig(paths[1], metadata={"Date": None}, bbox_inches="tight", pad_inches=0.15)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


def _models(y, probs: Mapping[str, np.ndarray], targets):
    """Check every model's (N, K) probabilities against y; returns (y, {name: p}, targets)."""
    if not probs:
        raise EvaluationError("no model predictions to plot")
    checked = {}
    for name, p in probs.items():
        y_checked, checked[name], targets = check_arrays(y, p, targets)
    return y_checked, checked, targets


def _undefined(ax, y: np.ndarray, title: str) -> bool:
    """Mark a panel whose class lacks positives or negatives; True when it does."""
    n_pos = int(y.sum())
    if 0 < n_pos < y.size:
        return False
    reason = "no positives" if n_pos == 0 else "no negatives"
    ax.text(0.5, 0.5, f"undefined:\n{reason} in this split", ha="center", va="center")
    ax.set_title(title)
    return True


def plot_roc_curves(y, probs: Mapping[str, np.ndarray], targets, out_dir, stem="roc"):
    """ROC curve per class, every model on the class's axes, with the chance diagonal."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y, probs, targets = _models(y, probs, targets)
    colors = model_colors(list(probs))
    with _style():
        fig, axes = _figure(len(targets))
        for k, (ax, name) in enumerate(zip(axes, targets, strict=True)):
            if _undefined(ax, y[:, k], name):
                continue
            ax.plot([0, 1], [0, 1], ls="--", color=CHANCE, lw=1, label="chance (0.5)")
            for model, p in probs.items():
                fpr, tpr, _ = roc_curve(y[:, k], p[:, k])
                auc = roc_auc_score(y[:, k], p[:, k])
                ax.plot(fpr, tpr, color=colors[model], lw=1.8, label=f"{model} ({auc:.3f})")
            _finish(ax, name, "1 − specificity", "sensitivity")
        return _save(fig, out_dir, stem)


def plot_pr_curves(y, probs: Mapping[str, np.ndarray], targets, out_dir, stem="pr"):
    """Precision-recall curve per class, every model on one axes, prevalence as chance."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, probs, targets = _models(y, probs, targets)
    colors = model_colors(list(probs))
    with _style():
        fig, axes = _figure(len(targets))
        for k, (ax, name) in enumerate(zip(axes, targets, strict=True)):
            if _undefined(ax, y[:, k], name):
                continue
            prevalence = y[:, k].mean()
            ax.axhline(
                prevalence, ls="--", color=CHANCE, lw=1, label=f"prevalence {prevalence:.3f}"
            )
            for model, p in probs.items():
                precision, recall, _ = precision_recall_curve(y[:, k], p[:, k])
                ap = average_precision_score(y[:, k], p[:, k])
                ax.step(
                    recall,
                    precision,
                    where="post",
                    color=colors[model],
                    lw=1.8,
                    label=f"{model} (AP {ap:.3f})",
                )
            _finish(ax, name, "recall (sensitivity)", "precision")
        return _save(fig, out_dir, stem)


def _finish(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_aspect("equal")
    # Below the axes: a legend inside would hide part of some curve in some panel.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)


def plot_confusion_matrices(y, p, thresholds, targets, out_dir, stem="confusion"):
    """2x2 confusion matrix per class at its threshold: counts and % of all images."""
    y, p, targets = check_arrays(y, p, targets)
    thr = resolve_thresholds(thresholds, targets)
    with _style():
        fig, axes = _figure(len(targets), panel=(3.4, 3.4))
        for k, (ax, name) in enumerate(zip(axes, targets, strict=True)):
            truth, pred = y[:, k].astype(bool), p[:, k] >= thr[k]
            cells = np.array(
                [
                    [np.sum(~truth & ~pred), np.sum(~truth & pred)],
                    [np.sum(truth & ~pred), np.sum(truth & pred)],
                ]
            )
            _draw_matrix(ax, cells, y.shape[0])
            ax.set_title(f"{name} (t = {thr[k]:.3f})")
        return _save(fig, out_dir, stem)


def _draw_matrix(ax, cells: np.ndarray, total: int) -> None:
    ax.imshow(cells, cmap="Blues", vmin=0, vmax=max(1, cells.max()))
    names = (("TN", "FP"), ("FN", "TP"))
    for r in range(2):
        for c in range(2):
            dark = cells[r, c] > 0.6 * cells.max()
            text = f"{names[r][c]}\n{cells[r, c]}\n{100 * cells[r, c] / total:.1f}%"
            ax.text(c, r, text, ha="center", va="center", color="white" if dark else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="actual")
    ax.set_xticklabels(["negative", "positive"])
    ax.set_yticklabels(["negative", "positive"])


def plot_training_curves(metrics, out_dir, stem="training"):
    """Loss, validation AUROC (macro bold, classes thin) and learning rate by epoch.

    `metrics` is a `metrics.csv` path or its DataFrame (epoch, train_loss, val_loss,
    val_auroc_macro, val_auroc_<Pathology>..., lr, seconds); missing series are skipped.
    """
    frame = pd.read_csv(metrics) if isinstance(metrics, str | Path) else pd.DataFrame(metrics)
    if "epoch" not in frame.columns or frame.empty:
        raise EvaluationError(
            f"training metrics need rows and an 'epoch' column; got {list(frame)}"
        )
    per_class = [c for c in frame.columns if c.startswith("val_auroc_") and c != "val_auroc_macro"]
    panels = [
        p
        for p, cols in (
            ("loss", ["train_loss", "val_loss"]),
            ("auroc", ["val_auroc_macro", *per_class]),
            ("lr", ["lr"]),
        )
        if any(c in frame.columns for c in cols)
    ]
    if not panels:
        raise EvaluationError("metrics.csv has no loss, val_auroc_* or lr column to plot")
    with _style():
        fig, axes = _figure(len(panels), panel=(4.6, 3.6), max_cols=3)
        for ax, panel in zip(axes, panels, strict=True):
            _training_panel(ax, frame, panel, per_class)
        return _save(fig, out_dir, stem)


def _training_panel(ax, frame: pd.DataFrame, panel: str, per_class: list[str]) -> None:
    epoch = frame["epoch"]
    if panel == "loss":
        for col, style in (("train_loss", "-"), ("val_loss", "--")):
            if col in frame:
                ax.plot(epoch, frame[col], style, marker="o", ms=3, label=col.replace("_", " "))
        ax.set(title="loss", ylabel="BCE loss")
    elif panel == "auroc":
        for col in per_class:
            ax.plot(epoch, frame[col], lw=1, alpha=0.7, label=col.removeprefix("val_auroc_"))
        if "val_auroc_macro" in frame:
            ax.plot(epoch, frame["val_auroc_macro"], color="black", lw=2.5, label="macro")
        ax.set(title="validation AUROC", ylabel="AUROC")
    else:
        ax.plot(epoch, frame["lr"], marker="o", ms=3)
        ax.set(title="learning rate", ylabel="lr")
        if (frame["lr"] > 0).all():
            ax.set_yscale("log")
    ax.set_xlabel("epoch")
    if panel != "lr":
        ax.legend(frameon=False, fontsize=10)


def _auroc_entry(result: Mapping, name: str | None) -> tuple[float, float, float]:
    """(estimate, low, high) from a bootstrap_ci result (or compute_metrics: no CI)."""
    entry = result["macro"]["auroc"] if name is None else result["per_class"][name]["auroc"]
    if isinstance(entry, Mapping):
        values = (entry.get("estimate"), entry.get("low"), entry.get("high"))
    else:
        values = (entry, entry, entry)
    return tuple(np.nan if v is None else float(v) for v in values)


def plot_auroc_comparison(results: Mapping[str, Mapping], targets, out_dir, stem="auroc_bars"):
    """Per-class (and macro) AUROC bars per model with 95% CI whiskers.

    `results` maps model name -> `bootstrap_ci(...)` output (or `compute_metrics` output,
    drawn without whiskers). Bars start at 0 (no truncated axis); undefined values are
    labelled "undefined" instead of a bar.
    """
    if not results:
        raise EvaluationError("no model results to compare")
    colors = model_colors(list(results))
    groups = [*targets, "macro"]
    width = 0.8 / len(results)
    x = np.arange(len(groups))
    with _style():
        fig, (ax,) = _figure(1, panel=(max(6.0, 0.5 * len(groups) * (1 + len(results))), 4.4))
        for i, (model, result) in enumerate(sorted(results.items())):
            values = [_auroc_entry(result, None if g == "macro" else g) for g in groups]
            offset = x + (i - (len(results) - 1) / 2) * width
            _bars(ax, offset, np.array(values), width, colors[model], model)
        ax.axhline(0.5, ls="--", color=CHANCE, lw=1, label="chance")
        ax.set_xticks(x, [g.replace("_", " ") for g in groups], rotation=30, ha="right")
        ax.set(ylim=(0, 1.0), ylabel="AUROC (95% CI)", title="AUROC by class")
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _save(fig, out_dir, stem)


def _bars(ax, x: np.ndarray, values: np.ndarray, width: float, color: str, label: str) -> None:
    """values: (G, 3) estimate, low, high; NaN estimate = undefined."""
    est, low, high = values.T
    err = np.nan_to_num(np.vstack([est - low, high - est]))
    ax.bar(x, np.nan_to_num(est), width, color=color, yerr=err, capsize=3, label=label)
    for xi in x[np.isnan(est)]:
        ax.text(xi, 0.02, "undefined", rotation=90, ha="center", va="bottom", fontsize=10)


def bin_points(data: Mapping) -> list[tuple[float, float, int]]:
    """(mean predicted, fraction positive, image count) of each non-empty bin of
    `calibration.reliability` output."""
    return [
        (data["mean_predicted"][i], data["fraction_positive"][i], int(c))
        for i, c in enumerate(data["count"])
        if c > 0
    ]


def plot_reliability(
    y, probs: Mapping[str, np.ndarray], targets, out_dir, stem="reliability", n_bins: int = 10
):
    """Reliability diagram per class (observed frequency vs mean predicted probability), each
    point labelled with its bin's image count: a point from 3 images is noise, and the
    reader should see that without opening metrics.json."""
    y, probs, targets = _models(y, probs, targets)
    colors = model_colors(list(probs))
    with _style():
        fig, axes = _figure(len(targets))
        for k, (ax, name) in enumerate(zip(axes, targets, strict=True)):
            ax.plot([0, 1], [0, 1], ls="--", color=CHANCE, lw=1, label="perfect")
            for model, p in probs.items():
                data = reliability(y[:, k], p[:, k], n_bins)
                points = bin_points(data)
                ax.plot(
                    [x for x, _, _ in points],
                    [y_ for _, y_, _ in points],
                    marker="o",
                    color=colors[model],
                    label=f"{model} (ECE {data['ece']:.3f})",
                )
                for i, (x, y_, n) in enumerate(points):
                    ax.annotate(
                        str(n), (x, y_), textcoords="offset points", xytext=(0, 5),
                        ha="center", fontsize=7, color=colors[model],
                        gid=f"bin-count-{model}-{name}-{i}",
                    )  # fmt: skip
            ax.text(0.98, 0.02, "numbers: images per bin", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color=CHANCE)  # fmt: skip
            _finish(ax, name, "mean predicted probability", "fraction positive")
        return _save(fig, out_dir, stem)

"""Figures of the analysis: PNG + SVG via matplotlib, one self-contained interactive HTML.

Every function builds its own `matplotlib.figure.Figure` (no pyplot state, no backend chosen
at import), writes ``<stem>.png`` and ``<stem>.svg`` and returns the paths. Categorical
colourings draw the largest category first so rare classes (positives) stay visible on top.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from cxrlab.errors import ConfigError

log = logging.getLogger(__name__)

STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9}
KIND_COLOURS = {"pathology": "#c0392b", "metadata": "#2c7fb8"}
BINARY_COLOURS = {"negative": "#b0b0b0", "positive": "#d7301f"}


def _save(fig: Figure, stem: str | Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=150 if path.suffix == ".png" else None)
    log.info("wrote %s.{png,svg}", stem)
    return paths


def _natural(cat: str):
    """Sort key: leading integers numerically (``"5-19"`` after ``"1-4"``), then text."""
    head = cat.split("-")[0].rstrip("+")
    return (0, int(head), cat) if head.isdigit() else (1, 0, cat)


def _categories(values) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """(values as str, categories most frequent first, colour per category).

    The most frequent category is drawn first (underneath) so rare ones, such as positives,
    stay visible; colours follow the natural order of the categories, so bands read in order.
    """
    values = np.asarray(values).astype(str)
    cats, counts = np.unique(values, return_counts=True)
    cats = [str(c) for c in cats]
    draw = [cats[i] for i in np.argsort(-counts, kind="stable")]
    if set(cats) <= set(BINARY_COLOURS):
        return values, draw, {c: BINARY_COLOURS[c] for c in cats}
    cmap = matplotlib.colormaps["tab10" if len(cats) <= 10 else "tab20"]
    ordered = sorted(cats, key=_natural)
    colours = {c: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, c in enumerate(ordered)}
    return values, draw, colours


def _legend(ax, colours: dict[str, str], counts: dict[str, int] | None = None, **kwargs) -> None:
    """Legend in natural category order, independent of drawing order."""
    handles = [
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            color=colour,
            label=f"{cat} ({counts[cat]})" if counts else cat,
        )
        for cat, colour in sorted(colours.items(), key=lambda kv: _natural(kv[0]))
    ]
    ax.legend(handles=handles, framealpha=0.8, **kwargs)


def plot_explained_variance(ratio: Sequence[float], stem: str | Path) -> list[Path]:
    """Bars: variance explained by each component; line: cumulative."""
    ratio = np.asarray(ratio, dtype=float)
    pcs = np.arange(1, len(ratio) + 1)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7, 4), layout="constrained")
        ax = fig.add_subplot()
        ax.bar(pcs, 100 * ratio, color="#2c7fb8", label="per component")
        ax.plot(pcs, 100 * np.cumsum(ratio), "o-", color="#d95f0e", ms=3, label="cumulative")
        ax.set(xlabel="principal component", ylabel="explained variance (%)", ylim=(0, 102))
        ax.set_title(f"PCA explained variance (PC1 {100 * ratio[0]:.1f}%)")
        ax.legend(loc="center right")
        return _save(fig, stem)


def plot_pca_scatter(
    Z: np.ndarray, panels: Mapping[str, Sequence], stem: str | Path, *, point_size: float = 6
) -> list[Path]:
    """Small multiples of PC1 vs PC2, one panel per colouring (pathology, findings, view...)."""
    n = len(panels)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.6 * cols, 4.0 * rows), layout="constrained")
        for i, (title, values) in enumerate(panels.items()):
            ax = fig.add_subplot(rows, cols, i + 1)
            values, draw, colours = _categories(values)
            for cat in draw:
                sel = values == cat
                ax.scatter(
                    Z[sel, 0], Z[sel, 1], s=point_size, alpha=0.7, linewidths=0, color=colours[cat]
                )
            ax.set(title=title, xlabel="PC1", ylabel="PC2")
            counts = {c: int((values == c).sum()) for c in colours}
            _legend(ax, colours, counts, loc="upper right")  # "best" is slow on many points
        return _save(fig, stem)


def plot_pca_3d(Z: np.ndarray, values: Sequence, title: str, stem: str | Path) -> list[Path]:
    """Static 3-D projection on PC1-PC3 coloured by one attribute (e.g. the cluster)."""
    values, draw, colours = _categories(values)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7, 6), layout="constrained")
        ax = fig.add_subplot(projection="3d")
        for cat in draw:
            sel = values == cat
            ax.scatter(Z[sel, 0], Z[sel, 1], Z[sel, 2], s=5, alpha=0.6, color=colours[cat])
        ax.set(xlabel="PC1", ylabel="PC2", zlabel="PC3", title=title)
        _legend(ax, colours, loc="upper left")
        return _save(fig, stem)


def plot_k_selection(
    k_values: Sequence[int],
    silhouette: Sequence,
    inertia: Sequence[float],
    k: int,
    stem: str | Path,
) -> list[Path]:
    """Silhouette (higher is better) and inertia (elbow) against k, the chosen k marked."""
    sil = np.asarray([np.nan if s is None else s for s in silhouette], dtype=float)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(9, 3.8), layout="constrained")
        ax1, ax2 = fig.subplots(1, 2)
        ax1.plot(k_values, sil, "o-", color="#2c7fb8")
        ax1.set(xlabel="k", ylabel="silhouette", title="Silhouette vs k")
        ax2.plot(k_values, inertia, "o-", color="#d95f0e")
        ax2.set(xlabel="k", ylabel="inertia", title="K-Means inertia vs k")
        for ax in (ax1, ax2):
            ax.axvline(k, color="grey", ls="--", lw=1, label=f"chosen k = {k}")
            ax.legend(frameon=False)
        return _save(fig, stem)


def plot_enrichment_heatmap(
    prevalence: pd.DataFrame, enrichment: pd.DataFrame, stem: str | Path
) -> list[Path]:
    """Cluster x pathology prevalence; cells marked ▲ enriched / ▼ depleted (BH q < alpha)."""
    targets = [c for c in prevalence.columns if c != "n"]
    data = 100 * prevalence[targets].to_numpy(dtype=float)
    flags = enrichment.set_index(["cluster", "target"])["flag"]
    mark = {"enriched": " ▲", "depleted": " ▼", "": ""}
    with matplotlib.rc_context(STYLE):
        fig = Figure(
            figsize=(1.3 * len(targets) + 3, 0.55 * len(prevalence) + 2.2), layout="constrained"
        )
        ax = fig.add_subplot()
        im = ax.imshow(data, cmap="Reds", aspect="auto", vmin=0, vmax=max(1.0, data.max()))
        for i, cluster in enumerate(prevalence.index):
            for j, target in enumerate(targets):
                text = f"{data[i, j]:.0f}%" + mark[flags.get((cluster, target), "")]
                dark = data[i, j] > 0.6 * data.max()
                ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
        ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right")
        ax.set_yticks(
            range(len(prevalence)), [f"cluster {c} (n={n})" for c, n in prevalence["n"].items()]
        )
        ax.set_title("Prevalence per cluster (▲/▼: enriched/depleted, BH q < 0.05)")
        fig.colorbar(im, ax=ax, label="positive (%)")
        return _save(fig, stem)


def plot_confounds(confounds: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Horizontal bars of bias-corrected Cramer's V per attribute, pathology vs metadata."""
    table = confounds.dropna(subset=["cramers_v"]).iloc[::-1]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(8, 0.38 * len(table) + 1.6), layout="constrained")
        ax = fig.add_subplot()
        colours = [KIND_COLOURS.get(k, "grey") for k in table["kind"]]
        ax.barh(table["attribute"], table["cramers_v"], color=colours)
        ax.set(xlabel="Cramér's V with clusters (bias-corrected)", xlim=(0, 1))
        ax.set_title("What do the clusters follow?")
        handles = [Patch(color=colour, label=kind) for kind, colour in KIND_COLOURS.items()]
        ax.legend(handles=handles, loc="lower right", frameon=False)
        return _save(fig, stem)


def write_interactive_3d(
    Z: np.ndarray,
    hover: Sequence[str],
    attributes: Mapping[str, Sequence],
    path: str | Path,
    *,
    max_points: int = 5000,  # beyond this the HTML gets slow to open; a seeded subsample is shown
    seed: int = 0,
) -> Path:
    """Self-contained (offline) plotly HTML of PC1-PC3: hover shows `hover` text, a dropdown
    picks which attribute colours the points (one trace per category of each attribute)."""
    import plotly.graph_objects as go

    if not attributes:
        raise ConfigError("write_interactive_3d needs at least one attribute to colour by")
    n_all = len(Z)
    idx = np.arange(n_all)
    if n_all > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n_all, max_points, replace=False))
    hover, Z = np.asarray(hover, dtype=object)[idx], Z[idx]
    shown = f" ({len(idx)} of {n_all} images)" if len(idx) < n_all else ""
    fig, owner = go.Figure(), []  # owner[i] = index of the attribute trace i belongs to
    for a_i, (name, values) in enumerate(attributes.items()):
        values, draw, colours = _categories(np.asarray(values)[idx])
        for cat in sorted(draw, key=_natural):
            sel = values == cat
            fig.add_trace(
                go.Scatter3d(
                    x=Z[sel, 0],
                    y=Z[sel, 1],
                    z=Z[sel, 2],
                    mode="markers",
                    name=f"{name}: {cat}",
                    text=hover[sel],
                    visible=a_i == 0,
                    marker={"size": 2.5, "color": colours[cat], "opacity": 0.75},
                    hovertemplate="%{text}<extra>%{fullData.name}</extra>",
                )
            )
            owner.append(a_i)
    buttons = [
        {
            "label": name,
            "method": "update",
            "args": [
                {"visible": [o == a_i for o in owner]},
                {"title.text": f"PCA 3-D: {name}{shown}"},
            ],
        }
        for a_i, name in enumerate(attributes)
    ]
    fig.update_layout(
        title={"text": f"PCA 3-D: {next(iter(attributes))}{shown}"},
        scene={"xaxis_title": "PC1", "yaxis_title": "PC2", "zaxis_title": "PC3"},
        updatemenus=[{"buttons": buttons, "x": 0.0, "y": 1.08, "xanchor": "left"}],
        legend={"itemsizing": "constant"},
        height=700,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def draw_all(
    out_dir: str | Path,
    ca,
    panels: Mapping[str, Sequence],
    hover: Sequence[str],
    tables: Mapping[str, pd.DataFrame],
    *,
    seed: int = 0,
) -> list[Path]:
    """Every figure of a fitted `ClusterAnalysis` into ``out_dir/figures`` and the interactive
    ``out_dir/pca_3d.html``. `panels` colour the scatter plots (``"cluster"`` among them);
    `tables` holds the ``prevalence``, ``enrichment`` and ``confounds`` frames."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    Z = ca.embedding_
    if Z.shape[1] < 3:  # 3-D views need three axes; missing ones are flat
        Z = np.hstack([Z, np.zeros((Z.shape[0], 3 - Z.shape[1]))])
    paths = plot_explained_variance(ca.explained_variance_ratio_, fig_dir / "pca_variance")
    paths += plot_pca_scatter(Z, panels, fig_dir / "pca_scatter")
    paths += plot_pca_3d(Z, ca.labels_, f"PCA 3-D by cluster (k={ca.k_})", fig_dir / "pca_3d")
    paths += plot_k_selection(
        ca.k_values_, ca.silhouette_, ca.inertia_, ca.k_, fig_dir / "k_selection"
    )
    paths += plot_enrichment_heatmap(
        tables["prevalence"], tables["enrichment"], fig_dir / "enrichment_heatmap"
    )
    paths += plot_confounds(tables["confounds"], fig_dir / "confounds")
    order = ["cluster", *[k for k in panels if k != "cluster"]]
    attrs = {k: panels[k] for k in order if k in panels}
    return [*paths, write_interactive_3d(Z, hover, attrs, out_dir / "pca_3d.html", seed=seed)]

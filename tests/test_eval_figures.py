"""Evaluation figures (written, non-empty, consistent colours) and tables (exact text)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cxrlab.errors import EvaluationError
from cxrlab.evaluate import figures
from cxrlab.evaluate.bootstrap import bootstrap_ci, paired_bootstrap
from cxrlab.evaluate.calibration import reliability
from cxrlab.evaluate.metrics import compute_metrics
from cxrlab.evaluate.subgroups import subgroup_auroc
from cxrlab.evaluate.tables import (
    format_ci,
    multilabel_table,
    paired_table,
    per_class_table,
    save_table,
    subgroup_table,
    threshold_table,
    to_markdown,
)

TARGETS = ["Effusion", "Pneumothorax"]


@pytest.fixture(scope="module")
def toy():
    """120 images of 60 patients; Pneumothorax has no positives (an undefined class)."""
    rng = np.random.default_rng(0)
    y = np.zeros((120, 2), int)
    y[:, 0] = rng.random(120) < 0.3
    p_a = np.clip(0.4 * y + 0.6 * rng.random(y.shape), 0, 1)
    p_b = rng.random(y.shape)
    ids = np.repeat(np.arange(60), 2)
    return y, {"resnet18": p_a, "densenet121": p_b}, ids


def _assert_written(paths, stem):
    png, svg = paths
    assert (png.name, svg.name) == (f"{stem}.png", f"{stem}.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    assert "<svg" in svg.read_text()[:2_000]


def test_model_colors_are_fixed_by_sorted_name():
    colors = figures.model_colors(["vit", "resnet18", "densenet121"])
    assert colors == figures.model_colors(["densenet121", "vit", "resnet18"])
    assert colors["densenet121"] == figures.PALETTE[0] and colors["vit"] == figures.PALETTE[2]
    assert len(set(colors.values())) == 3


def test_roc_pr_and_reliability_figures(toy, tmp_path):
    y, probs, _ = toy
    _assert_written(figures.plot_roc_curves(y, probs, TARGETS, tmp_path), "roc")
    _assert_written(figures.plot_pr_curves(y, probs, TARGETS, tmp_path, stem="pr"), "pr")
    _assert_written(figures.plot_reliability(y, probs, TARGETS, tmp_path), "reliability")
    svg = (tmp_path / "roc.svg").read_text()
    texts = _svg_texts(tmp_path / "roc.svg")
    assert "undefined:" in texts  # the Pneumothorax panel says so instead of drawing a curve
    colors = figures.model_colors(list(probs))
    for color in colors.values():  # each model drawn in its own colour
        assert color.lower() in svg.lower()


def _svg_texts(path):
    """Matplotlib writes each text element's string as an XML comment in the SVG."""
    return re.findall(r"<!-- (.*?) -->", path.read_text())


def test_confusion_matrix_counts_and_percentages(tmp_path):
    # y = [0, 0, 1, 1], p = [.1, .4, .35, .8], t = .5 -> TN 2 (50%), FP 0, FN 1 (25%), TP 1
    paths = figures.plot_confusion_matrices(
        [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.5, ["A"], tmp_path
    )
    _assert_written(paths, "confusion")
    texts = _svg_texts(paths[1])
    cells = ["TN", "2", "50.0%", "FP", "0", "0.0%", "FN", "1", "25.0%", "TP", "1", "25.0%"]
    start = texts.index("TN")
    assert texts[start : start + 12] == cells
    assert "A (t = 0.500)" in texts


def test_auroc_bars_with_cis(toy, tmp_path):
    y, probs, ids = toy
    results = {
        name: bootstrap_ci(y, p, ids, targets=TARGETS, n_boot=50, seed=0)
        for name, p in probs.items()
    }
    paths = figures.plot_auroc_comparison(results, TARGETS, tmp_path)
    _assert_written(paths, "auroc_bars")
    texts = _svg_texts(paths[1])
    assert texts.count("undefined") == 2  # Pneumothorax, one label per model
    assert {"resnet18", "densenet121", "macro"} <= set(texts)


def test_training_curves_from_metrics_csv(tmp_path):
    metrics = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [0.6, 0.4, 0.3],
            "val_loss": [0.62, 0.5, 0.48],
            "val_auroc_macro": [0.6, 0.7, 0.72],
            "val_auroc_Effusion": [0.65, 0.75, 0.8],
            "lr": [1e-3, 5e-4, 1e-4],
            "seconds": [10, 10, 10],
        }
    )
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    paths = figures.plot_training_curves(tmp_path / "metrics.csv", tmp_path / "figs")
    _assert_written(paths, "training")
    with pytest.raises(EvaluationError, match="'epoch' column"):
        figures.plot_training_curves(metrics.drop(columns="epoch"), tmp_path)


def test_figures_module_has_no_import_side_effects():
    code = (
        "import sys, cxrlab.evaluate.figures; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plotting_leaves_global_matplotlib_state_alone(toy, tmp_path):
    import matplotlib

    backend, size = matplotlib.get_backend(), matplotlib.rcParams["font.size"]
    y, probs, _ = toy
    figures.plot_reliability(y, probs, TARGETS, tmp_path)
    assert (matplotlib.get_backend(), matplotlib.rcParams["font.size"]) == (backend, size)


# --------------------------------------------------------------------------------- tables
def test_format_ci():
    assert format_ci(0.8123, 0.7901, 0.8344) == "0.812 [0.790, 0.834]"
    assert format_ci(0.8123) == "0.812"
    assert format_ci(None, reason="no positives in this split") == "undefined (no positives)"


def test_per_class_table_shows_cis_undefined_and_baselines(toy):
    y, probs, ids = toy
    m = compute_metrics(y, probs["resnet18"], 0.5, TARGETS)
    ci = bootstrap_ci(y, probs["resnet18"], ids, 0.5, TARGETS, n_boot=50, seed=0)
    table = per_class_table(m, ci)
    auroc = ci["per_class"]["Effusion"]["auroc"]
    expected = f"{auroc['estimate']:.3f} [{auroc['low']:.3f}, {auroc['high']:.3f}]"
    assert table.loc["Effusion", "AUROC"] == expected
    assert table.loc["Pneumothorax", "AUROC"] == "undefined (no positives)"
    assert table.loc["Effusion", "AP baseline"] == f"{y[:, 0].mean():.3f}"
    assert table.loc["macro", "AUROC"].startswith(f"{m['macro']['auroc']:.3f} [")
    assert list(table.index) == [*TARGETS, "macro", "micro"]


def test_multilabel_table_puts_all_negative_beside_model():
    # Hand case of test_metrics: model and all-negative both 0.750 Hamming, 0.500 exact.
    y = np.array([[0, 0], [0, 1], [1, 0], [0, 0]])
    p = np.array([[0.2, 0.1], [0.3, 0.4], [0.7, 0.2], [0.6, 0.1]])
    table = multilabel_table(compute_metrics(y, p, targets=["A", "B"]))
    # without a bootstrap there is no CI of the difference, so no verdict is claimed
    assert table.loc["Hamming accuracy"].tolist() == [
        "0.750", "0.750", "+0.000", "untested (no CI)", "0.750"
    ]  # fmt: skip
    assert table.loc["exact match", "all-negative predictor"] == "0.500"


def test_other_tables_and_markdown(toy, tmp_path):
    y, probs, ids = toy
    m = compute_metrics(y, probs["resnet18"], [0.3, 0.5], TARGETS)
    thr = threshold_table(m)
    assert thr.loc["Effusion", "threshold"] == "0.300"
    assert thr.loc["Pneumothorax", "sensitivity"] == "undefined (no positives)"
    pair = paired_table(
        paired_bootstrap(y, probs["resnet18"], probs["densenet121"], ids, 50, targets=TARGETS)
    )
    assert pair.loc["Pneumothorax", "ΔAUROC (A - B)"] == "undefined"
    meta = pd.DataFrame({"sex": ["F", "M"] * 60, "age": 50, "view": "PA"})
    sub = subgroup_table(subgroup_auroc(y, probs["resnet18"], ids, meta, TARGETS, n_boot=20))
    assert ("sex", "F") in sub.index and sub.loc[("age_band", "40-59"), "images"] == 120
    markdown = to_markdown(pd.DataFrame({"a|b": ["x|y"]}, index=["r"]))
    assert markdown == "| index | a\\|b |\n|---|---|\n| r | x\\|y |\n"
    csv_path, md_path = save_table(per_class_table(m), tmp_path, "per_class")
    assert (
        pd.read_csv(csv_path, index_col=0).loc["Effusion", "TP"] == m["per_class"]["Effusion"]["tp"]
    )
    assert md_path.read_text().startswith("| class | n_pos | prevalence | AUROC |")


def test_reliability_points_carry_their_bin_counts(tmp_path):
    """Issue 10, finding 7: per-bin counts on the reliability diagrams."""
    y = np.array([[0], [0], [1], [1], [1]])
    p = np.array([[0.05], [0.08], [0.55], [0.9], [0.95]])
    data = reliability(y[:, 0], p[:, 0], 10)
    assert [n for _, _, n in figures.bin_points(data)] == [2, 1, 2]
    figures.plot_reliability(y, {"m": p}, ["T"], tmp_path)
    svg = (tmp_path / "reliability.svg").read_text()
    assert svg.count('id="bin-count-m-T-') == 3

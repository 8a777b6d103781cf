"""PCA / K-Means, enrichment, agreement, confounds, probes, figures and the end-to-end run.

Planted structure must be recovered; hand-worked numbers check the statistics.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from cxrlab.analysis import correspondence as corr
from cxrlab.analysis.embedding import ClusterAnalysis, thread_limit
from cxrlab.analysis.figures import plot_confounds, plot_explained_variance, write_interactive_3d
from cxrlab.analysis.probe import probe_layers, probe_target
from cxrlab.analysis.summary import run_analysis
from cxrlab.errors import ConfigError, DataError


def _blobs(n=400, seed=0):
    return make_blobs(n_samples=n, n_features=64, centers=4, cluster_std=1.0, random_state=seed)


# --- embedding -------------------------------------------------------------------------------


def test_four_blobs_recovered():
    X, truth = _blobs()
    ca = ClusterAnalysis(k_range=(2, 10), random_state=0, n_threads=1).fit(X)
    assert ca.k_ == 4 and ca.k_source_ == "silhouette"
    assert adjusted_rand_score(truth, ca.labels_) >= 0.9
    assert len(ca.silhouette_) == len(ca.inertia_) == 9
    assert np.all(np.diff(ca.inertia_) < 0)  # inertia falls as k grows
    assert ca.embedding_.shape == (400, 50)


def test_k_override_and_n_components_clamped():
    X, _ = _blobs(n=40)
    ca = ClusterAnalysis(k=3, k_range=(2, 5), n_components=200, n_threads=1).fit(X[:, :7])
    assert ca.k_ == 3 and ca.k_source_ == "override" and len(np.unique(ca.labels_)) == 3
    assert ca.n_components_ == 7  # min(N=40, C=7, asked=200)


def test_fit_is_reproducible_with_the_same_random_state():
    X, _ = _blobs(n=200)
    a = ClusterAnalysis(random_state=3, n_threads=1).fit(X)
    b = ClusterAnalysis(random_state=3, n_threads=1).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.silhouette_, b.silhouette_)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scaling": "minmax"}, ConfigError, "valid: none, standard, robust"),
        ({"k_range": (1, 4)}, ConfigError, "2 <= min <= max"),
        ({"k_range": (2, 30)}, ConfigError, "needs at least 31 samples; got N=20"),
        ({"k": 25}, ConfigError, "between 2 and N-1=19"),
    ],
)
def test_bad_parameters_say_what_is_valid(kwargs, error, match):
    X, _ = _blobs(n=20)
    with pytest.raises(error, match=match):
        ClusterAnalysis(**{"k_range": (2, 5), "n_threads": 1, **kwargs}).fit(X)


def test_thread_limit_caps_blas_and_openmp():
    from threadpoolctl import threadpool_info

    with thread_limit(1):
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    with pytest.raises(ConfigError, match="n_threads=0 must be >= 1"):
        thread_limit(0)


def test_non_finite_features_rejected():
    X, _ = _blobs(n=20)
    X[5, 3] = np.nan
    with pytest.raises(DataError, match="first in row 5"):
        ClusterAnalysis(k_range=(2, 4), n_threads=1).fit(X)


def test_scaling_changes_which_channel_dominates_pc1():
    X = np.random.default_rng(0).normal(size=(300, 10))
    X[:, 0] *= 1000  # one channel with a million times the variance of the others
    raw = ClusterAnalysis(k_range=(2, 3), scaling="none", n_components=10, n_threads=1).fit(X)
    assert raw.explained_variance_ratio_[0] > 0.99
    assert raw.top_channel_ == 0 and raw.top_channel_variance_share_ > 0.99
    for scaling in ("standard", "robust"):
        scaled = ClusterAnalysis(k_range=(2, 3), scaling=scaling, n_components=10, n_threads=1).fit(
            X
        )
        assert scaled.explained_variance_ratio_[0] < 0.3  # ten comparable channels: ~0.1 each
        assert scaled.top_channel_variance_share_ < 0.3


# --- correspondence --------------------------------------------------------------------------


def test_bh_against_hand_worked_example():
    # m = 4, sorted p 0.001, 0.04, 0.041, 0.5 -> p*m/rank 0.004, 0.08, 0.0547, 0.5;
    # the running minimum from the top lowers 0.08 to 0.0547.
    q = corr.bh_adjust([0.04, 0.001, 0.5, 0.041, np.nan])
    np.testing.assert_allclose(q[:4], [0.041 * 4 / 3, 0.004, 0.5, 0.041 * 4 / 3])
    assert np.isnan(q[4])


def test_purity_and_single_label_hand_cases():
    assert corr.purity([0, 0, 0, 1, 1, 1], ["a", "a", "b", "b", "b", "c"]) == pytest.approx(4 / 6)
    Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    mask, classes = corr.single_label_classes(Y, ["A", "B"])
    assert mask.tolist() == [True, True, False, True]
    assert classes.tolist() == ["A", "B", corr.NONE_CLASS]
    mask, classes = corr.single_label_classes(Y, ["A", "B"], include_none=False)
    assert mask.tolist() == [True, True, False, False] and classes.tolist() == ["A", "B"]


def test_cramers_v_hand_worked():
    # 2x2 table [[20, 10], [10, 20]]: chi2 = 4 * 5^2/15 = 6.667, raw V = sqrt(6.667/60) = 1/3;
    # Bergsma: phi2 = 1/9 - 1/59, r = k = 2 - 1/59 -> V = sqrt(2950/30798) = 0.30949.
    clusters = [0] * 30 + [1] * 30
    attr = ["x"] * 20 + ["y"] * 10 + ["x"] * 10 + ["y"] * 20
    out = corr.cramers_v(clusters, attr)
    assert out["chi2"] == pytest.approx(20 / 3)
    assert out["cramers_v_raw"] == pytest.approx(1 / 3)
    assert out["cramers_v"] == pytest.approx(0.30949, abs=1e-5)
    assert corr.cramers_v([0, 0, 1, 1] * 10, ["x", "x", "y", "y"] * 10)[
        "cramers_v"
    ] == pytest.approx(1.0)


def _planted_enrichment():
    clusters = np.repeat([0, 1, 2, 3], 100)
    a = np.zeros(400, int)
    a[0:80] = 1  # cluster 0: 80% positive
    for c in (1, 2, 3):
        a[c * 100 : c * 100 + 10] = 1  # elsewhere: 10%
    b = np.tile(np.r_[np.ones(20, int), np.zeros(80, int)], 4)  # 20% in every cluster
    return clusters, np.column_stack([a, b])


def test_planted_enrichment_found_and_nothing_else_flagged():
    clusters, Y = _planted_enrichment()
    table = corr.enrichment_table(clusters, Y, ["Effusion", "Mass"])
    cell = table[(table.cluster == 0) & (table.target == "Effusion")].iloc[0]
    assert cell.flag == "enriched" and cell.q_value < 0.05
    assert cell.odds_ratio == pytest.approx(80 * 270 / (20 * 30))  # 2x2 [[80, 20], [30, 270]]
    assert cell.prevalence_in_cluster == 0.8 and cell.prevalence_elsewhere == pytest.approx(0.1)
    assert (table[table.target == "Mass"].flag == "").all()  # equal prevalence everywhere
    others = table[(table.target == "Effusion") & (table.cluster != 0)]
    assert (others.flag == "depleted").all()  # 10% vs 33% elsewhere is a real depletion
    prev = corr.prevalence_table(clusters, Y, ["Effusion", "Mass"])
    assert prev.loc[0, "Effusion"] == 0.8 and prev["n"].tolist() == [100] * 4


def test_metadata_bands_and_raw_nih_column_names():
    meta = pd.DataFrame(
        {
            "Patient Age": [5, 20, 39, 40, 85, None],
            "Follow-up #": [0, 1, 4, 5, 19, 20],
            "View Position": ["PA", "AP", "PA", "AP", "PA", "AP"],
        }
    )
    f = corr.metadata_factors(meta)
    assert set(f) == {"view", "age_band", "follow_up_band"}  # no sex column: left out
    assert f["age_band"].tolist() == ["0-19", "20-39", "20-39", "40-59", "80+", "unknown"]
    assert f["follow_up_band"].tolist() == ["0", "1-4", "1-4", "5-19", "5-19", "20+"]


def _confound_data(follow: str, n=400, seed=0):
    rng = np.random.default_rng(seed)
    view = rng.choice(["PA", "AP"], n)
    Y = (rng.random((n, 2)) < 0.3).astype(int)
    if follow == "view":
        clusters = (view == "AP").astype(int)
    else:  # clusters follow Effusion
        clusters = Y[:, 0].copy()
    meta = pd.DataFrame(
        {"view": view, "sex": rng.choice(["M", "F"], n), "age": rng.integers(1, 90, n)}
    )
    return clusters, Y, meta


def test_confound_view_reported_stronger_than_pathology():
    clusters, Y, meta = _confound_data("view")
    table = corr.confound_table(clusters, Y, ["Effusion", "Mass"], meta)
    best = corr.strongest_explanation(table)
    assert best["attribute"] == "view" and best["kind"] == "metadata"
    assert best["best_metadata"]["cramers_v"] > 0.95
    assert best["best_pathology"]["cramers_v"] < 0.2
    assert table.iloc[0]["attribute"] == "view"  # ranked first


def test_confound_pathology_reported_when_clusters_follow_disease():
    clusters, Y, meta = _confound_data("pathology")
    best = corr.strongest_explanation(corr.confound_table(clusters, Y, ["Effusion", "Mass"], meta))
    assert best["kind"] == "pathology" and best["attribute"] == "pathology: Effusion"
    assert best["best_metadata"]["cramers_v"] < 0.2


def test_label_matrix_shape_checked():
    with pytest.raises(DataError, match=r"expected \(3, 2\)"):
        corr.enrichment_table([0, 1, 1], np.zeros((3, 3), int), ["A", "B"])


# --- probe -----------------------------------------------------------------------------------


def test_probe_high_on_separable_and_chance_on_random():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(100, int), np.zeros(200, int)]
    X = rng.normal(size=(300, 20))
    X[:, 0] += 3 * y
    good = probe_target(X, y, random_state=0)
    assert good["auroc_mean"] > 0.95 and len(good["fold_aurocs"]) == 5 * good["n_repeats"]
    rand = probe_target(X, rng.permutation(y), random_state=0)
    assert abs(rand["auroc_mean"] - 0.5) < 0.1


def test_probe_undefined_with_reason():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = np.zeros(60, int)
    y[:3] = 1
    out = probe_target(X, y)
    assert out["auroc_mean"] is None and "3 positive" in out["reason"]
    y[:10] = 1
    groups = np.r_[np.zeros(10, int), np.arange(1, 51)]  # all positives from one patient
    out = probe_target(X, y, groups)
    assert out["auroc_mean"] is None and "1 / negatives from 50 patients" in out["reason"]


def test_probe_layers_table():
    rng = np.random.default_rng(1)
    Y = (rng.random((120, 2)) < 0.4).astype(int)
    feats = {
        "informative": Y[:, :1] * 2.0 + rng.normal(size=(120, 4)),
        "noise": rng.normal(size=(120, 4)),
    }
    table = probe_layers(feats, Y, ["Effusion", "Mass"], groups=np.arange(120) // 2)
    assert table.shape[0] == 4 and set(table.layer) == {"informative", "noise"}
    eff = table.set_index(["layer", "target"]).loc[("informative", "Effusion"), "auroc_mean"]
    assert eff > 0.85
    with pytest.raises(DataError, match="do not match 120 images"):
        probe_layers({"bad": np.zeros((10, 2))}, Y, ["Effusion", "Mass"])


# --- figures and the end-to-end run ----------------------------------------------------------


def _plotly_figure_from_html(html: str) -> tuple[list, dict]:
    """The data and layout JSON passed to Plotly.newPlot(id, data, layout, config)."""
    start = html.index("Plotly.newPlot(")
    decoder = json.JSONDecoder()
    pos = html.index(",", start) + 1  # skip the div id argument
    data, end = decoder.raw_decode(html, pos + len(html[pos:]) - len(html[pos:].lstrip()))
    pos = html.index(",", end) + 1
    layout, _ = decoder.raw_decode(html, pos + len(html[pos:]) - len(html[pos:].lstrip()))
    return data, layout


def test_interactive_html_is_offline_plotly_document(tmp_path):
    Z = np.random.default_rng(0).normal(size=(30, 3))
    attrs = {"cluster": np.repeat(["0", "1", "2"], 10), "view": np.tile(["PA", "AP"], 15)}
    hover = [f"img{i:03d}.png<br>Effusion" for i in range(30)]
    path = write_interactive_3d(Z, hover, attrs, tmp_path / "pca_3d.html")
    html = path.read_text()
    assert "Plotly.newPlot" in html and '<script src="http' not in html
    data, layout = _plotly_figure_from_html(html)
    assert len(data) == 5  # 3 cluster traces + 2 view traces
    assert all(t["type"] == "scatter3d" for t in data)
    texts = [t for trace in data[:3] for t in trace["text"]]
    assert sorted(texts) == sorted(hover)  # every image once per attribute, with its findings
    buttons = layout["updatemenus"][0]["buttons"]
    assert [b["label"] for b in buttons] == ["cluster", "view"]
    assert buttons[1]["args"][0]["visible"] == [False] * 3 + [True] * 2


def test_static_figures_written_as_png_and_svg(tmp_path):
    paths = plot_explained_variance([0.5, 0.3, 0.2], tmp_path / "ev")
    table = pd.DataFrame(
        {
            "attribute": ["view", "pathology: A"],
            "kind": ["metadata", "pathology"],
            "cramers_v": [0.9, 0.1],
        }
    )
    paths += plot_confounds(table, tmp_path / "conf")
    assert sorted(p.name for p in paths) == ["conf.png", "conf.svg", "ev.png", "ev.svg"]
    for p in paths:
        assert p.stat().st_size > 1000
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _meta_for(clusters, seed=0):
    rng = np.random.default_rng(seed)
    n = len(clusters)
    eff = (rng.random(n) < np.where(clusters == 0, 0.8, 0.1)).astype(int)
    mass = (rng.random(n) < 0.2).astype(int)
    labels = [
        "|".join(n for n, v in (("Effusion", e), ("Mass", m)) if v) or "No Finding"
        for e, m in zip(eff, mass, strict=True)
    ]
    return pd.DataFrame(
        {
            "Image Index": [f"{i:08d}_000.png" for i in range(n)],
            "Patient ID": np.arange(n) // 2,
            "Effusion": eff,
            "Mass": mass,
            "Finding Labels": labels,
            "view": rng.choice(["PA", "AP"], n),
            "sex": rng.choice(["M", "F"], n),
            "age": rng.integers(1, 95, n),
            "follow_up": rng.integers(0, 30, n),
        }
    )


def test_run_analysis_end_to_end(tmp_path):
    X, truth = _blobs(n=200)
    meta = _meta_for(truth)
    out = tmp_path / "analysis" / "m"
    result = run_analysis(
        X, meta, "Effusion,Mass", out, k_range=(2, 6), n_components=10, n_threads=1
    )
    for name in (
        "analysis.json",
        "summary.md",
        "pca_3d.html",
        "clusters.csv",
        "enrichment.csv",
        "confounds.csv",
        "probe.csv",
        "figures/pca_scatter.png",
        "figures/pca_3d.svg",
        "figures/k_selection.png",
        "figures/enrichment_heatmap.svg",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "analysis.json").read_text())  # strict JSON: no NaN
    assert saved["embedding"]["k"] == result["embedding"]["k"] == 4
    assert len(saved["embedding"]["explained_variance_ratio"]) == 10
    enriched = [c for c in saved["significant_cells"] if c["flag"] == "enriched"]
    assert [c["target"] for c in enriched] == ["Effusion"]
    assert saved["probe_grouped_by_patient"] is True
    md = (out / "summary.md").read_text()
    assert "**k = 4**" in md and "ARI = " in md and "Effusion **enriched**" in md
    assert "ARI near 0 means the clusters do not correspond to pathology" in md
    assign = pd.read_csv(out / "clusters.csv")
    assert assign["Image Index"].tolist() == meta["Image Index"].tolist()  # row-aligned
    assert np.bincount(assign["cluster"]).tolist() == result["embedding"]["cluster_sizes"]
    assert adjusted_rand_score(truth, assign["cluster"]) >= 0.9


def test_run_analysis_rejects_misaligned_or_missing_columns(tmp_path):
    X, truth = _blobs(n=50)
    meta = _meta_for(truth)
    with pytest.raises(DataError, match="metadata has 49 rows but features have 50"):
        run_analysis(X, meta.iloc[:49], ["Effusion"], tmp_path)
    with pytest.raises(DataError, match=r"lacks target column\(s\) \['Nodule'\]"):
        run_analysis(X, meta, ["Nodule"], tmp_path)


def test_import_is_light():
    code = (
        "import sys, cxrlab.analysis, cxrlab.analysis.figures; "
        "print(sorted(m for m in ('torch', 'matplotlib.pyplot', 'plotly') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.realdata
@pytest.mark.slow
def test_run_analysis_on_real_dev_images(nih_dev, tmp_path):
    """Pixel features (16x16 box-downsampled) of the real dev images with their real metadata
    (raw Data_Entry column names): the run completes and the label counts survive intact."""
    from PIL import Image

    from cxrlab.labels import DEFAULT_TARGETS, label_matrix, parse_finding_labels

    meta = pd.read_csv(nih_dev / "Data_Entry_2017.csv")
    Y = label_matrix([parse_finding_labels(t) for t in meta["Finding Labels"]], DEFAULT_TARGETS)
    for j, target in enumerate(DEFAULT_TARGETS):
        meta[target] = Y[:, j]
    X = np.stack(
        [
            np.asarray(Image.open(nih_dev / "images" / f).convert("L").resize((16, 16), 4)).ravel()
            for f in meta["Image Index"]
        ]
    ).astype(np.float32)
    result = run_analysis(X, meta, list(DEFAULT_TARGETS), tmp_path, layer="pixels", n_threads=1)
    prev = pd.DataFrame(result["prevalence"])
    positives = (prev["Atelectasis"] * prev["n"]).sum()
    assert prev["n"].sum() == len(meta) and positives == pytest.approx(139)  # README count
    attrs = {row["attribute"] for row in result["confounds"]}
    assert {"view", "sex", "age_band", "follow_up_band"} <= attrs
    assert {p["target"] for p in result["probe"]} == set(DEFAULT_TARGETS)
    assert json.loads((tmp_path / "analysis.json").read_text())["embedding"]["n_samples"] == 1108


def test_chi_square_p_is_replaced_by_a_permutation_p_where_the_approximation_fails():
    """Issue 10, finding 7: a 23-category table with most expected counts < 5 must not print
    an asymptotic p such as 1.6e-14."""
    from scipy.stats import chi2_contingency

    from cxrlab.analysis.correspondence import N_PERMUTATIONS, cramers_v

    rng = np.random.default_rng(0)
    clusters = np.repeat([0, 1], 72)
    attribute = np.where(clusters == 0, rng.integers(0, 4, 144), rng.integers(3, 23, 144))
    out = cramers_v(clusters, attribute)
    assert out["p_method"].startswith("permutation") and "expected counts < 5" in out["p_method"]
    assert out["p_value"] >= 1 / (N_PERMUTATIONS + 1)
    table = pd.crosstab(clusters, attribute).values
    assert chi2_contingency(table, correction=False)[1] < 1e-10  # what used to be printed
    big = cramers_v(np.repeat([0, 1], 200), np.tile([0, 1], 200))  # 4 cells of 100
    assert big["p_method"] == "chi-square"


def test_probe_is_repeated_and_independent_of_the_patient_id_dtype():
    """Issue 10, finding 7: integer vs string patient IDs gave different folds (Infiltration
    0.958 vs 0.886 on the demo); the sd must be over repeated fold assignments."""
    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(1, 61), 2)  # 1..60: sorted as ints != sorted as strings
    y = (rng.random(120) < 0.35).astype(int)
    X = rng.normal(size=(120, 6))
    X[:, 0] += 1.2 * y
    as_int = probe_target(X, y, patients, random_state=0)
    as_str = probe_target(X, y, patients.astype(str), random_state=0)
    assert as_int["auroc_mean"] == as_str["auroc_mean"]
    assert as_int["fold_aurocs"] == as_str["fold_aurocs"]
    assert len(as_int["repeat_aurocs"]) == as_int["n_repeats"] == 5
    assert as_int["auroc_mean"] == pytest.approx(np.mean(as_int["repeat_aurocs"]))
    assert as_int["auroc_sd"] == pytest.approx(np.std(as_int["repeat_aurocs"], ddof=1))

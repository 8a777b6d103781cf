"""Thresholds, patient bootstrap, DeLong, calibration and subgroups: hand cases first."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrlab.errors import EvaluationError
from cxrlab.evaluate import bootstrap as bootstrap_module
from cxrlab.evaluate.bootstrap import (
    PatientResampler,
    RankedScores,
    bootstrap_ci,
    paired_bootstrap,
)
from cxrlab.evaluate.calibration import (
    TemperatureScaler,
    binary_nll,
    calibration_report,
    expected_calibration_error,
    reliability,
)
from cxrlab.evaluate.delong import (
    compare_delong,
    delong_ci,
    delong_covariance,
    delong_test,
    structural_components,
)
from cxrlab.evaluate.metrics import NO_POSITIVES, compute_metrics
from cxrlab.evaluate.subgroups import age_band_labels, age_bands, subgroup_auroc
from cxrlab.evaluate.thresholds import choose_thresholds, load_thresholds, save_thresholds

# ------------------------------------------------------------------------------ thresholds
# Validation, scores descending: .8(1) .7(0) .6(1) .35(1) .3(0) .1(0)
#   t=.8: TP1 FP0 FN2 F1=2/4=.50   sens 1/3 spec 3/3 J=.333
#   t=.7: TP1 FP1 FN2 F1=2/5=.40   sens 1/3 spec 2/3 J=0
#   t=.6: TP2 FP1 FN1 F1=4/6=.667  sens 2/3 spec 2/3 J=.333
#   t=.35: TP3 FP1 FN0 F1=6/7=.857 sens 1 spec 2/3 J=.667   <- max F1 and max J
#   t=.3: TP3 FP2 F1=6/8=.75 ; t=.1: TP3 FP3 F1=6/9=.667
Y_VAL = np.array([0, 0, 1, 1, 1, 0])
P_VAL = np.array([0.1, 0.3, 0.35, 0.6, 0.8, 0.7])


def test_max_f1_youden_and_fixed_sensitivity_on_hand_case():
    f1 = choose_thresholds(Y_VAL, P_VAL, ["A"], "max_f1")["A"]
    assert f1 == {"threshold": 0.35, "method": "max_f1", "val_value": pytest.approx(6 / 7)}
    j = choose_thresholds(Y_VAL, P_VAL, ["A"], "youden")["A"]
    assert (j["threshold"], j["val_value"]) == (0.35, pytest.approx(2 / 3))
    s90 = choose_thresholds(Y_VAL, P_VAL, ["A"], "fixed_sensitivity", 0.9)["A"]
    assert (s90["threshold"], s90["val_value"]) == (0.35, 1.0)
    s60 = choose_thresholds(Y_VAL, P_VAL, ["A"], "fixed_sensitivity", 0.6)["A"]
    assert (s60["threshold"], s60["val_value"]) == (0.6, pytest.approx(2 / 3))


def test_thresholds_chosen_on_val_are_the_ones_applied_to_test(tmp_path):
    chosen = choose_thresholds(Y_VAL, P_VAL, ["A"])
    path = save_thresholds(chosen, tmp_path / "thresholds.json")
    loaded = load_thresholds(path, targets=["A"])
    # Test split: at t=.35 -> y_hat = [0, 1, 1, 1]: TP 2, FP 1, FN 0, TN 1; at 0.5 TP 1 FN 1.
    y_test, p_test = np.array([0, 0, 1, 1]), np.array([0.2, 0.4, 0.36, 0.9])
    m = compute_metrics(y_test, p_test, loaded, ["A"])["per_class"]["A"]
    assert m["threshold"] == 0.35
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 0)
    assert (m["at_0.5"]["tp"], m["at_0.5"]["fn"]) == (1, 1)


def test_threshold_fallback_for_class_without_positives_and_file_checks(tmp_path):
    y = np.column_stack([Y_VAL, np.zeros(6, int)])
    chosen = choose_thresholds(y, np.column_stack([P_VAL, P_VAL]), ["A", "B"])
    assert chosen["B"]["threshold"] == 0.5 and chosen["B"]["val_value"] is None
    assert chosen["B"]["note"] == "no positives in validation; threshold falls back to 0.5"
    notes = compute_metrics(y, np.column_stack([P_VAL, P_VAL]), chosen, ["A", "B"])["notes"]
    assert f"threshold for B: {chosen['B']['note']}" in notes
    path = save_thresholds(chosen, tmp_path / "thresholds.json")
    with pytest.raises(EvaluationError, match=r"thresholds for \['A', 'B'\], but the targets"):
        load_thresholds(path, targets=["A"])
    payload = json.loads(path.read_text())
    path.write_text(json.dumps({**payload, "chosen_on": "test"}))
    with pytest.raises(EvaluationError, match="chosen on 'test'; only 'val'"):
        load_thresholds(path)
    with pytest.raises(EvaluationError, match="unknown threshold method 'best'"):
        choose_thresholds(Y_VAL, P_VAL, method="best")


# ------------------------------------------------------------------------------ bootstrap
def _toy(n_patients=60, per_patient=2, k=2, seed=0):
    """Each patient has `per_patient` images with identical labels."""
    rng = np.random.default_rng(seed)
    patient_y = (rng.random((n_patients, k)) < 0.3).astype(int)
    y = np.repeat(patient_y, per_patient, axis=0)
    p = np.clip(0.35 * y + 0.65 * rng.random(y.shape), 0, 1).round(2)  # rounded: ties
    ids = np.repeat([f"P{i:03d}" for i in range(n_patients)], per_patient)
    return y, p, ids


def _flat(tree, prefix=""):
    """{"a": {"b": 1}} -> {"a/b": 1} (numbers only), to compare with pytest.approx."""
    if not isinstance(tree, dict):
        return {prefix: tree} if isinstance(tree, int | float) else {}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}/{key}").items()}


def test_resamples_take_whole_patients():
    y, _, ids = _toy(n_patients=30, per_patient=2)
    sampler = PatientResampler(ids)
    draws = sampler.draw(np.random.default_rng(0), 50)
    weights = sampler.weights(draws)
    for draw, w in zip(draws, weights, strict=True):
        idx = sampler.indices(draw)
        assert idx.size == 2 * 30  # 30 patients drawn, 2 images each
        drawn = pd.Series(ids[idx]).value_counts()
        for patient, times in zip(*np.unique(draw, return_counts=True), strict=True):
            assert drawn[ids[2 * patient]] == 2 * times  # both images, as often as drawn
        assert (np.bincount(idx, minlength=y.shape[0]) == w).all()
        pairs = ids[idx].reshape(-1, 2)  # each drawn patient contributes its images together
        assert (pairs[:, 0] == pairs[:, 1]).all()


def test_weighted_auroc_ap_equal_sklearn_on_materialised_resample():
    y, p, ids = _toy(n_patients=80, per_patient=3, k=1, seed=3)
    sampler = PatientResampler(ids)
    draws = sampler.draw(np.random.default_rng(1), 5)
    ranks = RankedScores(y[:, 0], p[:, 0])
    auroc, ap = ranks.auroc_ap(sampler.weights(draws))
    for b, draw in enumerate(draws):
        idx = sampler.indices(draw)
        assert auroc[b] == pytest.approx(roc_auc_score(y[idx, 0], p[idx, 0]), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(y[idx, 0], p[idx, 0]), abs=1e-12)


def test_bootstrap_ci_estimates_match_compute_metrics_and_are_reproducible(monkeypatch):
    y, p, ids = _toy()
    ci = bootstrap_ci(y, p, ids, thresholds=0.4, targets=["A", "B"], n_boot=200, seed=5)
    m = compute_metrics(y, p, 0.4, ["A", "B"])
    for name in ("A", "B"):
        for metric in ("auroc", "ap", "f1", "sensitivity", "specificity", "precision"):
            entry = ci["per_class"][name][metric]
            assert entry["estimate"] == pytest.approx(m["per_class"][name][metric])
            assert entry["low"] <= entry["estimate"] <= entry["high"]
    assert ci["macro"]["auroc"]["estimate"] == pytest.approx(m["macro"]["auroc"])
    assert ci["micro"]["auroc"]["estimate"] == pytest.approx(m["micro"]["auroc"])
    for metric in ("hamming_accuracy", "exact_match"):
        assert ci["multilabel"][metric]["estimate"] == pytest.approx(m["multilabel"][metric])
    assert ci["n_patients"] == 60 and ci["unit"] == "patient"
    monkeypatch.setattr(bootstrap_module, "_CHUNK_ELEMENTS", 300)  # many small chunks
    again = bootstrap_ci(y, p, ids, thresholds=0.4, targets=["A", "B"], n_boot=200, seed=5)
    assert _flat(again) == pytest.approx(_flat(ci), rel=1e-12)  # chunking changes nothing
    other = bootstrap_ci(y, p, ids, thresholds=0.4, targets=["A", "B"], n_boot=200, seed=6)
    assert other["per_class"]["A"]["auroc"]["low"] != ci["per_class"]["A"]["auroc"]["low"]


def test_resamples_without_positives_are_skipped_and_counted():
    # One positive patient among 10: a resample misses it with probability (9/10)^10.
    ids = np.repeat(np.arange(10), 2)
    y = np.zeros((20, 1), int)
    y[:2] = 1
    p = np.linspace(0.05, 0.95, 20)[:, None]
    ci = bootstrap_ci(y, p, ids, n_boot=300, seed=11)["per_class"]["class_0"]["auroc"]
    draws = PatientResampler(ids).draw(np.random.default_rng(11), 300)
    expected_skips = int(np.sum(~(draws == 0).any(axis=1)))  # patient 0 holds the positives
    assert expected_skips > 0
    assert (ci["n_skipped"], ci["n_valid"]) == (expected_skips, 300 - expected_skips)


def test_bootstrap_rejects_bad_patient_ids_and_level():
    y, p, ids = _toy(n_patients=5)
    with pytest.raises(EvaluationError, match="9 patient IDs for 10 images"):
        bootstrap_ci(y, p, ids[:9], n_boot=10)
    with pytest.raises(EvaluationError, match="1 images have no patient ID"):
        bootstrap_ci(y, p, [None, *ids[1:]], n_boot=10)
    with pytest.raises(EvaluationError, match="level=95 must be in"):
        paired_bootstrap(y, p, p, ids, n_boot=10, level=95)


def test_bootstrap_is_fast_enough():
    rng = np.random.default_rng(0)
    y = (rng.random((2000, 4)) < 0.15).astype(int)
    p = np.clip(0.3 * y + 0.7 * rng.random((2000, 4)), 0, 1)
    ids = rng.integers(0, 900, 2000)
    start = time.perf_counter()
    bootstrap_ci(y, p, ids, n_boot=1000, seed=0)
    assert time.perf_counter() - start < 8.0  # ~0.7 s measured on 2 shared cores


def test_paired_bootstrap_detects_a_better_model_and_not_a_copy():
    y, p, ids = _toy(n_patients=150, k=2, seed=2)
    noise = np.random.default_rng(9).random(y.shape)
    same = paired_bootstrap(y, p, p, ids, n_boot=300, seed=1)
    assert same["macro"]["delta"] == 0.0 and same["macro"]["p_value"] == 1.0
    better = paired_bootstrap(y, p, noise, ids, n_boot=300, seed=1, targets=["A", "B"])
    for entry in (*better["per_class"].values(), better["macro"]):
        assert entry["delta"] == pytest.approx(entry["auroc_a"] - entry["auroc_b"])
        assert entry["low"] > 0 and entry["p_value"] < 0.01
    assert better["per_class"]["A"]["auroc_a"] == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))


# ------------------------------------------------------------------------------ DeLong
def test_delong_test_on_hand_worked_case():
    # y = [1,1,1,0,0]. A: positives .9 .6 .3, negatives .5 .2; B: .8 .4 .35 vs .6 .1
    # V10_A = [1, 1, 1/2], V01_A = [2/3, 1]  -> AUC_A = 5/6
    # V10_B = [1, 1/2, 1/2], V01_B = [1/3, 1] -> AUC_B = 2/3
    # S10: var_A = 1/12, var_B = 1/12, cov = 1/24 ; S01: var_A = 1/18, var_B = 2/9, cov = 1/9
    # Var A = (1/12)/3 + (1/18)/2 = 1/18 ; Var B = 1/36 + 1/9 = 5/36 ; Cov = 1/72 + 1/18 = 5/72
    # Var(A - B) = 1/18 + 5/36 - 10/72 = 1/18 ; z = (1/6) / sqrt(1/18) = 1/sqrt(2)
    y = [1, 1, 1, 0, 0]
    auc_a, auc_b, z, p_value = delong_test(y, [0.9, 0.6, 0.3, 0.5, 0.2], [0.8, 0.4, 0.35, 0.6, 0.1])
    assert (auc_a, auc_b) == (pytest.approx(5 / 6), pytest.approx(2 / 3))
    assert z == pytest.approx(1 / np.sqrt(2))
    assert p_value == pytest.approx(0.4795001, abs=1e-6)  # 2 * (1 - Phi(0.7071))
    _, cov = delong_covariance(y, [[0.9, 0.6, 0.3, 0.5, 0.2], [0.8, 0.4, 0.35, 0.6, 0.1]])
    assert cov == pytest.approx(np.array([[1 / 18, 5 / 72], [5 / 72, 5 / 36]]))


def test_delong_variance_on_four_point_case():
    # y=[0,0,1,1], p=[.1,.4,.35,.8]: V10 = [1/2, 1] (for .35, .8), V01 = [1, 1/2] (.1, .4)
    # S10 = S01 = var([.5, 1], ddof=1) = 1/8 ; Var = (1/8)/2 + (1/8)/2 = 1/8
    auc, var, low, high = delong_ci([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert (auc, var) == (pytest.approx(0.75), pytest.approx(0.125))
    assert low == pytest.approx(0.75 - 1.959964 * np.sqrt(0.125), abs=1e-6) and high == 1.0


def test_fast_delong_equals_pairwise_definition_with_ties():
    rng = np.random.default_rng(4)
    y = (rng.random(90) < 0.4).astype(int)
    scores = np.round(rng.random((2, 90)) + 0.3 * y, 1)  # heavy ties
    aucs, v10, v01 = structural_components(y, scores)
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    assert np.allclose(v10, psi.mean(axis=2)) and np.allclose(v01, psi.mean(axis=1))
    assert aucs == pytest.approx([roc_auc_score(y, s) for s in scores])


def test_delong_variance_agrees_with_bootstrap():
    rng = np.random.default_rng(8)
    y = (rng.random(400) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-(1.2 * y + rng.normal(size=400))))
    _, var, _, _ = delong_ci(y, p)
    ci = bootstrap_module.bootstrap_auroc(y, p, np.arange(400), n_boot=2000, seed=0)
    # bootstrap variance from the 95% percentile interval (normal approximation)
    boot_sd = (ci["macro"]["high"] - ci["macro"]["low"]) / (2 * 1.959964)
    assert 0.8 < boot_sd / np.sqrt(var) < 1.25


def test_delong_identical_models_and_undefined_class():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    p = np.array([[0.9, 0.1], [0.2, 0.3], [0.4, 0.6], [0.5, 0.2]])
    assert delong_test(y[:, 0], p[:, 0], p[:, 0])[2:] == (0.0, 1.0)
    result = compare_delong(y, p, p[::-1].copy(), ["A", "B"])
    assert result["B"]["auc_a"] is None and result["B"]["undefined"] == NO_POSITIVES
    with pytest.raises(EvaluationError, match=NO_POSITIVES):
        delong_test(y[:, 1], p[:, 1], p[:, 0])


# ------------------------------------------------------------------------------ calibration
def test_ece_on_hand_case_with_bin_counts():
    # 10 bins. .05 -> bin 0 (y 0): |0 - .05|; .15 -> bin 1 (y 1): |1 - .15| = .85;
    # .85 -> bin 8 (y 1): .15; .95 and 1.0 -> bin 9 (y 0, 0): |0 - .975| = .975, 2 images
    # ECE = (.05 + .85 + .15 + 2 * .975) / 5 = 3.0 / 5 = 0.6
    y, p = [0, 1, 1, 0, 0], [0.05, 0.15, 0.85, 0.95, 1.0]
    data = reliability(y, p, n_bins=10)
    assert data["ece"] == pytest.approx(0.6)
    assert data["count"] == [1, 1, 0, 0, 0, 0, 0, 0, 1, 2]
    assert data["mean_predicted"][9] == pytest.approx(0.975)
    assert data["mean_predicted"][2] is None and data["fraction_positive"][8] == 1.0
    assert expected_calibration_error(y, p, n_bins=1) == pytest.approx(abs(0.4 - 0.6))


def test_temperature_scaling_lowers_nll_on_overconfident_toy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 2))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(int)
    p_over = 1 / (1 + np.exp(-3 * z))  # three times over-confident
    scaler = TemperatureScaler().fit(p_over[:2000], y[:2000])
    assert scaler.temperature_ == pytest.approx(3.0, abs=0.4)
    test_p = scaler.transform(p_over[2000:])
    assert binary_nll(y[2000:], test_p) < binary_nll(y[2000:], p_over[2000:]) - 0.05
    assert scaler.nll_after_ < scaler.nll_before_
    before = calibration_report(y[2000:], p_over[2000:])["macro_ece"]
    assert calibration_report(y[2000:], test_p)["macro_ece"] < before
    assert roc_auc_score(y[2000:, 0], test_p[:, 0]) == pytest.approx(
        roc_auc_score(y[2000:, 0], p_over[2000:, 0])
    )
    with pytest.raises(EvaluationError, match="not fitted"):
        TemperatureScaler().transform(p_over)


# ------------------------------------------------------------------------------ subgroups
def test_age_bands():
    assert age_band_labels((40, 60, 80)) == ["<40", "40-59", "60-79", ">=80"]
    bands = age_bands([39, 40, 59, 60, 80, 95, None])
    assert bands.tolist() == ["<40", "40-59", "40-59", "60-79", ">=80", ">=80", "unknown"]
    with pytest.raises(EvaluationError, match="increasing integers"):
        age_band_labels((60, 40))


def test_subgroup_auroc_counts_and_undefined_group():
    y, p, ids = _toy(n_patients=40, per_patient=2, k=2, seed=1)
    n = y.shape[0]
    sex = np.where(np.arange(n) < n / 2, "F", "M")
    meta = pd.DataFrame({"sex": sex, "age": np.repeat(np.arange(40) * 2, 2), "view": "PA"})
    y[: n // 2, 1] = 0  # no B positives among the women
    result = subgroup_auroc(y, p, ids, meta, ["A", "B"], n_boot=100, seed=0)
    women = result["groupings"]["sex"]["F"]
    assert women["n_images"] == n // 2 and women["n_patients"] == 20
    assert women["per_class"]["B"]["auroc"] is None
    assert women["per_class"]["B"]["undefined"] == NO_POSITIVES
    assert women["macro"]["classes"] == ["A"]
    rows = np.arange(n // 2)
    expected = roc_auc_score(y[rows, 0], p[rows, 0])
    assert women["per_class"]["A"]["auroc"] == pytest.approx(expected)
    assert women["macro"]["auroc"] == pytest.approx(expected)
    assert set(result["groupings"]["age_band"]) == {"<40", "40-59", "60-79"}
    assert list(result["groupings"]["view"]) == ["PA"]
    with pytest.raises(EvaluationError, match="needs column 'view'"):
        subgroup_auroc(y, p, ids, meta.drop(columns="view"), ["A", "B"], n_boot=10)


def test_age_bands_are_listed_young_to_old_not_alphabetically():
    from cxrlab.evaluate.subgroups import subgroup_auroc

    rng = np.random.default_rng(0)
    n = 80
    y = np.tile([[0], [1]], (n // 2, 1))
    p = rng.random((n, 1))
    meta = pd.DataFrame({"age": np.repeat([85, 30, 50, 70], n // 4), "sex": "M", "view": "PA"})
    out = subgroup_auroc(y, p, np.arange(n), meta, ["Effusion"], by=("age_band",), n_boot=10)
    assert list(out["groupings"]["age_band"]) == ["<40", "40-59", "60-79", ">=80"]

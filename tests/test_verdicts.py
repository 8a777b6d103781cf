"""Issue 10: verdicts that survive noise, on the demo run's own predictions.

`tests/data/demo_test/` holds the test and validation predictions of a finished
`cxrlab demo` (SimpleCNN and EfficientNet-Lite0, 144 test images of 66 patients, 5 targets):
the small-sample case the issue's numbers come from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrlab.config import EvaluateConfig
from cxrlab.errors import EvaluationError
from cxrlab.evaluate import tables
from cxrlab.evaluate.bootstrap import bootstrap_ci, paired_bootstrap
from cxrlab.evaluate.calibration import TemperatureScaler
from cxrlab.evaluate.intervals import holm, proportion_ci, stability, verdict_from_ci
from cxrlab.evaluate.metrics import compute_metrics, read_predictions
from cxrlab.evaluate.subgroups import subgroup_auroc_of
from cxrlab.evaluate.thresholds import choose_thresholds
from cxrlab.evaluate.workflow import choose_for, evaluate_predictions
from cxrlab.report import summary

DEMO = Path(__file__).parent / "data" / "demo_test"


def demo(model: str, split: str = "test"):
    return read_predictions(DEMO / (f"{model}.csv" if split == "test" else f"{model}_val.csv"))


# ---- finding 1: temperature scaling must not move the operating point silently ----------


def _evaluate(tmp_path, thresholds, scaler):
    folder = tmp_path / "test"
    folder.mkdir(exist_ok=True)
    shutil.copy(DEMO / "simple_cnn.csv", folder / "predictions.csv")
    options = EvaluateConfig(bootstrap=20, figures=False)
    return evaluate_predictions(folder / "predictions.csv", thresholds, options, scaler=scaler)


def test_thresholds_are_rechosen_on_temperature_scaled_validation(tmp_path):
    val, test = demo("simple_cnn", "val"), demo("simple_cnn")
    options = EvaluateConfig()
    scaler = TemperatureScaler().fit(val.p, val.y)
    assert scaler.temperature_ == pytest.approx(0.868, abs=1e-3)
    raw = compute_metrics(test.y, test.p, choose_for(val, options), test.targets)
    result = _evaluate(tmp_path, choose_for(val, options, scaler), scaler)
    for t in test.targets:  # the same validation operating point, so the same test one
        assert result["metrics"]["per_class"][t]["sensitivity"] == pytest.approx(
            raw["per_class"][t]["sensitivity"]
        )
    assert result["metrics"]["per_class"]["Cardiomegaly"]["sensitivity"] == pytest.approx(16 / 18)
    assert result["thresholds_on"] == "validation, temperature-scaled (T = 0.868) probabilities"


def test_raw_thresholds_are_refused_on_scaled_probabilities(tmp_path):
    """The old path: chosen on raw val, applied to scaled test (Cardiomegaly 0.889 -> 0.611)."""
    val = demo("simple_cnn", "val")
    scaler = TemperatureScaler().fit(val.p, val.y)
    raw = choose_thresholds(val.y, val.p, val.targets)
    with pytest.raises(EvaluationError, match="temperature-scaled"):
        _evaluate(tmp_path, raw, scaler)


def test_fixed_sensitivity_threshold_keeps_its_sensitivity_under_temperature():
    val, test = demo("simple_cnn", "val"), demo("simple_cnn")
    options = EvaluateConfig(threshold="fixed_sensitivity", target_sensitivity=0.9)
    scaler = TemperatureScaler().fit(val.p, val.y)
    scaled = choose_for(val, options, scaler)
    on_val = compute_metrics(val.y, scaler.transform(val.p), scaled, val.targets)
    for t in val.targets:
        assert on_val["per_class"][t]["sensitivity"] >= 0.9
    raw = compute_metrics(test.y, test.p, choose_for(val, options), test.targets)
    cal = compute_metrics(test.y, scaler.transform(test.p), scaled, test.targets)
    for t in test.targets:
        assert cal["per_class"][t]["tp"] == raw["per_class"][t]["tp"]


# ---- finding 2: "beats the all-negative predictor?" from the CI of the difference ---------


def test_one_cell_in_720_is_not_shown_to_beat_the_all_negative_predictor():
    test = demo("simple_cnn")
    val = demo("simple_cnn", "val")
    thresholds = choose_thresholds(val.y, val.p, val.targets)
    metrics = compute_metrics(test.y, test.p, thresholds, test.targets)
    ml = metrics["multilabel"]
    cells = ml["n_images"] * ml["n_labels"]
    gained = (ml["hamming_accuracy"] - ml["all_negative"]["hamming_accuracy"]) * cells
    assert cells == 720 and round(gained) == 1  # the case
    ci = bootstrap_ci(test.y, test.p, test.patient_ids, thresholds, test.targets, n_boot=2000)
    gain = ci["vs_all_negative"]["hamming_accuracy"]
    assert gain["low"] < 0 < gain["high"] and gain["verdict"] == "not shown"
    rows = summary.baseline_rows({"simple_cnn": {"result": {"metrics": metrics, "ci": ci}}})
    assert rows[0]["hamming_accuracy_verdict"] == "not shown"


def test_baseline_verdict_has_three_outcomes_on_hand_cases():
    y = np.zeros((40, 2), dtype=int)
    y[:20, 0] = 1
    ids = np.arange(40)
    good = y.astype(float) * 0.9 + 0.05  # every positive found, nothing else
    bad = np.full((40, 2), 0.9)  # everything predicted positive
    assert (
        bootstrap_ci(y, good, ids, 0.5, n_boot=200)["vs_all_negative"]["hamming_accuracy"][
            "verdict"
        ]
        == "better"
    )
    assert (
        bootstrap_ci(y, bad, ids, 0.5, n_boot=200)["vs_all_negative"]["hamming_accuracy"]["verdict"]
        == "worse"
    )
    assert verdict_from_ci(-0.01, 0.02) == "not shown" and verdict_from_ci(None, 1) is None


# ---- finding 3: model comparisons stable under the bootstrap seed, Holm across classes ----


def test_comparison_verdicts_are_identical_across_five_bootstrap_seeds():
    a, b = demo("efficientnet_lite0"), demo("simple_cnn")
    n_boot = EvaluateConfig().bootstrap
    assert n_boot >= 2000
    verdicts = []
    for seed in range(5):
        result = paired_bootstrap(a.y, a.p, b.p, a.patient_ids, n_boot=n_boot, seed=seed,
                                  targets=a.targets)  # fmt: skip
        verdicts.append({t: e["verdict"] for t, e in result["per_class"].items()})
        verdicts[-1]["macro"] = result["macro"]["verdict"]
    assert all(v == verdicts[0] for v in verdicts)
    # Atelectasis (raw p ~ 0.03-0.06 depending on the seed) is not shown after Holm
    assert verdicts[0]["Atelectasis"] == "not shown" and verdicts[0]["macro"] == "better"


def test_paired_p_at_its_floor_is_printed_as_a_bound():
    a, b = demo("efficientnet_lite0"), demo("simple_cnn")
    result = paired_bootstrap(a.y, a.p, b.p, a.patient_ids, n_boot=300, seed=0, targets=a.targets)
    assert result["p_floor"] == pytest.approx(2 / 301)
    entry = result["per_class"]["Pneumothorax"]
    assert entry["p_at_floor"] and entry["p_holm"] == pytest.approx(5 * 2 / 301)
    table = tables.paired_table(result)
    assert table.loc["Pneumothorax", "p"] == "< 0.0066 (floor 2/(B+1))"
    assert "0.007" not in table["p"].tolist()


def test_holm_matches_hand_computation():
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert holm([0.5, 0.4]) == [0.8, 0.8] and holm([None]) == [None] and holm([]) == []


@pytest.mark.parametrize("m", [1, 2, 5, 14])
def test_holm_matches_statsmodels(m):
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(m)
    p = np.r_[rng.random(m) ** 3, [0.02] * (m // 2)]  # small ones, ties, some above 1 / m
    assert holm(list(p)) == pytest.approx(list(multipletests(p, method="holm")[1]), abs=1e-15)


# ---- finding 4: intervals for proportions that cannot collapse; unstable marks -----------


def test_precision_from_six_predicted_positives_has_a_real_interval():
    val, test = demo("efficientnet_lite0", "val"), demo("efficientnet_lite0")
    thresholds = choose_thresholds(val.y, val.p, val.targets)
    metrics = compute_metrics(test.y, test.p, thresholds, test.targets)
    ci = bootstrap_ci(test.y, test.p, test.patient_ids, thresholds, test.targets, n_boot=200)
    pneumothorax = metrics["per_class"]["Pneumothorax"]
    assert pneumothorax["tp"] + pneumothorax["fp"] == 6 and pneumothorax["precision"] == 1.0
    precision = ci["per_class"]["Pneumothorax"]["precision"]
    assert precision["high"] == 1.0 and precision["low"] < 0.7  # Wilson 6/6: [0.61, 1]
    assert precision["unstable"] == "unstable: predicted+ = 6 < 10"
    table = tables.per_class_table(metrics, ci).to_string()
    assert "[1.000, 1.000]" not in table
    assert "1.000 [0.610, 1.000] (unstable: predicted+ = 6 < 10)" in table


def test_wilson_widened_by_the_patient_design_effect():
    hits = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
    alone = proportion_ci(hits)
    clustered = proportion_ci(hits, clusters=[0, 0, 0, 0, 1, 1, 1, 1, 2, 3])
    assert clustered["design_effect"] > 1
    assert clustered["low"] < alone["low"] and clustered["high"] > alone["high"]
    assert proportion_ci(hits, clusters=np.arange(10))["design_effect"] == 1.0
    assert stability(n_pos=9, n_neg=100) == "unstable: n+ = 9 < 10" and stability(n_pos=10) is None


def test_subgroup_auroc_from_one_positive_is_marked_and_shows_no_false_interval():
    test = demo("efficientnet_lite0")
    groups = subgroup_auroc_of(test, n_boot=50, seed=0)
    entry = groups["groupings"]["age_band"]["<40"]["per_class"]["Pneumothorax"]
    assert entry["n_pos"] == 1 and entry["unstable"] == "unstable: n+ = 1 < 10"
    cell = tables.subgroup_table(groups).loc[("age_band", "<40"), "Pneumothorax"]
    assert "[1.000, 1.000]" not in cell and "unstable: n+ = 1 < 10" in cell


# ---- finding 5: subgroup macros over one common class set, named -------------------------


def test_subgroup_macros_average_the_same_classes_and_say_which():
    test = demo("efficientnet_lite0")
    groups = subgroup_auroc_of(test, n_boot=50, seed=0)["groupings"]["age_band"]
    compared = {name: block["macro"]["classes"] for name, block in groups.items()}
    expected = ["Atelectasis", "Effusion", "Infiltration", "Pneumothorax"]  # no Cardiomegaly <40
    assert compared["<40"] == compared["40-59"] == compared["60-79"] == expected
    assert compared[">=80"] == []  # one image: nothing to compare
    table = tables.subgroup_table({"groupings": {"age_band": groups}})
    assert table.loc[("age_band", "40-59"), "macro averages"] == (
        "Atelectasis, Effusion, Infiltration, Pneumothorax (left out: Cardiomegaly)"
    )
    mean = np.mean([groups["40-59"]["per_class"][t]["auroc"] for t in expected])
    assert groups["40-59"]["macro"]["auroc"] == pytest.approx(mean)


# ---- finding 7 (part): DeLong labelled, --split val said in the result -------------------


def test_delong_is_labelled_with_its_assumption():
    assert "independent images" in tables.DELONG_COLUMN


def test_evaluating_on_val_says_so_in_the_result(tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    shutil.copy(DEMO / "simple_cnn_val.csv", folder / "predictions.csv")
    val = demo("simple_cnn", "val")
    options = EvaluateConfig(split="val", bootstrap=20, figures=False)
    result = evaluate_predictions(folder / "predictions.csv", choose_for(val, options), options)
    assert result["split"] == "val" and "optimistic" in result["notes"][0]

"""cxrlab.evaluate.metrics: every value checked against a hand-worked answer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrlab.errors import EvaluationError
from cxrlab.evaluate.metrics import (
    NO_NEGATIVES,
    NO_POSITIVES,
    NO_PREDICTED_POSITIVES,
    check_same_run,
    compute_metrics,
    multilabel_metrics,
    read_predictions,
    resolve_thresholds,
)

# Class A: y = [0, 0, 1, 1], p = [.1, .4, .35, .8]
#   (positive, negative) pairs: (.35,.1) win, (.35,.4) loss, (.8,.1) win, (.8,.4) win
#   -> AUROC = 3/4.
#   AP, scores descending: .8 (pos) P=1 R=1/2; .4 (neg); .35 (pos) P=2/3 R=1
#   -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
#   At 0.5: y_hat = [0, 0, 0, 1] -> TP 1, FP 0, TN 2, FN 1: accuracy 3/4, precision 1,
#   sensitivity 1/2, specificity 1, F1 = 2*1 / (2*1 + 0 + 1) = 2/3.
# Class B: y = [0, 1, 0, 1], p = [.6, .7, .9, .95]
#   pairs: (.7,.6) win, (.7,.9) loss, (.95,.6) win, (.95,.9) win -> AUROC = 3/4.
# Micro AUROC pools positives {.35, .8, .7, .95} against negatives {.1, .4, .6, .9}:
#   .35 beats 1, .8 beats 3, .7 beats 3, .95 beats 4 -> 11/16 = 0.6875 != macro 0.75.
Y_A = np.array([0, 0, 1, 1])
P_A = np.array([0.1, 0.4, 0.35, 0.8])
Y_B = np.array([0, 1, 0, 1])
P_B = np.array([0.6, 0.7, 0.9, 0.95])


def test_auroc_ap_and_threshold_metrics_match_hand_working():
    m = compute_metrics(Y_A, P_A, thresholds=0.5, targets=["A"])
    a = m["per_class"]["A"]
    assert a["auroc"] == pytest.approx(0.75)
    assert a["ap"] == pytest.approx(5 / 6)
    assert a["ap_baseline"] == pytest.approx(0.5)  # prevalence
    assert (a["tp"], a["fp"], a["tn"], a["fn"]) == (1, 0, 2, 1)
    assert a["accuracy"] == pytest.approx(0.75)
    assert a["precision"] == pytest.approx(1.0)
    assert a["sensitivity"] == a["recall"] == pytest.approx(0.5)
    assert a["specificity"] == pytest.approx(1.0)
    assert a["f1"] == pytest.approx(2 / 3)
    assert a["undefined"] == {}


def test_threshold_is_inclusive_p_at_threshold_counts_positive():
    # At t = 0.35 the image with p = .35 is positive: TP 2, FP 1 (the .4), FN 0.
    a = compute_metrics(Y_A, P_A, thresholds=0.35, targets=["A"])["per_class"]["A"]
    assert (a["tp"], a["fp"], a["tn"], a["fn"]) == (2, 1, 1, 0)
    assert a["at_0.5"]["tp"] == 1  # 0.5 always reported beside the chosen threshold


def test_micro_and_macro_auroc_differ_as_hand_worked():
    y = np.column_stack([Y_A, Y_B])
    p = np.column_stack([P_A, P_B])
    m = compute_metrics(y, p, targets=["A", "B"])
    assert m["per_class"]["B"]["auroc"] == pytest.approx(0.75)
    assert m["macro"]["auroc"] == pytest.approx(0.75)
    assert m["micro"]["auroc"] == pytest.approx(11 / 16)


def test_hamming_exact_match_and_all_negative_baseline():
    # y_hat at 0.5 = [[0,0],[0,0],[1,0],[1,0]]; wrong cells: (1, B) and (3, A)
    # Hamming = 6/8 = .75; exact match: rows 0 and 2 -> 2/4 = .5
    # all-negative: Hamming = 1 - 2 positives / 8 = .75; exact: rows 0 and 3 -> .5
    y = np.array([[0, 0], [0, 1], [1, 0], [0, 0]])
    p = np.array([[0.2, 0.1], [0.3, 0.4], [0.7, 0.2], [0.6, 0.1]])
    m = compute_metrics(y, p, targets=["A", "B"])
    ml = m["multilabel"]
    assert ml["hamming_accuracy"] == pytest.approx(0.75)
    assert ml["exact_match"] == pytest.approx(0.5)
    assert ml["all_negative"] == {"hamming_accuracy": 0.75, "exact_match": 0.5}
    # The model does not beat "predict nothing": the notes must say so, for both.
    assert sum("does not beat the all-negative" in n for n in m["notes"]) == 2


def test_no_baseline_note_when_model_beats_all_negative():
    y = np.array([[1, 0], [0, 1], [0, 0]])
    m = compute_metrics(y, y * 0.9 + 0.05, targets=["A", "B"])
    assert m["multilabel"]["exact_match"] == 1.0
    assert not any("all-negative" in n for n in m["notes"])


def test_published_mistake_is_visible_at_nih_prevalence(nih_metadata):
    """The issue: 'no finding' everywhere scores 88.8% Hamming and 65.5% exact match on the
    four default labels over all 112,120 NIH images; our baseline must reproduce that."""
    from cxrlab.labels import DEFAULT_TARGETS, label_matrix, parse_finding_labels

    frame = pd.read_csv(nih_metadata / "Data_Entry_2017_v2020.csv.gz")
    y = label_matrix([parse_finding_labels(t) for t in frame["Finding Labels"]], DEFAULT_TARGETS)
    base = multilabel_metrics(y, np.zeros_like(y))["all_negative"]
    assert round(base["hamming_accuracy"], 3) == 0.888
    assert round(base["exact_match"], 3) == 0.655


def test_class_without_positives_is_undefined_and_excluded_from_macro():
    y = np.column_stack([Y_A, np.zeros(4, int), np.ones(4, int)])
    p = np.column_stack([P_A, P_B, P_B])
    m = compute_metrics(y, p, targets=["A", "Empty", "Full"])
    empty, full = m["per_class"]["Empty"], m["per_class"]["Full"]
    assert empty["auroc"] is None and empty["ap"] is None
    assert empty["undefined"]["auroc"] == NO_POSITIVES
    assert empty["undefined"]["sensitivity"] == NO_POSITIVES
    assert full["auroc"] is None and full["undefined"]["auroc"] == NO_NEGATIVES
    assert m["macro"]["auroc"] == pytest.approx(0.75)  # A alone, not (0.75 + 0.5 + 0.5) / 3
    assert m["macro"]["excluded"]["auroc"] == ["Empty", "Full"]
    assert m["macro"]["n_classes"]["auroc"] == 1
    assert any("macro auroc excludes Empty, Full" in n for n in m["notes"])
    json.dumps(m, allow_nan=False)  # plain, strict JSON


def test_precision_without_predicted_positives_is_undefined_not_zero():
    m = compute_metrics(Y_A, P_A, thresholds=0.9, targets=["A"])["per_class"]["A"]
    assert m["precision"] is None
    assert m["undefined"]["precision"] == NO_PREDICTED_POSITIVES
    assert m["f1"] == 0.0  # positives exist but none predicted: F1 = 0 / (0 + 0 + 2)


def test_matches_scikit_learn_on_random_data():
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    rng = np.random.default_rng(7)
    y = (rng.random((300, 3)) < 0.3).astype(int)
    p = np.clip(0.4 * y + 0.6 * rng.random((300, 3)), 0, 1)
    thr = [0.3, 0.5, 0.7]
    m = compute_metrics(y, p, thr, ["a", "b", "c"])
    for k, name in enumerate("abc"):
        y_hat = p[:, k] >= thr[k]
        entry = m["per_class"][name]
        assert entry["f1"] == pytest.approx(f1_score(y[:, k], y_hat))
        assert entry["precision"] == pytest.approx(precision_score(y[:, k], y_hat))
        assert entry["sensitivity"] == pytest.approx(recall_score(y[:, k], y_hat))
    assert m["macro"]["auroc"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert m["micro"]["auroc"] == pytest.approx(roc_auc_score(y, p, average="micro"))
    assert m["micro"]["f1"] == pytest.approx(f1_score(y, p >= thr, average="micro"))


def test_resolve_thresholds_accepts_json_form_and_rejects_mismatch():
    chosen = {"A": {"threshold": 0.3, "method": "max_f1"}, "B": {"threshold": 0.6}}
    assert resolve_thresholds(chosen, ["A", "B"]).tolist() == [0.3, 0.6]
    assert resolve_thresholds({"A": 0.1, "B": 0.2}, ["B", "A"]).tolist() == [0.2, 0.1]
    assert resolve_thresholds(None, ["A", "B"]).tolist() == [0.5, 0.5]
    with pytest.raises(EvaluationError, match=r"\['A'\] but the targets are \['A', 'C'\]"):
        resolve_thresholds({"A": 0.1}, ["A", "C"])
    with pytest.raises(EvaluationError, match=r"in \[0, 1\]"):
        resolve_thresholds([0.2, 1.5], ["A", "B"])


def test_nan_probabilities_raise_with_column_and_count():
    p = np.array([[0.1, np.nan], [0.2, np.nan], [0.3, 0.4]])
    with pytest.raises(EvaluationError, match="p_B has 2 NaN"):
        compute_metrics(np.zeros((3, 2)), p, targets=["A", "B"])


# ---------------------------------------------------------------- predictions files
def _write_predictions(path, **overrides):
    frame = pd.DataFrame(
        {
            "Image Index": ["a.png", "b.png", "c.png", "d.png"],
            "Patient ID": ["1", "1", "2", "3"],
            "p_Effusion": P_A,
            "y_Effusion": Y_A,
            "p_Atelectasis": P_B,
            "y_Atelectasis": Y_B,
            "age": [30, 45, 70, 85],
            "sex": ["M", "M", "F", "F"],
            "view": ["PA", "PA", "AP", "PA"],
        }
    )
    for column, values in overrides.items():
        if values is None:
            frame = frame.drop(columns=column)
        else:
            frame[column] = values
    frame.to_csv(path, index=False)
    return path


def test_read_predictions_round_trip_in_requested_order(tmp_path):
    path = _write_predictions(tmp_path / "predictions.csv")
    preds = read_predictions(path, targets=["Atelectasis", "Effusion"])
    assert preds.targets == ("Atelectasis", "Effusion")
    assert preds.y[:, 1].tolist() == Y_A.tolist()
    assert preds.p[:, 0].tolist() == P_B.tolist()
    assert preds.patient_ids.tolist() == ["1", "1", "2", "3"]
    assert list(preds.meta.columns) == ["age", "sex", "view"]
    assert preds.y.dtype == np.int8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"p_Effusion": [0.1, np.nan, np.nan, 0.2]}, "p_Effusion has 2 NaN"),
        ({"p_Effusion": [0.1, 1.7, 0.3, 0.2]}, r"p_Effusion has 1 value\(s\) outside \[0, 1\]"),
        ({"y_Effusion": [0, 2, 1, 1]}, r"y_Effusion has 1 value\(s\) that are not 0/1"),
        ({"y_Atelectasis": None}, r"p_ columns for \['Atelectasis', 'Effusion'\], y_ columns"),
        ({"Patient ID": None}, r"missing column\(s\) \['Patient ID'\]"),
    ],
)
def test_read_predictions_rejects_bad_files(tmp_path, override, message):
    path = _write_predictions(tmp_path / "predictions.csv", **override)
    with pytest.raises(EvaluationError, match=message):
        read_predictions(path)


def test_read_predictions_names_both_label_sets_on_mismatch(tmp_path):
    path = _write_predictions(tmp_path / "predictions.csv")
    with pytest.raises(EvaluationError, match=r"file has \['Atelectasis', 'Effusion'\], expected"):
        read_predictions(path, targets=["Effusion", "Pneumothorax"])


def test_check_same_run(tmp_path):
    meta = {"run_id": "r1", "split_hash": "abc", "model": "resnet18", "targets": ["Effusion"]}
    assert check_same_run(meta, "abc")["run_id"] == "r1"
    sidecar = tmp_path / "predictions.json"
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(EvaluationError, match="another run: split_hash 'abc'.*'xyz'"):
        check_same_run(sidecar, "xyz")
    with pytest.raises(EvaluationError, match=r"lacks \['split_hash'\]"):
        check_same_run({k: v for k, v in meta.items() if k != "split_hash"}, "abc")

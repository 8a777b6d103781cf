"""The evaluate, compare and analyze workflows on tiny trained models: the glue between stages.

Two SimpleCNNs are trained once per module on `make_tiny_run`'s 64 blob images (32 px) and
evaluated with 20 bootstrap resamples; each test checks one contract of the run directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrlab.analysis.workflow import analysis_dir, analyze_model
from cxrlab.config import DataConfig, EvaluateConfig
from cxrlab.data.prepare import prepare
from cxrlab.data.rundata import load_run_data
from cxrlab.errors import CxrError, DataError, EvaluationError
from cxrlab.evaluate.compare import compare_models
from cxrlab.evaluate.metrics import read_predictions
from cxrlab.evaluate.thresholds import choose_thresholds, load_thresholds
from cxrlab.evaluate.workflow import evaluate_model
from cxrlab.models.checkpoint import load_model_from_checkpoint
from cxrlab.models.inference import predict_images
from cxrlab.train.engine import train_model
from helpers_run import make_tiny_run

TARGETS = ["Atelectasis", "Effusion"]
N_BOOT = 20


def _config(lr: float = 3e-3, epochs: int = 2) -> dict:
    return {
        "model": {"name": "simple_cnn", "kwargs": {"base_width": 8, "depth": 3}},
        "optim": {"lr": lr},
        "train": {"epochs": epochs, "batch_size": 16, "patience": 10},
    }


def _options(**kwargs) -> EvaluateConfig:
    return EvaluateConfig(bootstrap=N_BOOT, **kwargs)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run with models `a` and `b` trained and evaluated on test."""
    run_dir = make_tiny_run(tmp_path_factory.mktemp("eval"), n=64, size=32)
    for name, lr in (("a", 3e-3), ("b", 1e-3)):
        train_model(run_dir, _config(lr), name=name, progress_bar=False)
        evaluate_model(run_dir, name, _options(), progress=False)
    return run_dir


def _cohort(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "data" / "cohort.csv", dtype={"Image Index": str})


def _metrics(run_dir: Path, name: str, split: str = "test") -> dict:
    return json.loads((run_dir / "reports" / name / split / "metrics.json").read_text())


# ---- evaluate ---------------------------------------------------------------------------------
def test_predictions_cover_the_test_split_in_cohort_order(run: Path):
    cohort = _cohort(run)
    test = cohort[cohort["split"] == "test"].reset_index(drop=True)
    frame = pd.read_csv(
        run / "reports" / "a" / "test" / "predictions.csv", dtype={"Image Index": str}
    )
    labels = [c for t in TARGETS for c in (f"p_{t}", f"y_{t}")]
    assert list(frame.columns) == [
        "Image Index",
        "Patient ID",
        *labels,
        "age",
        "sex",
        "view",
        "follow_up",
    ]
    assert frame["Image Index"].tolist() == test["Image Index"].tolist()
    for t in TARGETS:
        assert frame[f"y_{t}"].tolist() == test[t].tolist()
        assert frame[f"p_{t}"].between(0, 1).all()
    sidecar = json.loads((run / "reports" / "a" / "test" / "predictions.json").read_text())
    summary = json.loads((run / "data" / "split_summary.json").read_text())
    assert sidecar["split"] == "test" and sidecar["model"] == "a"
    assert sidecar["split_hash"] == summary["split_hash"] and sidecar["targets"] == TARGETS
    # the probabilities are the checkpoint's own forward pass over those cache rows
    model, info = load_model_from_checkpoint(run / "models" / "a" / "best.ckpt")
    data = load_run_data(run)
    probs = predict_images(model, data.images, data.rows("test"), info["mean"], info["std"])
    p = frame[[f"p_{t}" for t in TARGETS]].to_numpy()
    np.testing.assert_allclose(p, probs, atol=1e-6)
    val = pd.read_csv(run / "reports" / "a" / "val" / "predictions.csv", dtype={"Image Index": str})
    assert (
        val["Image Index"].tolist() == cohort.loc[cohort["split"] == "val", "Image Index"].tolist()
    )


def test_thresholds_are_chosen_on_val_and_applied_to_test(run: Path):
    val = read_predictions(run / "reports" / "a" / "val" / "predictions.csv")
    expected = choose_thresholds(val.y, val.p, val.targets, "max_f1")
    saved = load_thresholds(run / "models" / "a" / "thresholds.json", TARGETS)
    assert saved == expected
    payload = json.loads((run / "models" / "a" / "thresholds.json").read_text())
    assert payload["chosen_on"] == "val"
    metrics = _metrics(run, "a")
    applied = metrics["metrics"]["thresholds"]
    assert applied == {t: expected[t]["threshold"] for t in TARGETS}
    # confusion counts on test are those of the val thresholds, recounted by hand here
    test = read_predictions(run / "reports" / "a" / "test" / "predictions.csv")
    for k, t in enumerate(TARGETS):
        predicted = test.p[:, k] >= applied[t]
        cell = metrics["metrics"]["per_class"][t]
        assert cell["tp"] == int((predicted & (test.y[:, k] == 1)).sum())
        assert cell["fp"] == int((predicted & (test.y[:, k] == 0)).sum())
        assert cell["auroc"] == pytest.approx(roc_auc_score(test.y[:, k], test.p[:, k]))


def test_metrics_carry_patient_bootstrap_ci_blocks(run: Path):
    metrics = _metrics(run, "a")
    ci = metrics["ci"]
    assert ci["n_boot"] == N_BOOT and ci["unit"] == "patient"
    assert metrics["n_images"] == 13 and ci["n_images"] == 13
    for t in TARGETS:
        for name in ("auroc", "ap", "f1", "sensitivity", "specificity"):
            block = ci["per_class"][t][name]
            assert block["low"] <= block["estimate"] <= block["high"], (t, name)
        estimate = ci["per_class"][t]["auroc"]["estimate"]
        assert estimate == pytest.approx(metrics["metrics"]["per_class"][t]["auroc"])
    assert ci["macro"]["auroc"]["low"] <= ci["macro"]["auroc"]["high"]
    for table in ("per_class", "multilabel", "thresholds", "subgroups"):
        assert (run / "reports" / "a" / "test" / f"{table}.csv").stat().st_size > 0


def test_evaluation_figures_are_written(run: Path):
    figures = run / "reports" / "a" / "test" / "figures"
    for stem in ("roc", "pr", "confusion", "reliability", "training"):
        png = figures / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert png.stat().st_size > 2000, stem  # a drawn figure, not an empty canvas


def test_model_trained_on_another_split_is_refused(run: Path, tmp_path: Path):
    other = make_tiny_run(tmp_path, n=64, size=32, seed=5, name="other")
    shutil.copytree(run / "models" / "a", other / "models" / "a")
    with pytest.raises(DataError, match="trained on split .* but the run holds split"):
        evaluate_model(other, "a", _options(), progress=False)
    assert not (other / "reports" / "a" / "test" / "metrics.json").exists()


def test_unknown_model_lists_the_trained_ones(run: Path):
    with pytest.raises(CxrError, match=r"no trained model 'zz'.*trained: a, b"):
        evaluate_model(run, "zz", _options(), progress=False)


# ---- compare ----------------------------------------------------------------------------------
def test_compare_writes_delong_and_paired_bootstrap(run: Path):
    summary = compare_models(run, "test", ["a", "b"], n_boot=N_BOOT, seed=0)
    out = run / "reports" / "compare" / "test"
    on_disk = json.loads((out / "comparison.json").read_text())
    assert on_disk["models"] == ["a", "b"] and on_disk["n_images"] == 13
    pair = on_disk["pairs"]["a vs b"]
    a = read_predictions(run / "reports" / "a" / "test" / "predictions.csv")
    b = read_predictions(run / "reports" / "b" / "test" / "predictions.csv")
    for k, t in enumerate(TARGETS):
        auc_a, auc_b = roc_auc_score(a.y[:, k], a.p[:, k]), roc_auc_score(b.y[:, k], b.p[:, k])
        assert pair["delong"][t]["auc_a"] == pytest.approx(auc_a)
        assert pair["delong"][t]["auc_b"] == pytest.approx(auc_b)
        assert 0 <= pair["delong"][t]["p_value"] <= 1
        boot = pair["paired_bootstrap"]["per_class"][t]
        assert boot["delta"] == pytest.approx(auc_a - auc_b)
        assert boot["n_valid"] + boot["n_skipped"] == N_BOOT
        better = "a" if auc_a >= auc_b else "b"
        assert on_disk["best"][t]["model"] == better
    assert pair["paired_bootstrap"]["unit"] == "patient"
    assert summary["auroc"]["a"]["macro"] == _metrics(run, "a")["ci"]["macro"]["auroc"]
    for name in ("auroc.csv", "paired_a_vs_b.csv", "figures/roc.png", "figures/auroc_bars.png"):
        assert (out / name).stat().st_size > 0, name


def test_compare_refuses_predictions_over_different_images(run: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    path = copy / "reports" / "b" / "test" / "predictions.csv"
    frame = pd.read_csv(path, dtype={"Image Index": str})
    frame.iloc[1:].to_csv(path, index=False)
    with pytest.raises(EvaluationError, match="different images"):
        compare_models(copy, "test", ["a", "b"], n_boot=N_BOOT)
    with pytest.raises(EvaluationError, match="no evaluated model"):
        compare_models(copy, "val")  # val predictions exist, but nothing was evaluated on val


def test_compare_refuses_predictions_from_another_runs_split(run: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    sidecar = copy / "reports" / "b" / "test" / "predictions.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "split_hash": "0" * 64}))
    with pytest.raises(EvaluationError, match="another run"):
        compare_models(copy, "test", ["a", "b"], n_boot=N_BOOT)


# ---- analyze ----------------------------------------------------------------------------------
def test_analyze_writes_features_with_the_split_ids(run: Path):
    result = analyze_model(run, "a", split="test", n_components=5, k_min=2, k_max=3, progress=False)
    out = analysis_dir(run, "a")
    cohort = _cohort(run)
    with np.load(out / "features_penultimate.npz", allow_pickle=False) as z:
        ids, features = z["ids"].tolist(), z["features"]
    assert ids == cohort.loc[cohort["split"] == "test", "Image Index"].tolist()
    assert features.shape == (13, 8 * 2 ** (3 - 1))  # SimpleCNN: base_width * 2^(depth-1)
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["layer"] == "penultimate" and analysis["targets"] == TARGETS
    assert result["layer"] == "penultimate"
    assert (out / "summary.md").read_text().strip()


# ---- external test set --------------------------------------------------------------------------
@pytest.mark.slow
def test_external_dev_set_is_predicted_without_the_runs_own_images(nih_dev: Path, tmp_path: Path):
    run_dir = tmp_path / "dev"
    options = DataConfig(data_root=str(nih_dev), pathologies=TARGETS, n_images=200, image_size=32)
    prepare(options, run_dir, progress=False)
    train_model(run_dir, _config(epochs=1), name="m", progress_bar=False)
    evaluate_model(run_dir, "m", _options(), progress=False)
    result = evaluate_model(run_dir, "m", _options(), data_root=nih_dev, progress=False)
    out = run_dir / "reports" / "m" / "external-nih-cxr14-dev"
    frame = pd.read_csv(out / "predictions.csv", dtype={"Image Index": str, "Patient ID": str})
    cohort = load_run_data(run_dir).cohort
    entry = pd.read_csv(nih_dev / "Data_Entry_2017.csv", dtype={"Image Index": str})
    own_patients = set(cohort["Patient ID"].astype(int))
    expected = entry[~entry["Patient ID"].isin(own_patients)]  # whole patients left out
    assert len(frame) == len(expected) == result["n_images"] < 1108 - 199
    assert not set(frame["Image Index"]) & set(cohort["Image Index"])
    assert not set(frame["Patient ID"]) & set(cohort["Patient ID"])
    truth = entry.set_index("Image Index")["Finding Labels"].str.split("|")
    for t in TARGETS:
        assert frame[f"y_{t}"].tolist() == [int(t in truth[i]) for i in frame["Image Index"]]
    sidecar = json.loads((out / "predictions.json").read_text())
    assert sidecar["split"] == "external" and sidecar["data_root"] == str(nih_dev.resolve())
    assert (out / "metrics.json").is_file()

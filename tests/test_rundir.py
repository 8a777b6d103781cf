"""The run directory has one owner (cxrlab.rundir); a model runs only on data it fits.

The compatibility tests re-create the issue's case: a model trained on a 32-px cache, then
the same cohort re-prepared at 48 px (the split hash does not change). evaluate, analyze and
explain must all refuse it, naming both sizes, and write nothing.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlab.config import AnalyzeConfig, EvaluateConfig, ExplainConfig
from cxrlab.data.rundata import load_run_data
from cxrlab.errors import ConfigError, DataError, ModelError
from cxrlab.models.inference import resolve_device
from cxrlab.rundir import RunDir, check_folder_name
from cxrlab.train.engine import train_model
from helpers_run import make_tiny_run

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrlab"
TINY = {
    "model": {"name": "simple_cnn", "kwargs": {"base_width": 8, "depth": 3}},
    "train": {"epochs": 1, "batch_size": 16, "patience": 10},
}


# ---- one owner -------------------------------------------------------------------------------
def test_no_module_but_rundir_names_a_run_directory_file():
    """`grep` for the run directory's file names outside cxrlab.rundir finds nothing."""
    names = ("cohort.csv", "best.ckpt", "last.ckpt", "thresholds.json", "split_summary.json",
             "predictions.csv", "metrics.json", "config.yaml", "run.json", "boxes.csv",
             "prepare.json", "stages.json", "study.yaml", "report.html", "comparison.json",
             "analysis.json", "summary.md", "explain.json", "localization.json")  # fmt: skip
    pattern = re.compile("|".join(re.escape(f'"{n}"') for n in names))
    offenders = [
        f"{path.relative_to(SRC)}:{i}"
        for path in SRC.rglob("*.py")
        if path.name != "rundir.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_paths_follow_the_documented_layout(tmp_path: Path):
    paths = RunDir(tmp_path)
    assert paths.cohort == tmp_path / "data" / "cohort.csv"
    assert paths.cache == tmp_path / "data" / "cache"
    assert paths.model("m").best_ckpt == tmp_path / "models" / "m" / "best.ckpt"
    assert paths.model("m").thresholds == tmp_path / "models" / "m" / "thresholds.json"
    assert paths.evaluation("m", "test").metrics == tmp_path / "reports/m/test/metrics.json"
    assert paths.comparison("val") == tmp_path / "reports" / "compare" / "val"
    assert paths.explanation("m") == tmp_path / "reports" / "m" / "explain"
    assert paths.analysis("m") == tmp_path / "analysis" / "m"
    assert os.fspath(paths) == str(tmp_path)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\\b", "compare"])
def test_model_folder_names_are_plain(bad: str):
    with pytest.raises(ConfigError, match="plain folder name"):
        check_folder_name(bad)


def test_finding_a_model_lists_the_trained_ones(tmp_path: Path):
    paths = RunDir(tmp_path)
    for name, trained in (("a", True), ("b", False), ("c", True)):
        paths.model(name).path.mkdir(parents=True)
        if trained:
            paths.model(name).best_ckpt.write_bytes(b"")
    assert paths.trained_models() == ["a", "c"]
    assert paths.trained_model("a").path == tmp_path / "models" / "a"
    with pytest.raises(ModelError, match=r"no trained model 'b' .*\(trained: a, c\)"):
        paths.trained_model("b")
    with pytest.raises(ModelError, match="does not exist"):
        RunDir(tmp_path / "nope").trained_model("a")


def test_missing_run_directory_says_so(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        load_run_data(tmp_path / "nope")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(DataError, match=r"cohort.csv not found; run `cxrlab prepare"):
        load_run_data(tmp_path / "empty")


def test_cohort_is_read_once_with_string_ids(tmp_path: Path):
    run = make_tiny_run(tmp_path, n=40, size=16)
    data = load_run_data(run)
    assert len(data.cohort) == 40 == len(data.ids)
    assert all(isinstance(p, str) for p in data.patient_ids)
    assert data.patient_ids[0] == "00000001"  # leading zeros kept: not read as an integer
    assert data.ids.tolist() == list(data.cache.ids)


# ---- compatibility between a checkpoint and a run ----------------------------------------------
@pytest.fixture(scope="module")
def resized(tmp_path_factory) -> Path:
    """A 48-px run holding a model trained on the same cohort at 32 px."""
    root = tmp_path_factory.mktemp("compat")
    small = make_tiny_run(root, n=48, size=32, name="small")
    train_model(small, TINY, name="cnn", progress_bar=False)
    big = make_tiny_run(root, n=48, size=48, name="big")
    assert load_run_data(big).split_hash == load_run_data(small).split_hash
    shutil.copytree(small / "models" / "cnn", big / "models" / "cnn")
    return big


def _refuses_size(call, run: Path) -> None:
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(DataError, match=r"trained on 32 px images but the run's cache holds 48 px"):
        call()
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written


def test_evaluate_refuses_a_model_of_another_image_size(resized: Path):
    from cxrlab.evaluate.workflow import evaluate_model

    options = EvaluateConfig(bootstrap=10)
    _refuses_size(lambda: evaluate_model(resized, "cnn", options, progress=False), resized)


def test_analyze_refuses_a_model_of_another_image_size(resized: Path):
    from cxrlab.analysis.workflow import analyze_model

    options = AnalyzeConfig(n_components=2)
    _refuses_size(lambda: analyze_model(resized, "cnn", options, progress=False), resized)


def test_explain_refuses_a_model_of_another_image_size(resized: Path):
    from cxrlab.explain.workflow import explain_model

    options = ExplainConfig(per_group=1)
    _refuses_size(lambda: explain_model(resized, "cnn", options, progress=False), resized)


def test_targets_in_another_order_are_refused(tmp_path: Path):
    from cxrlab.models.checkpoint import check_compatible

    run = load_run_data(make_tiny_run(tmp_path, n=40, size=16))
    info = {"targets": run.targets[::-1], "image_size": 16, "mean": [0.5], "std": [0.5]}
    with pytest.raises(DataError, match=r"predicts \['Effusion', 'Atelectasis'\]"):
        check_compatible(info, run, "m.ckpt")
    check_compatible({**info, "targets": run.targets}, run, "m.ckpt")  # the fit passes


# ---- devices -----------------------------------------------------------------------------------
def test_auto_device_is_the_cpu_without_a_gpu():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_asking_for_a_missing_gpu_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"device 'cuda' .* not available .* --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")


# ---- seeding leaves the caller's state alone ---------------------------------------------------
def test_train_model_restores_the_callers_rng_and_environment(tmp_path: Path):
    run = make_tiny_run(tmp_path, n=40, size=16)
    os.environ.pop("PL_GLOBAL_SEED", None)
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    env = dict(os.environ)
    train_model(run, TINY, name="m", progress_bar=False)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert dict(os.environ) == env


# ---- same seed, same numbers as before the refactor ----------------------------------------
def test_same_seed_gives_the_metrics_recorded_before_the_run_directory_refactor(tmp_path: Path):
    """Values recorded on commit 35c0b61 (before cxrlab.rundir) with the same calls."""
    from cxrlab.evaluate.workflow import evaluate_model

    run = make_tiny_run(tmp_path, n=64, size=32)
    config = {**TINY, "train": {**TINY["train"], "epochs": 2}, "optim": {"lr": 3e-3}}
    train_model(run, config, name="m", progress_bar=False)
    result = evaluate_model(run, "m", EvaluateConfig(bootstrap=50), progress=False)
    per_class = {k: v["auroc"] for k, v in result["metrics"]["per_class"].items()}
    assert per_class == {"Atelectasis": 0.85, "Effusion": 1.0}
    ci = result["ci"]["macro"]["auroc"]
    assert (ci["estimate"], ci["high"]) == (0.925, 1.0)
    assert ci["low"] == pytest.approx(0.8095238095238095, abs=1e-12)
    thresholds = {k: v["threshold"] for k, v in result["thresholds"].items()}
    assert thresholds == {"Atelectasis": 0.426836, "Effusion": 0.419307}

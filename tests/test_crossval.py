"""`cxrlab crossval`: every image predicted once by a model that never saw its patient; the
pooled AUROC is the one of the saved predictions; a killed run keeps its finished folds;
two configs are compared only on the same folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.config import CrossvalConfig, ExperimentConfig, build
from cxrlab.crossval import compare_crossval, crossval, read_oof
from cxrlab.data.rundata import load_run_data
from cxrlab.errors import ConfigError
from cxrlab.rundir import CROSSVAL_FILE, RunDir
from cxrlab.runinfo import read_json
from helpers_run import make_tiny_run

NET = {"name": "simple_cnn", "kwargs": {"base_width": 8, "depth": 3}}
OPTIONS = CrossvalConfig(folds=3, bootstrap=50)


def _config(**train) -> ExperimentConfig:
    return build(ExperimentConfig, {"model": NET, "optim": {"lr": 0.01},
                                    "train": {"epochs": 2, "batch_size": 16, **train}})  # fmt: skip


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A tiny run of 60 images from 20 patients, cross-validated once, 3 folds."""
    run = make_tiny_run(tmp_path_factory.mktemp("cv"), n=60, size=32)
    cohort = RunDir(run).cohort
    frame = pd.read_csv(cohort, dtype=str)
    frame["Patient ID"] = [f"p{i % 20:03d}" for i in range(len(frame))]  # 3 images each
    frame.to_csv(cohort, index=False)
    result = crossval(run, _config(), "m", OPTIONS, progress=False)
    return run, result


def test_every_image_is_predicted_once_by_a_model_that_never_saw_its_patient(done):
    run, result = done
    base = load_run_data(run)
    oof = read_oof(run, "m")
    assert oof["Image Index"].tolist() == list(base.ids)
    assert sorted(oof["fold"].unique()) == [0, 1, 2]
    p_cols = [f"p_{t}" for t in base.targets]
    assert oof[p_cols].notna().all().all()
    for f in range(3):
        fold = load_run_data(result.folder / f"fold{f}")
        test_ids = set(np.asarray(fold.ids)[fold.rows("test")])
        assert test_ids == set(oof.loc[oof["fold"] == f, "Image Index"])
        seen = set(fold.cohort.loc[fold.cohort["split"] != "test", "Patient ID"])
        assert not seen & set(oof.loc[oof["fold"] == f, "Patient ID"])  # by patient
        assert (fold.cohort["split"] == "val").any()  # early stopping has a val part


def test_the_pooled_auroc_is_that_of_the_saved_predictions(done):
    run, result = done
    oof = read_oof(run, "m")
    summary = read_json(result.folder / CROSSVAL_FILE)
    for target in summary["targets"]:
        expected = roc_auc_score(oof[target], oof[f"p_{target}"])
        assert summary["pooled"]["per_class"][target]["estimate"] == pytest.approx(expected)
    assert summary["pooled"]["macro"]["estimate"] > 0.7  # the blobs are learnable
    assert summary["fold_sizes"] == oof["fold"].value_counts().sort_index().tolist()
    assert len(summary["fold_macro"]) == 3


def test_a_killed_run_keeps_its_finished_folds(done, tmp_path):
    run, result = done
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(run, copy, symlinks=True)
    folder = RunDir(copy).crossval("m")
    for f in range(3):  # the fold caches point at the original run's cache: re-link them
        cache = folder / f"fold{f}" / "data" / "cache"
        cache.unlink()
        cache.symlink_to((copy / "data" / "cache").resolve(), target_is_directory=True)
    (folder / "fold1.npz").unlink()
    kept = {f: (folder / f"fold{f}.npz").read_bytes() for f in (0, 2)}
    ckpt0 = (folder / "fold0" / "models" / "m" / "best.ckpt").stat().st_mtime_ns
    said = []
    again = crossval(copy, _config(), "m", OPTIONS, progress=False,
                     on_fold=lambda f, k, what: said.append((f, k, what)))  # fmt: skip
    # fold 1's model had finished: it is only predicted again, not retrained
    assert said == [(0, 3, "saved"), (1, 3, "predicting"), (2, 3, "saved")]
    assert {f: (folder / f"fold{f}.npz").read_bytes() for f in (0, 2)} == kept
    assert (folder / "fold0" / "models" / "m" / "best.ckpt").stat().st_mtime_ns == ckpt0
    same = read_oof(copy, "m")
    pd.testing.assert_frame_equal(same, read_oof(run, "m"))  # fold 1 re-predicted alike
    assert again.summary["pooled"]["macro"] == result.summary["pooled"]["macro"]


def test_another_config_under_the_same_name_is_refused(done):
    run, _ = done
    with pytest.raises(ConfigError, match="another config or fold assignment"):
        crossval(run, _config(epochs=3), "m", OPTIONS, progress=False)
    with pytest.raises(ConfigError, match="another config or fold assignment"):
        crossval(run, _config(), "m", CrossvalConfig(folds=4, bootstrap=50), progress=False)


def test_two_configs_compare_on_the_same_folds_only(done):
    run, _ = done
    crossval(run, _config(seed=1), "m_seed1", OPTIONS, progress=False)
    paired = compare_crossval(run, "m", "m_seed1", OPTIONS)
    oof_a, oof_b = read_oof(run, "m"), read_oof(run, "m_seed1")
    t = read_json(RunDir(run).crossval("m") / CROSSVAL_FILE)["targets"][0]
    delta = roc_auc_score(oof_a[t], oof_a[f"p_{t}"]) - roc_auc_score(oof_b[t], oof_b[f"p_{t}"])
    assert paired["per_class"][t]["delta"] == pytest.approx(delta)
    assert compare_crossval(run, "m", "m", OPTIONS)["macro"]["delta"] == 0.0
    other = CrossvalConfig(folds=2, bootstrap=50)
    crossval(run, _config(), "m_2folds", other, progress=False)
    with pytest.raises(ConfigError, match="same images and folds"):
        compare_crossval(run, "m", "m_2folds", OPTIONS)


def test_the_command_takes_a_trained_models_config_and_prints_the_pooled_auroc(done):
    run, _ = done
    from cxrlab.train.engine import train_model

    train_model(run, _config(), "cli", progress_bar=False)
    runner = CliRunner()
    out = runner.invoke(app, ["crossval", str(run), "--name", "cli", "--folds", "3",
                              "--bootstrap", "50", "--against", "m"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "pooled out-of-fold AUROC" in out.output and "Paired: cli - m" in out.output
    saved = read_json(RunDir(run).crossval("cli") / CROSSVAL_FILE)
    assert saved["config"] == _config().model_dump(mode="json")  # models/cli's config
    missing = runner.invoke(app, ["crossval", str(run), "--name", "nope"])
    assert isinstance(missing.exception, ConfigError)  # main() prints it as one line
    assert "no model 'nope'" in str(missing.exception) and "trained: cli" in str(missing.exception)
    bad = runner.invoke(app, ["crossval", str(run), "--name", "cli", "--folds", "1"])
    assert bad.exit_code == 2  # a usage error before any work


def test_the_api_twin_writes_what_the_command_writes(done):
    import cxrlab
    from cxrlab.evaluate.tables import format_ci

    run, _ = done
    if not (RunDir(run).crossval("cli") / CROSSVAL_FILE).is_file():
        pytest.skip("needs the command test's crossval/cli")
    saved = RunDir(run).model("cli").config  # the config the command took
    result = cxrlab.crossval(run, "api", config=saved, folds=3, bootstrap=50, against="cli",
                             progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(read_oof(run, "api"), read_oof(run, "cli"))
    pd.testing.assert_frame_equal(result.predictions, read_oof(run, "api"))
    cli = read_json(RunDir(run).crossval("cli") / CROSSVAL_FILE)
    assert result.summary["pooled"] == cli["pooled"] and result.summary["config"] == cli["config"]
    macro = cli["pooled"]["macro"]
    assert result.table.loc["macro"].iloc[0] == format_ci(macro["estimate"], macro["low"],
                                                          macro["high"])  # fmt: skip
    assert list(result.table.index) == [*cli["targets"], "macro"]
    assert result.folds["macro AUROC"].tolist() == cli["fold_macro"]
    assert result.paired["cli"]["macro"]["delta"] == 0.0
    assert list(result.against) == ["api - cli"]


def test_a_fold_killed_mid_training_resumes_from_its_last_epoch(done, monkeypatch):
    import lightning as L

    from cxrlab.train import engine

    run, _ = done

    class Killed(Exception):
        pass

    class KillFold1AtEpoch1(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1 and "fold1" in str(trainer.default_root_dir):
                raise Killed

    real = engine.train_model

    def killed(run_dir, *args, **kwargs):
        callbacks = [KillFold1AtEpoch1()] if "fold1" in str(run_dir) else []
        return real(run_dir, *args, **{**kwargs, "callbacks": callbacks})

    monkeypatch.setattr(engine, "train_model", killed)
    with pytest.raises(Killed):
        crossval(run, _config(), "k", OPTIONS, progress=False)
    metrics = RunDir(run).crossval("k") / "fold1" / "models" / "k" / "metrics.csv"
    first = metrics.read_text().splitlines()
    assert len(first) == 2  # header + epoch 0
    monkeypatch.undo()
    said = []
    crossval(run, _config(), "k", OPTIONS, progress=False,
             on_fold=lambda f, k, what: said.append(what))  # fmt: skip
    assert said == ["saved", "resuming", "training"]
    lines = metrics.read_text().splitlines()
    assert lines[:2] == first and len(lines) == 3  # epoch 0 kept, epoch 1 trained once


def test_no_keep_models_deletes_each_folds_checkpoints_after_predicting(done):
    run, result = done
    kept = list(result.folder.glob("fold*/models/m/*.ckpt"))
    assert {p.name for p in kept} == {"best.ckpt", "last.ckpt"} and len(kept) == 6  # default
    lean = crossval(run, _config(), "lean", CrossvalConfig(folds=3, bootstrap=50,
                    keep_models=False), progress=False)  # fmt: skip
    assert not list(lean.folder.glob("fold*/models/lean/*.ckpt"))
    assert len(list(lean.folder.glob("fold*/models/lean/metrics.csv"))) == 3  # the rest stays
    pd.testing.assert_frame_equal(read_oof(run, "lean"), read_oof(run, "m"))
    again = crossval(run, _config(), "lean", CrossvalConfig(folds=3, bootstrap=50,
                     keep_models=False), progress=False)  # fmt: skip
    assert again.summary["pooled"] == lean.summary["pooled"]  # from the saved folds


def test_the_report_shows_each_crossval_and_its_saved_pairs(done):
    from cxrlab.evaluate.tables import format_ci
    from cxrlab.report.build import build_report

    run, result = done
    paired = compare_crossval(run, "m", "m", OPTIONS)  # also saved beside crossval m
    assert read_json(RunDir(run).crossval_paired("m", "m"))["macro"] == paired["macro"]
    html = build_report(run).read_text()
    section = html[html.index('id="crossval"') : html.index('id="analysis"')]
    macro = result.summary["pooled"]["macro"]
    estimate, interval = format_ci(macro["estimate"], macro["low"], macro["high"]).split(" ", 1)
    assert estimate in section and interval in section
    assert "m</span> vs " in section and "cross-validated" in section
    assert "None run" not in section

"""`run_study`: the whole study in one run directory, and which stages a re-run repeats.

One tiny study (40 synthetic patients at 256 px, cached at 32 px, two small SimpleCNNs for
one epoch, 20 bootstrap resamples) is run once per module; tests that change it work on a
copy of that run directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cxrlab.config import StudyConfig, load_study
from cxrlab.errors import StageError
from cxrlab.pipeline import run_study
from cxrlab.rundir import RunDir

TINY = {"name": "simple_cnn", "kwargs": {"base_width": 8, "depth": 3}}
STAGES = [
    "synth",
    "prepare",
    "train:a",
    "train:b",
    "evaluate:a",
    "evaluate:b",
    "compare",
    "analyze:b",
    "explain:a",
    "explain:b",
    "report",
]


def _study(**changes) -> StudyConfig:
    """The tiny study; `changes` replace whole top-level sections."""
    raw = {
        "synthetic": {"patients": 40, "image_size": 256, "seed": 0},
        "data": {
            "pathologies": ["Atelectasis", "Effusion", "Cardiomegaly"],
            "image_size": 32,
            "test": 0.25,
        },
        "defaults": {"train": {"epochs": 1, "batch_size": 16}},
        "models": [
            {"name": "a", "model": TINY, "optim": {"lr": 0.003}},
            {"name": "b", "model": TINY, "optim": {"lr": 0.001}},
        ],
        "evaluate": {"bootstrap": 20},
        "analyze": {"model": "b", "n_components": 5, "k_max": 3},
        "explain": {"per_group": 1},
    }
    return StudyConfig.model_validate({**raw, **changes})


def _with_lr(name: str, lr: float) -> StudyConfig:
    models = [dict(m) for m in _study().models]
    for m in models:
        if m["name"] == name:
            m["optim"] = {"lr": lr}
    return _study(models=models)


def _run(config: StudyConfig, run_dir: Path):
    return run_study(config, run_dir, progress=False)


def _ledger(run_dir: Path) -> dict:
    return json.loads(RunDir(run_dir).stages.read_text())


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, list[str]]:
    """The study run once: (run directory, stages run in order)."""
    run_dir = tmp_path_factory.mktemp("study") / "run"
    result = _run(_study(), run_dir)
    return run_dir, result.ran()


@pytest.fixture
def copy(study, tmp_path: Path) -> Path:
    """A private copy of the finished run, in another place."""
    target = tmp_path / "moved"
    shutil.copytree(study[0], target)
    return target


def test_first_run_runs_every_stage_and_writes_the_layout(study):
    run_dir, ran = study
    assert ran == STAGES
    ledger = _ledger(run_dir)
    assert set(ledger) == set(STAGES) and all(e["status"] == "done" for e in ledger.values())
    expected = [
        "data/cohort.csv",
        "data/split_summary.json",
        "data/prepare.json",
        "data/boxes.csv",
        "data/cache/meta.json",
        "analysis/b/features_penultimate.npz",
        "analysis/b/analysis.json",
        "analysis/b/summary.md",
        "reports/compare/test/comparison.json",
        "report.html",
        "study.yaml",
        "versions.json",
    ]
    for name in ("a", "b"):
        model = [f"models/{name}/{f}" for f in ("best.ckpt", "last.ckpt", "config.yaml")]
        model += [f"models/{name}/{f}" for f in ("metrics.csv", "thresholds.json")]
        reports = [f"reports/{name}/test/{f}" for f in ("predictions.csv", "metrics.json")]
        reports += [f"reports/{name}/test/figures/roc.png"]
        reports += [f"reports/{name}/explain/localization.json"]
        expected += model + reports
    missing = [f for f in expected if not (run_dir / f).is_file()]
    assert not missing
    assert not (run_dir / "analysis" / "a").exists()  # only the chosen analysis model
    assert "<html" in (run_dir / "report.html").read_text()[:500].lower()


def test_top_level_figures_hold_comparison_and_training_curves(study):
    run_dir, _ = study
    names = sorted(p.name for p in RunDir(run_dir).figures.glob("*.png"))
    compare = sorted(p.name for p in (run_dir / "reports/compare/test/figures").glob("*.png"))
    assert names == sorted([*(f"compare_{n}" for n in compare), "training_a.png", "training_b.png"])
    assert "compare_roc.png" in names and "compare_auroc_bars.png" in names
    source = run_dir / "reports" / "a" / "test" / "figures" / "training.png"
    assert (RunDir(run_dir).figures / "training_a.png").read_bytes() == source.read_bytes()


def test_resolved_config_is_written_and_merged_over_defaults(study):
    run_dir, _ = study
    assert load_study(run_dir / "study.yaml") == _study()
    config_a = yaml.safe_load((run_dir / "models" / "a" / "config.yaml").read_text())
    assert config_a["optim"]["lr"] == 0.003 and config_a["train"]["epochs"] == 1
    assert config_a["train"]["batch_size"] == 16  # from `defaults`
    summary = json.loads((run_dir / "data" / "split_summary.json").read_text())
    assert summary["targets"] == ["Atelectasis", "Effusion", "Cardiomegaly"]
    assert summary["patient_overlap"] == 0


def test_second_run_skips_every_stage(study):
    run_dir, _ = study
    before = (run_dir / "models" / "a" / "best.ckpt").stat().st_mtime_ns
    result = _run(_study(), run_dir)
    assert result.ran() == []
    assert result.skipped() == STAGES
    assert (run_dir / "models" / "a" / "best.ckpt").stat().st_mtime_ns == before


def test_moved_run_directory_is_still_fresh(copy: Path):
    assert _run(_study(), copy).ran() == []


def test_changing_one_model_reruns_only_its_stages(copy: Path):
    untouched = {n: (copy / "models" / "b" / n).read_bytes() for n in ("best.ckpt", "last.ckpt")}
    result = _run(_with_lr("a", 0.002), copy)
    assert result.ran() == ["train:a", "evaluate:a", "compare", "explain:a", "report"]
    assert set(result.skipped()) == set(STAGES) - set(result.ran())
    assert {n: (copy / "models" / "b" / n).read_bytes() for n in untouched} == untouched
    assert (
        yaml.safe_load((copy / "models" / "a" / "config.yaml").read_text())["optim"]["lr"] == 0.002
    )


@pytest.mark.slow
def test_changing_the_analysis_model_reruns_analyze(copy: Path):
    result = _run(_with_lr("b", 0.002), copy)
    assert result.ran() == ["train:b", "evaluate:b", "compare", "analyze:b", "explain:b", "report"]


def test_failing_stage_names_itself_and_keeps_earlier_outputs(copy: Path, monkeypatch):
    from cxrlab.explain import workflow as explain_workflow

    kept = {
        f: (copy / f).read_bytes()
        for f in ("models/a/best.ckpt", "reports/a/test/metrics.json", "analysis/b/analysis.json")
    }

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(explain_workflow, "explain_model", broken)
    changed = _study(explain={"per_group": 2})
    with pytest.raises(StageError, match=r"stage 'explain:a' failed: boom"):
        _run(changed, copy)
    ledger = _ledger(copy)
    assert ledger["explain:a"]["status"] == "failed"
    assert ledger["explain:a"]["error"] == "RuntimeError: boom"
    assert ledger["evaluate:a"]["status"] == "done"
    assert {f: (copy / f).read_bytes() for f in kept} == kept
    monkeypatch.undo()
    result = _run(changed, copy)
    assert result.ran() == ["explain:a", "explain:b", "report"]


def test_unknown_analysis_model_is_a_stage_error(copy: Path):
    bad = _study(analyze={"model": "zz"})
    with pytest.raises(StageError, match=r"stage 'analyze': model 'zz' is not in the study"):
        _run(bad, copy)
    assert (copy / "analysis" / "b" / "analysis.json").is_file()


def test_interrupted_stage_is_not_taken_for_finished(copy: Path, monkeypatch):
    """A stage killed mid-way (Ctrl-C, OOM) may leave outputs behind; they must not count."""
    from cxrlab.train import engine

    def interrupted(run_dir, config, name, **kwargs):
        (Path(run_dir) / "models" / name / "best.ckpt").write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(_with_lr("a", 0.002), copy)
    assert _ledger(copy)["train:a"]["status"] == "running"
    monkeypatch.undo()
    result = _run(_study(), copy)  # back to the original config: train:a must run again
    assert result.ran()[0] == "train:a"
    assert (copy / "models" / "a" / "best.ckpt").read_bytes() != b"half a checkpoint"


def test_damaged_checkpoint_is_trained_again_not_skipped(copy: Path):
    """A full disk or a kill while copying may leave a truncated checkpoint behind a "done"
    stage; the next run must notice it, not skip the stage forever."""
    from cxrlab.models.checkpoint import check_readable

    last = copy / "models" / "a" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    result = _run(_study(), copy)
    assert result.ran()[0] == "train:a" and "train:b" in result.skipped()
    check_readable(last)  # whole again


def test_a_killed_training_stage_resumes_from_its_last_epoch(copy: Path, monkeypatch):
    """`cxrlab run` again after a kill continues the model's training where it stopped (the
    same config and split), instead of training it again from scratch."""
    import lightning as L

    from cxrlab.train import engine

    class Killed(Exception):
        pass

    class KillAtEpoch1(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                raise Killed

    real = engine.train_model

    def killed(*args, **kwargs):
        return real(*args, **{**kwargs, "callbacks": [KillAtEpoch1()]})

    two_epochs = _study(defaults={"train": {"epochs": 2, "batch_size": 16}})
    monkeypatch.setattr(engine, "train_model", killed)
    with pytest.raises(StageError, match="train:a"):
        _run(two_epochs, copy)
    assert _ledger(copy)["train:a"]["status"] == "failed"
    metrics = copy / "models" / "a" / "metrics.csv"
    first = metrics.read_text().splitlines()
    assert len(first) == 2  # header + epoch 0
    monkeypatch.undo()
    result = _run(two_epochs, copy)
    assert "train:a" in result.ran()
    lines = metrics.read_text().splitlines()
    assert lines[:2] == first and len(lines) == 3  # epoch 0 kept as it was, epoch 1 added
    assert _ledger(copy)["train:a"]["status"] == "done"

"""The training engine: data path, metrics, checkpoints, resume, determinism, transfer, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.exceptions import UndefinedMetricWarning

from cxrlab.config import ExperimentConfig, build, load_yaml
from cxrlab.data.rundata import load_run_data, targets_from_columns
from cxrlab.errors import ConfigError, DataError
from cxrlab.models.checkpoint import load_model_from_checkpoint
from cxrlab.train.augment import normalize
from cxrlab.train.data import BatchDataset, EpochBatchSampler, pos_weight
from cxrlab.train.engine import config_differences, resolve_config, train_model
from cxrlab.train.module import WarmupCosine, macro_auroc, per_class_auroc, split_head
from cxrlab.train.trainer import resolve_precision, trainer_settings
from helpers_run import make_tiny_run

TINY = {
    "model": {"name": "simple_cnn", "kwargs": {"base_width": 8, "depth": 3}},
    "train": {"epochs": 1, "batch_size": 16, "patience": 10},
}


def _config(**sections) -> dict:
    out = {key: dict(value) for key, value in TINY.items()}
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


def _fit(run_dir: Path, name: str = "m", **kwargs):
    config = kwargs.pop("config", _config())
    return train_model(run_dir, config, name=name, progress_bar=False, **kwargs)


def _metrics(model_dir: Path) -> pd.DataFrame:
    return pd.read_csv(model_dir / "metrics.csv")


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_tiny_run(tmp_path, n=64, size=32)


# ---- data path --------------------------------------------------------------------------------
def test_targets_come_from_split_summary_or_columns(run: Path):
    data = load_run_data(run)
    assert data.targets == ["Atelectasis", "Effusion"]
    assert data.labels.shape == (64, 2) and data.images.shape == (64, 32, 32)
    (run / "data" / "split_summary.json").unlink()
    cohort = pd.read_csv(run / "data" / "cohort.csv")
    assert targets_from_columns(cohort) == ["Atelectasis", "Effusion"]
    assert load_run_data(run).targets == ["Atelectasis", "Effusion"]


def test_bad_label_value_names_row_and_column(run: Path):
    cohort = pd.read_csv(run / "data" / "cohort.csv")
    cohort.loc[4, "Effusion"] = 2
    cohort.to_csv(run / "data" / "cohort.csv", index=False)
    with pytest.raises(DataError, match=r"row 6 column 'Effusion' holds '2';"):
        load_run_data(run)


def test_batch_dataset_reads_sorted_rows_aligned_with_labels(run: Path):
    data = load_run_data(run)
    x, y, rows = BatchDataset(data.cache, data.labels)[[9, 2, 5]]
    assert rows.tolist() == [2, 5, 9]
    assert x.dtype == torch.uint8 and x.shape == (3, 1, 32, 32)
    assert torch.equal(x[:, 0], torch.from_numpy(data.images[[2, 5, 9]]))
    assert torch.equal(y, torch.from_numpy(data.labels[[2, 5, 9]]))


def test_sampler_is_a_function_of_seed_and_epoch():
    rows = np.arange(10, 30)
    sampler = EpochBatchSampler(rows, 6, shuffle=True, seed=1, rank=0, world_size=1)
    sampler.set_epoch(0)
    first = [r for batch in sampler for r in batch]
    assert sorted(first) == rows.tolist()  # every row exactly once
    assert [len(b) for b in sampler] == [6, 6, 6, 2] and len(sampler) == 4
    again = EpochBatchSampler(rows, 6, shuffle=True, seed=1, rank=0, world_size=1)
    again.set_epoch(0)
    assert [r for b in again for r in b] == first
    sampler.set_epoch(1)
    assert [r for b in sampler for r in b] != first


def test_sampler_shards_like_distributed_sampler():
    rows = np.arange(7)
    shards = [
        EpochBatchSampler(rows, 2, shuffle=False, rank=r, world_size=2).order() for r in (0, 1)
    ]
    # padded to 8 by wrapping round; rank r takes positions r, r+2, ...
    assert shards[0].tolist() == [0, 2, 4, 6] and shards[1].tolist() == [1, 3, 5, 0]
    drop = EpochBatchSampler(rows, 3, shuffle=True, drop_last=True, rank=1, world_size=2)
    assert len(drop) == 1 and [len(b) for b in drop] == [3]
    tiny = EpochBatchSampler(rows[:2], 8, shuffle=True, drop_last=True, rank=0, world_size=1)
    assert [len(b) for b in tiny] == [2]  # no full batch: keep the partial one


def test_pos_weight_is_negatives_over_positives():
    labels = np.array([[1, 0], [0, 0], [1, 1], [0, 0]], dtype=np.float32)
    assert pos_weight(labels, ["a", "b"]).tolist() == [1.0, 3.0]
    assert pos_weight(np.zeros((3, 1), np.float32), ["a"]).tolist() == [1.0]


# ---- metrics and schedule -----------------------------------------------------------------------
def test_auroc_hand_worked_and_undefined_class_is_nan():
    y = np.array([[0, 1], [0, 1], [1, 1], [1, 1]], dtype=np.float32)
    s = np.array([[0.1, 0.2], [0.4, 0.3], [0.35, 0.1], [0.8, 0.9]])
    per_class = per_class_auroc(y, s, ["a", "b"])
    assert per_class["a"] == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered right
    assert math.isnan(per_class["b"])
    assert macro_auroc(per_class) == pytest.approx(0.75)
    assert math.isnan(macro_auroc({"b": math.nan}))


def test_warmup_cosine_factors():
    factor = WarmupCosine(warmup_steps=2, total_steps=6, min_ratio=0.1)
    assert [factor(s) for s in (0, 1)] == [0.5, 1.0]
    assert factor(2) == pytest.approx(1.0)
    assert factor(4) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert factor(6) == pytest.approx(0.1)


# ---- config ------------------------------------------------------------------------------------
def test_unknown_config_key_is_rejected_with_valid_keys(tmp_path: Path, run: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 2, "epoch_count": 3}}))
    with pytest.raises(ConfigError) as err:
        resolve_config(run, path)
    message = str(err.value)
    assert "train.epoch_count" in message and "batch_size" in message and "patience" in message


def test_flags_override_the_file(tmp_path: Path, run: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "resnet18"}, "optim": {"lr": 0.01},
                                    "train": {"epochs": 7}}))  # fmt: skip
    config, name = resolve_config(run, path, {"optim.lr": 3e-4, "train.epochs": None})
    assert config.optim.lr == 3e-4  # flag wins
    assert config.train.epochs == 7  # flag not given: the file's value stays
    assert name == "resnet18"
    assert resolve_config(run, path, {}, name="mine")[1] == "mine"


def test_config_differences_lists_changed_leaves():
    a = ExperimentConfig()
    b = build(ExperimentConfig, {"optim": {"lr": 0.5}, "train": {"devices": 2}})
    assert config_differences(a, b) == [("optim.lr", 0.001, 0.5), ("train.devices", "auto", 2)]
    assert config_differences(a, b, ignore=frozenset({"train.devices"})) == [
        ("optim.lr", 0.001, 0.5)
    ]


def test_trainer_settings_cpu_and_torchrun(monkeypatch):
    assert resolve_precision("auto", on_cuda=False) == "32-true"
    assert resolve_precision("32", on_cuda=True) == "32-true"
    single = trainer_settings(build(ExperimentConfig, {"train": {"accelerator": "cpu"}}).train)
    assert single["strategy"] == "auto" and single["precision"] == "32-true"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg = {"train": {"accelerator": "cpu", "strategy": "freeze-then-unfreeze"}}
    ddp = trainer_settings(build(ExperimentConfig, cfg).train)
    assert (ddp["devices"], ddp["num_nodes"], ddp["world_size"]) == (2, 2, 4)
    assert ddp["strategy"] == "ddp_find_unused_parameters_true"


# ---- training runs ----------------------------------------------------------------------------
def _evaluate(model: torch.nn.Module, run: Path, mean, std) -> tuple[np.ndarray, np.ndarray]:
    data = load_run_data(run)
    rows = data.rows("val")
    x = normalize(torch.from_numpy(data.images[rows].copy()).unsqueeze(1), mean, std)
    with torch.no_grad():
        scores = torch.sigmoid(model(x)).numpy()
    return data.labels[rows], scores


def test_one_epoch_writes_the_model_folder(run: Path):
    result = _fit(run)
    files = {p.name for p in result.model_dir.iterdir()}
    assert {"best.ckpt", "last.ckpt", "config.yaml", "metrics.csv", "run.json"} <= files
    metrics = _metrics(result.model_dir)
    assert list(metrics.columns) == [
        "epoch", "train_loss", "val_loss", "val_auroc_macro", "val_auroc_Atelectasis",
        "val_auroc_Effusion", "lr", "seconds",
    ]  # fmt: skip
    assert metrics["epoch"].tolist() == [0]
    assert result.best_epoch == 0 and result.epochs_run == 1
    saved = build(ExperimentConfig, load_yaml(result.model_dir / "config.yaml"))
    assert saved == build(ExperimentConfig, _config())
    info = json.loads((result.model_dir / "run.json").read_text())
    assert info["split_hash"] == load_run_data(run).split_hash and "torch" in info["versions"]


def test_checkpoint_alone_rebuilds_the_model(run: Path):
    result = _fit(run, config=_config(train={"epochs": 2}))
    model, info = load_model_from_checkpoint(result.last_checkpoint)
    assert not model.training
    assert info["targets"] == ["Atelectasis", "Effusion"] and info["image_size"] == 32
    assert info["split_hash"] == load_run_data(run).split_hash and info["epoch"] == 1
    state = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[f"model.{key}"])
    # the rebuilt model reproduces the last epoch's validation AUROC
    labels, scores = _evaluate(model, run, info["mean"], info["std"])
    auroc = per_class_auroc(labels, scores, info["targets"])
    last = _metrics(result.model_dir).iloc[-1]
    assert auroc["Atelectasis"] == pytest.approx(last["val_auroc_Atelectasis"], abs=1e-9)
    assert macro_auroc(auroc) == pytest.approx(last["val_auroc_macro"], abs=1e-9)
    again, _ = load_model_from_checkpoint(result.last_checkpoint)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), again(x))


def test_same_seed_gives_identical_metrics(run: Path):
    config = _config(train={"epochs": 2})
    a, b = _fit(run, "a", config=config), _fit(run, "b", config=config)
    ma, mb = _metrics(a.model_dir), _metrics(b.model_dir)
    pd.testing.assert_frame_equal(ma.drop(columns="seconds"), mb.drop(columns="seconds"))
    other = _fit(run, "c", config=_config(train={"epochs": 2, "seed": 1}))
    assert not np.allclose(_metrics(other.model_dir)["train_loss"], ma["train_loss"])


class _Killed(Exception):
    pass


class _KillAtEpoch(L.Callback):
    """Dies as a killed process would: after some epochs, with no chance to tidy up.

    (Not KeyboardInterrupt: Lightning answers that by ignoring SIGINT process-wide.)
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise _Killed


@pytest.mark.parametrize("schedule", ["cosine", pytest.param("plateau", marks=pytest.mark.slow)])
def test_kill_and_resume_matches_an_uninterrupted_run(run: Path, schedule: str):
    config = _config(train={"epochs": 3}, schedule={"name": schedule, "plateau_patience": 0})
    straight = _fit(run, "straight", config=config)
    with pytest.raises(_Killed):
        _fit(run, "killed", config=config, callbacks=[_KillAtEpoch(2)])
    assert _metrics(run / "models" / "killed")["epoch"].tolist() == [0, 1]
    resumed = _fit(run, "killed", config=config, resume=True)
    a, b = _metrics(straight.model_dir), _metrics(resumed.model_dir)
    assert b["epoch"].tolist() == [0, 1, 2]  # one row per epoch, none lost or repeated
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    assert resumed.best_epoch == straight.best_epoch


def test_resume_refuses_a_changed_config_and_a_missing_checkpoint(run: Path):
    with pytest.raises(ConfigError, match="last.ckpt not found"):
        _fit(run, resume=True)
    _fit(run)
    changed = _config(optim={"lr": 0.5}, train={"devices": 1})  # devices may differ
    with pytest.raises(ConfigError, match=r"optim\.lr \(saved 0\.001, now 0\.5\)") as err:
        _fit(run, config=changed, resume=True)
    assert "devices" not in str(err.value)
    with pytest.raises(ConfigError, match="--resume"):
        _fit(run)  # a trained folder is not silently replaced
    assert _fit(run, overwrite=True).epochs_run == 1


def test_val_class_without_positives_is_nan_with_a_warning(tmp_path: Path):
    run = make_tiny_run(tmp_path, no_val_positives=["Effusion"])
    with pytest.warns(UndefinedMetricWarning, match="'Effusion' is undefined"):
        result = _fit(run)
    row = _metrics(result.model_dir).iloc[0]
    assert math.isnan(row["val_auroc_Effusion"])
    assert row["val_auroc_macro"] == pytest.approx(row["val_auroc_Atelectasis"])


class _Snapshots(L.Callback):
    """Model state at train start and after each epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def _take(self, pl_module) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    def on_train_start(self, trainer, pl_module) -> None:
        self._take(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._take(pl_module)


def _changed(before: dict, after: dict, keys) -> list[str]:
    return [k for k in keys if not torch.equal(before[k], after[k])]


def _head_keys(run: Path) -> tuple[set[str], set[str]]:
    model, _ = load_model_from_checkpoint(run / "models" / "m" / "last.ckpt")
    head = {f"fc.{k}" for k in model.get_classifier().state_dict()}
    return head, set(model.state_dict()) - head


def test_freeze_then_unfreeze_freezes_then_trains_the_backbone(run: Path):
    snaps = _Snapshots()
    config = _config(
        optim={"backbone_lr_mult": 0.1},
        train={"epochs": 2, "strategy": "freeze-then-unfreeze", "freeze_epochs": 1},
    )
    _fit(run, config=config, callbacks=[snaps])
    head, backbone = _head_keys(run)
    start, frozen, unfrozen = snaps.states
    assert _changed(start, frozen, backbone) == []  # weights and BN statistics
    assert _changed(start, frozen, head) != []
    assert len(_changed(frozen, unfrozen, backbone)) > len(backbone) // 2
    state = torch.load(run / "models/m/last.ckpt", weights_only=True)["optimizer_states"][0]
    lrs = {g["name"]: g["initial_lr"] for g in state["param_groups"]}
    assert lrs["head"] == pytest.approx(1e-3) and lrs["backbone"] == pytest.approx(1e-4)


def test_linear_probe_changes_only_the_head(run: Path):
    snaps = _Snapshots()
    _fit(run, config=_config(train={"epochs": 2, "strategy": "linear-probe"}), callbacks=[snaps])
    head, backbone = _head_keys(run)
    assert _changed(snaps.states[0], snaps.states[-1], backbone) == []
    assert set(_changed(snaps.states[0], snaps.states[-1], head)) == head


def test_split_head_partitions_parameters():
    from cxrlab.models import create_model

    model = create_model("simple_cnn", 3, base_width=4, depth=2)
    head, backbone = split_head(model)
    assert {id(p) for p in head} == {id(p) for p in model.get_classifier().parameters()}
    assert len(head) + len(backbone) == len(list(model.parameters()))


def test_cli_trains_and_reports(run: Path, tmp_path: Path):
    from typer.testing import CliRunner

    import cxrlab.cli.train_command  # noqa: F401  registers `train` on the app
    from cxrlab.cli.app import app

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_config(train={"epochs": 3})))
    args = ["train", str(run), "--config", str(config), "--epochs", "1", "--lr", "0.002"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "its val macro AUROC" in result.output and "epochs run" in result.output
    saved = load_yaml(run / "models" / "simple_cnn" / "config.yaml")
    assert saved["train"]["epochs"] == 1 and saved["optim"]["lr"] == 0.002
    assert saved["model"]["kwargs"] == {"base_width": 8, "depth": 3}  # from the file
    help_text = CliRunner().invoke(app, ["train", "--help"]).output
    for flag in ("--strategy", "--resume", "--pos-weight", "--devices", "--hflip"):
        assert flag in help_text


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, strategy", [("torchrun", "freeze-then-unfreeze"), ("lightning", "full")]
)
def test_two_process_gloo_ddp(run: Path, tmp_path: Path, launcher: str, strategy: str):
    """torchrun, or `--devices 2` (Lightning re-launches the command), on CPU with gloo."""
    script = tmp_path / "cli.py"
    script.write_text(
        "import cxrlab.cli.train_command  # noqa: F401\nfrom cxrlab.cli import main\nmain()\n"
    )
    config = tmp_path / "tiny.yaml"
    train = {"epochs": 2, "batch_size": 8, "strategy": strategy, "freeze_epochs": 1}
    config.write_text(yaml.safe_dump(_config(train=train)))
    args = [str(script), "train", str(run), "--config", str(config), "--accelerator", "cpu"]
    if launcher == "torchrun":
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", *args]
    else:
        cmd = [sys.executable, *args, "--devices", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    model_dir = run / "models" / "simple_cnn"
    assert "ddp" in json.loads((model_dir / "run.json").read_text())["trainer"]["strategy"]
    metrics = _metrics(model_dir)
    assert metrics["epoch"].tolist() == [0, 1]
    # AUROC over all val images, gathered from both ranks without the padding duplicate
    model, info = load_model_from_checkpoint(model_dir / "last.ckpt")
    labels, scores = _evaluate(model, run, info["mean"], info["std"])
    expected = macro_auroc(per_class_auroc(labels, scores, info["targets"]))
    assert metrics["val_auroc_macro"].iloc[-1] == pytest.approx(expected, abs=1e-9)


def test_shipped_resnet18_config_is_valid(run: Path):
    path = Path(__file__).resolve().parents[1] / "configs" / "resnet18.yaml"
    config, name = resolve_config(run, path, {"optim.lr": 1e-3})
    assert name == "resnet18" and config.model.pretrained and config.optim.lr == 1e-3
    assert config.augment.hflip is False and config.train.strategy == "full"
    # the file writes out what `--pretrained` gets by default (the transfer recipe)
    file_config, _ = resolve_config(run, path)
    defaults = build(ExperimentConfig, {"model": {"name": "resnet18", "pretrained": True}})
    assert file_config == defaults


class _LastCheckpointEpochs(L.Callback):
    """The epoch stored in last.ckpt as each epoch starts."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.path.is_file():
            self.seen.append(torch.load(self.path, weights_only=True)["epoch"])


def test_last_checkpoint_is_saved_every_epoch_even_without_improvement(run: Path):
    spy = _LastCheckpointEpochs(run / "models" / "m" / "last.ckpt")
    # a frozen backbone and a negligible LR: the val AUROC cannot improve after epoch 0
    config = _config(optim={"lr": 1e-12}, train={"epochs": 3, "strategy": "linear-probe"})
    result = _fit(run, config=config, callbacks=[spy])
    assert result.best_epoch == 0
    assert spy.seen == [0, 1]
    assert torch.load(result.last_checkpoint, weights_only=True)["epoch"] == 2
    assert torch.load(result.best_checkpoint, weights_only=True)["epoch"] == 0

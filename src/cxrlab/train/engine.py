"""`train_model`: one model on one prepared run directory, with PyTorch Lightning.

Writes `RUN_DIR/models/<name>/`: `config.yaml` (the resolved `ExperimentConfig`), `run.json`
(versions, seed, split hash, trainer settings, timestamps), `metrics.csv` (one row per
epoch), `best.ckpt` (highest val macro AUROC) and `last.ckpt`. Each checkpoint also carries
a `cxrlab` block (targets, image size, mean/std, config, versions, split hash), so
`cxrlab.models.checkpoint.load_model_from_checkpoint` rebuilds the model from the file alone.

Lightning does the loop, mixed precision, DDP (under `torchrun`, or `devices > 1`, which
Lightning launches itself), checkpoints, early stopping and the progress bar.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.utilities import rank_zero_only

from cxrlab.config import (
    ExperimentConfig,
    TrainConfig,
    build,
    load_yaml,
    merge_overrides,
    to_yaml,
)
from cxrlab.data.rundata import RunData, load_run_data
from cxrlab.errors import ConfigError, DataError, Interrupted
from cxrlab.locking import exclusive, require_free
from cxrlab.models.checkpoint import check_readable
from cxrlab.rundir import ModelDir, RunDir, check_folder_name
from cxrlab.runinfo import package_versions, read_json, write_atomic, write_json
from cxrlab.signals import stop_signal
from cxrlab.train.callbacks import MetricsCSV
from cxrlab.train.data import make_loader, pos_weight
from cxrlab.train.module import ChestXrayClassifier
from cxrlab.train.trainer import make_trainer, trainer_settings

log = logging.getLogger(__name__)

#: What Lightning's seed_everything leaves in the environment (for DDP workers it launches).
_SEED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")

#: Settings of the machine, not of the experiment: they may change on `--resume`.
RESUME_MAY_DIFFER = frozenset(
    {
        "train.accelerator",
        "train.devices",
        "train.num_nodes",
        "train.num_workers",
        "train.precision",
    }
)


@dataclass(frozen=True)
class TrainResult:
    """What `train_model` produced."""

    model_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int | None  # 0-based epoch best.ckpt holds (train.select); None: none scored
    best_val_auroc: float | None  # that epoch's val macro AUROC (NaN: undefined)
    epochs_run: int  # epochs in metrics.csv (after a resume: all of them)
    stopped_early: bool


def train_model(
    run_dir: str | Path,
    config: ExperimentConfig | dict[str, Any],
    name: str | None = None,
    resume: bool = False,
    *,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    progress_bar: bool = True,
) -> TrainResult:
    """Train `config.model` on RUN_DIR's train split, validating on its val split.

    Args:
        name: model folder under RUN_DIR/models (default: the model name).
        resume: continue from `last.ckpt`; the config must match the saved one except for
            machine settings (`RESUME_MAY_DIFFER`).
        overwrite: replace an existing, finished or not, model folder of that name.
        callbacks: extra Lightning callbacks (tests use them to interrupt a run).
        progress_bar: show a progress bar (rich on a terminal, tqdm otherwise).
    """
    run_dir = Path(run_dir)
    config = config if isinstance(config, ExperimentConfig) else build(ExperimentConfig, config)
    name = name or config.model.name
    data = load_run_data(run_dir)
    folder = data.paths.model(name)
    with _model_lock(folder, data.paths):
        if resume:
            _check_resumable(folder, config, data)
        else:
            _start_fresh(folder, overwrite)
        with isolated_seed(config.train.seed):  # the caller's RNGs and environment come back
            return _fit(folder, config, data, resume, callbacks, progress_bar)


@contextmanager
def _model_lock(folder: ModelDir, paths: RunDir) -> Iterator[None]:
    """Hold models/<name>'s lock, and refuse while a `prepare` rewrites data/ (rank 0 only:
    the DDP workers Lightning launches re-run `train_model` while rank 0 holds it)."""
    if rank_zero_only.rank != 0:
        yield
        return
    with exclusive(folder.lock, f"model folder {folder.path}"):
        require_free(paths.data_lock, f"run directory {paths.root} (data/, being prepared)")
        yield


def _fit(folder: ModelDir, config, data: RunData, resume: bool, callbacks, progress_bar):
    model_dir = folder.path
    settings = trainer_settings(config.train)
    started = _now()
    # "finished"/"interrupted" of an earlier attempt no longer hold once this one starts.
    begin = {"started": started, "finished": None, "interrupted": None}
    run_files = _RunFiles(lambda: _write_run_files(folder, config, data, settings, begin))
    metrics_cb = MetricsCSV(folder.metrics_csv, data.targets)
    guard = _SeesExceptions()
    trainer = make_trainer(
        config, model_dir, settings, metrics_cb, [run_files, guard, *callbacks], progress_bar
    )
    module = _make_module(config, data, folder.name, pretrained=not resume)
    loaders = [_loader(data, split, config.train, settings) for split in ("train", "val")]
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        trainer.fit(module, *loaders, ckpt_path=folder.last_ckpt if resume else None)
    except BaseException as exc:
        # Lightning answers Ctrl-C with sys.exit(1); the callback saw the KeyboardInterrupt.
        stop = stop_signal(exc) or stop_signal(guard.seen)
        if stop is None:
            raise
        done = len(metrics_cb.rows)
        stopped = {"at": _now(), "by": stop.name, "epochs_saved": done}
        _write_run_files(folder, config, data, settings, {"interrupted": stopped})
        message = _interrupted_message(folder, data, stop.name, done)
        raise Interrupted(message, stop.exit_code) from None
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    return _finish(trainer, metrics_cb, folder, config, data, settings, started)


def _interrupted_message(folder: ModelDir, data: RunData, signal_name: str, done: int) -> str:
    head = f"training of {folder.path} stopped by {signal_name}: interrupted at epoch {done}"
    if done == 0:
        return f"{head} before any epoch finished; nothing to resume: start it again"
    saved = "epoch 0 is" if done == 1 else f"epochs 0-{done - 1} are"
    return (
        f"{head}; {saved} saved in {folder.last_ckpt}: continue with "
        f"`cxrlab train {data.run_dir} --name {folder.name} --resume`"
    )


class _SeesExceptions(Callback):
    """Remembers the exception Lightning reports to callbacks (it may exit instead of
    re-raising it)."""

    def __init__(self) -> None:
        self.seen: BaseException | None = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.seen = exception


@contextmanager
def isolated_seed(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and torch (CPU and CUDA) as Lightning's `seed_everything` does for
    the model's init, then put back the caller's RNG states and `PL_GLOBAL_SEED` /
    `PL_SEED_WORKERS`. Epochs re-seed themselves from the config (module.py)."""
    saved_env = {key: os.environ.get(key) for key in _SEED_ENV}
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        L.seed_everything(seed, workers=True, verbose=False)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class _RunFiles(Callback):
    """Writes config.yaml and run.json when fitting starts: after Lightning has checked the
    checkpoint folder (so a fresh run is not warned about a non-empty folder), on rank 0."""

    def __init__(self, write) -> None:
        self.write = write

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.write()


def resolve_config(
    run_dir: str | Path,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    name: str | None = None,
    resume: bool = False,
) -> tuple[ExperimentConfig, str]:
    """The experiment config and model name a `cxrlab train` call means.

    Base: `config_file`, or, on resume without one, the run's saved `config.yaml`; then the
    dotted `overrides` (None = flag not given) win. Unknown keys raise `ConfigError` listing
    the valid ones.
    """
    overrides = overrides or {}
    base = load_yaml(config_file) if config_file else {}
    source = str(config_file) if config_file else "command-line options"
    config = build(ExperimentConfig, merge_overrides(base, overrides), source=source)
    name = check_folder_name(name or config.model.name)
    saved = RunDir(run_dir).model(name).config
    if resume and not config_file and saved.is_file():
        base = load_yaml(saved)
        config = build(ExperimentConfig, merge_overrides(base, overrides), source=str(saved))
    return config, name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _loader(data: RunData, split: str, train: TrainConfig, settings: dict[str, Any]):
    # rank/world size: looked up from the DDP process group when the loader is iterated
    return make_loader(
        data,
        split,
        train.batch_size,
        train=split == "train",
        seed=train.seed,
        num_workers=train.num_workers,
        pin_memory=settings["on_cuda"],
    )


def _make_module(config: ExperimentConfig, data: RunData, name: str, *, pretrained: bool):
    train_labels = data.labels[data.rows("train")]
    weight = pos_weight(train_labels, data.targets).tolist() if config.train.pos_weight else None
    provenance = {
        "name": name,
        "seed": config.train.seed,
        "split_hash": data.split_hash,
        "versions": package_versions(),
    }
    return ChestXrayClassifier(
        config.model_dump(mode="json"),
        data.targets,
        data.image_size,
        pos_weight=weight,
        provenance=provenance,
        pretrained=pretrained,
    )


# ---- model folder: fresh, resume, finish ------------------------------------------------------
def _start_fresh(folder: ModelDir, overwrite: bool) -> None:
    model_dir = folder.path
    # config.yaml/run.json alone do not count: they are written at fit start, and DDP
    # workers that Lightning launches re-run train_model.
    if any((model_dir / f).exists() for f in ModelDir.TRAINED) and not overwrite:
        existing = [f for f in ModelDir.ARTIFACTS if (model_dir / f).exists()]
        raise ConfigError(
            f"{model_dir} already holds {', '.join(existing)}; pass --resume to continue that"
            " run, --name to train under another name, or --overwrite to replace it"
        )
    existing = [f for f in ModelDir.ARTIFACTS if (model_dir / f).exists()]
    if existing and rank_zero_only.rank == 0:
        for f in existing:
            (model_dir / f).unlink()
        log.info("removed the previous run's %s from %s", ", ".join(existing), model_dir)


def _check_resumable(folder: ModelDir, config: ExperimentConfig, data: RunData) -> None:
    model_dir = folder.path
    last, saved_path = folder.last_ckpt, folder.config
    if not last.is_file():
        raise ConfigError(
            f"cannot resume: {last} not found (no epoch of a run under that name finished); "
            "train without --resume"
        )
    check_readable(last, fix="resume is not possible: train again with --overwrite")
    if saved_path.is_file():
        saved = build(ExperimentConfig, load_yaml(saved_path), source=str(saved_path))
        diffs = config_differences(saved, config, ignore=RESUME_MAY_DIFFER)
        if diffs:
            raise ConfigError(
                f"cannot resume {model_dir}: the config differs from the saved {saved_path} in "
                + "; ".join(f"{k} (saved {a!r}, now {b!r})" for k, a, b in diffs)
                + ". Resume with the saved settings, or train under another --name"
            )
    run_json = folder.run_json
    saved_hash = read_json(run_json).get("split_hash") if run_json.is_file() else None
    if saved_hash and data.split_hash and saved_hash != data.split_hash:
        raise DataError(
            f"cannot resume {model_dir}: it was trained on split {saved_hash[:12]}..., but "
            f"{data.run_dir}/data now holds split {data.split_hash[:12]}...; re-prepare or retrain"
        )


def config_differences(
    old: ExperimentConfig, new: ExperimentConfig, ignore: frozenset[str] = frozenset()
) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs, sorted by key."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    keys = sorted((set(a) | set(b)) - ignore)
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _write_run_files(
    folder: ModelDir,
    config: ExperimentConfig,
    data: RunData,
    settings: dict[str, Any],
    extra: dict[str, Any],
) -> None:
    if rank_zero_only.rank != 0:
        return
    folder.path.mkdir(parents=True, exist_ok=True)
    write_atomic(folder.config, to_yaml(config))
    run_json = folder.run_json
    previous = read_json(run_json) if run_json.is_file() else {}
    info = {
        **previous,
        "run_dir": str(data.run_dir.resolve()),
        "targets": data.targets,
        "image_size": data.image_size,
        "seed": config.train.seed,
        "split_hash": data.split_hash,
        "trainer": {k: str(v) for k, v in settings.items()},
        "versions": package_versions(),
        **extra,
    }
    if previous.get("started") and "started" in extra:
        info["resumed"] = [*previous.get("resumed", []), extra["started"]]
        info["started"] = previous["started"]
    write_json(run_json, info)


def _finish(
    trainer: L.Trainer,
    metrics_cb: MetricsCSV,
    folder: ModelDir,
    config: ExperimentConfig,
    data: RunData,
    settings: dict[str, Any],
    started: str,
) -> TrainResult:
    best = metrics_cb.kept(config.train.select)
    stopper = next((cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)), None)
    result = TrainResult(
        model_dir=folder.path,
        best_checkpoint=folder.best_ckpt,
        last_checkpoint=folder.last_ckpt,
        best_epoch=best[0] if best else None,
        best_val_auroc=best[1] if best else None,
        epochs_run=len(metrics_cb.rows),
        stopped_early=stopper is not None and stopper.stopped_epoch > 0,
    )
    summary = {
        "finished": _now(),
        "best_epoch": result.best_epoch,
        "best_val_auroc_macro": result.best_val_auroc,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
    }
    _write_run_files(folder, config, data, settings, summary)
    log.info("trained %s: best epoch %s, val macro AUROC %s", folder.path, *summary.values())
    return result

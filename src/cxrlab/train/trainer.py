"""Lightning `Trainer` for a cxrlab run: devices, DDP strategy, precision, callbacks.

`trainer_settings` turns the `train` config section into Trainer arguments: under
`torchrun` the process layout comes from the environment; more than one process means DDP
(gloo on CPU, NCCL on CUDA, chosen by Lightning); "auto" precision is mixed on CUDA and
32-bit on CPU.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cxrlab.config import ExperimentConfig, TrainConfig
from cxrlab.errors import ConfigError
from cxrlab.rundir import BEST_CKPT, LAST_CKPT
from cxrlab.runinfo import atomic_file
from cxrlab.train.callbacks import MetricsCSV

#: The metric that picks best.ckpt and drives early stopping.
MONITOR = "val_auroc_macro"


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_WORLD_SIZE" in os.environ


def trainer_settings(train: TrainConfig) -> dict[str, Any]:
    """Resolve accelerator, devices, nodes, strategy, precision and determinism for Lightning."""
    accelerator = "gpu" if train.accelerator == "cuda" else train.accelerator
    on_cuda = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    devices, num_nodes = train.devices, train.num_nodes
    if _under_torchrun() and devices == "auto":
        # torchrun fixes the process count; Lightning needs devices/nodes to agree with it.
        devices = int(os.environ["LOCAL_WORLD_SIZE"])
        num_nodes = max(num_nodes, int(os.environ["WORLD_SIZE"]) // devices)
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if devices == "auto":
        per_node = torch.cuda.device_count() if on_cuda else 1
    else:
        per_node = devices if isinstance(devices, int) else len(str(devices).split(","))
    world = per_node * num_nodes
    strategy: str = "auto"
    if world > 1:
        # Freeze-then-unfreeze toggles requires_grad after DDP has wrapped the model: DDP must
        # then tolerate parameters without gradients in the frozen epochs.
        strategy = (
            "ddp_find_unused_parameters_true" if train.strategy == "freeze-then-unfreeze" else "ddp"
        )
    return {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
        "precision": resolve_precision(train.precision, on_cuda),
        # CUDA has no deterministic kernel for some backward ops (e.g. adaptive pooling):
        # warn instead of failing there; CPU runs are bit-for-bit repeatable.
        "deterministic": (("warn" if on_cuda else True) if train.deterministic else False),
        "world_size": world,
        "on_cuda": on_cuda,
    }


def resolve_precision(precision: str, on_cuda: bool) -> str:
    """Lightning precision: "auto" is bf16-mixed (or 16-mixed) on CUDA, 32-true elsewhere."""
    if precision == "auto":
        if not on_cuda:
            return "32-true"
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true" if precision == "32" else precision


def checkpoints(model_dir: Path, select: str = "best") -> list[ModelCheckpoint]:
    """best.ckpt and last.ckpt (every epoch), in that order. best.ckpt holds the epoch with
    the highest val macro AUROC (`select="best"`) or, like last.ckpt, the latest epoch
    (`select="last"`: the weights evaluation uses are then the final ones).

    Not `save_last=True`: since Lightning 2.6 that writes last.ckpt only in epochs that also
    save a top-k checkpoint, i.e. when the metric improved, so a resumed run would repeat
    epochs. A second, unmonitored callback saves every epoch; Lightning runs checkpoint
    callbacks last and in this order, so last.ckpt holds this epoch's best-tracking state
    and metrics.csv row.
    """
    common = {"dirpath": model_dir, "save_top_k": 1, "enable_version_counter": False}
    # "step" is among ModelCheckpoint's own monitor candidates: the latest epoch wins (and the
    # two callbacks' state keys differ, which Lightning requires).
    monitor = {"monitor": MONITOR if select == "best" else "step", "mode": "max"}
    best = ModelCheckpoint(filename=Path(BEST_CKPT).stem, **monitor, **common)
    last = ModelCheckpoint(filename=Path(LAST_CKPT).stem, monitor=None, **common)
    return [best, last]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint I/O, but a checkpoint file is replaced atomically.

    Lightning writes the bytes straight onto `last.ckpt`; a full disk or a kill in that
    moment leaves a truncated file that `--resume` cannot read. Here the bytes go to a temp
    file beside it, are synced, then `os.replace`d (`runinfo.atomic_file`): the previous
    epoch's checkpoint stays whole until the new one is. Serialised in memory first (as
    Lightning does) so a failed write is the file system's OSError, not torch's RuntimeError.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_file(path, "wb") as handle:
            handle.write(buffer.getbuffer())


def make_trainer(
    config: ExperimentConfig,
    model_dir: Path,
    settings: dict[str, Any],
    metrics_cb: MetricsCSV,
    extra: Sequence[Callback],
    progress_bar: bool,
) -> L.Trainer:
    train = config.train
    stoppers: list[Callback] = []
    if train.select == "best":  # select=last trains every epoch
        stoppers.append(
            EarlyStopping(monitor=MONITOR, mode="max", patience=train.patience, check_finite=False)
        )
    saving = checkpoints(model_dir, train.select)
    callbacks: list[Callback] = [metrics_cb, *stoppers, *saving, *extra]
    if progress_bar:
        callbacks.append(RichProgressBar() if sys.stderr.isatty() else TQDMProgressBar(20))
    kwargs = {k: v for k, v in settings.items() if k not in ("world_size", "on_cuda")}
    try:
        return L.Trainer(
            **kwargs,
            max_epochs=config.train.epochs,
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            logger=False,
            default_root_dir=model_dir,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,  # the batch sampler shards by rank itself
            limit_train_batches=config.train.limit_batches,
            enable_progress_bar=progress_bar,
            enable_model_summary=False,
        )
    except (ValueError, RuntimeError, TypeError) as exc:  # Lightning's MisconfigurationException
        raise ConfigError(f"invalid trainer settings {kwargs}: {exc}") from None

"""Callbacks: `metrics.csv`, one row per epoch, that survives kill-and-resume.

The rows live in the callback's state, which Lightning saves inside every checkpoint. The
row of epoch e is added at `on_validation_end`, before `ModelCheckpoint` (always run last)
saves `last.ckpt` for that epoch; on `--resume` the file is rewritten from the checkpoint's
rows. So whenever the process dies, the resumed run's file holds exactly one row per epoch:
an epoch finished after the last checkpoint is dropped and trained again.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from cxrlab.runinfo import write_atomic

log = logging.getLogger(__name__)


def metric_columns(targets: Sequence[str]) -> list[str]:
    """metrics.csv columns, in order."""
    per_class = [f"val_auroc_{name}" for name in targets]
    return ["epoch", "train_loss", "val_loss", "val_auroc_macro", *per_class, "lr", "seconds"]


class MetricsCSV(L.Callback):
    """Write `path` (metrics.csv) with one row per finished epoch, on global rank 0.

    `lr` is the head's learning rate at the end of the epoch; `seconds` the wall time of the
    epoch's training and validation. Undefined metrics are written as empty cells (NaN).
    """

    def __init__(self, path: str | Path, targets: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = metric_columns(targets)
        self.rows: list[dict[str, float]] = []
        self._started = time.perf_counter()

    @property
    def state_key(self) -> str:
        return "MetricsCSV"

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(row) for row in state_dict.get("rows", [])]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A fresh run starts an empty file; a resumed one rewrites the checkpoint's rows.
        self._write(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        # The module's exact floats when it keeps them; Lightning's logged copies are float32.
        metrics = {**trainer.callback_metrics, **getattr(pl_module, "epoch_metrics", {})}
        row: dict[str, float] = {"epoch": float(trainer.current_epoch)}
        for name in self.columns[1:-2]:
            value = metrics.get(name)
            row[name] = float(value) if value is not None else math.nan
        row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        row["seconds"] = round(time.perf_counter() - self._started, 3)
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        self._write(trainer)

    def best(self) -> tuple[int, float] | None:
        """(epoch, val_auroc_macro) of the best epoch so far (first of ties), or None."""
        scored = [r for r in self.rows if not math.isnan(r["val_auroc_macro"])]
        if not scored:
            return None
        top = max(scored, key=lambda r: r["val_auroc_macro"])  # max() keeps the first tie
        return int(top["epoch"]), float(top["val_auroc_macro"])

    def kept(self, select: str) -> tuple[int, float] | None:
        """(epoch, val_auroc_macro) of the epoch best.ckpt holds under `train.select`."""
        if select == "best":
            return self.best()
        if not self.rows:
            return None
        last = max(self.rows, key=lambda r: r["epoch"])
        return int(last["epoch"]), float(last["val_auroc_macro"])

    def _write(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in sorted(self.rows, key=lambda r: r["epoch"]):
            writer.writerow({k: _cell(k, row.get(k, math.nan)) for k in self.columns})
        write_atomic(self.path, buffer.getvalue())


def _cell(column: str, value: float) -> str:
    if column == "epoch":
        return str(int(value))
    return "" if math.isnan(value) else repr(float(value))

"""`cxrlab train RUN_DIR`: train one model on a prepared run directory.

cxrlab train RUN_DIR --model simple_cnn --epochs 30
cxrlab train RUN_DIR --model efficientnet_b0 --pretrained --strategy freeze-then-unfreeze
cxrlab train RUN_DIR --config configs/resnet18.yaml --lr 3e-4      # flags override the file
torchrun --nproc-per-node 4 -m cxrlab train RUN_DIR --model densenet121 --pretrained
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cxrlab.cli.app import app, console, quiet_lightning
from cxrlab.cli.options import NOT_GIVEN as _NOT_GIVEN  # a flag not given keeps the file's
from cxrlab.config import (
    TRAIN_OPTIONS,
    Accelerator,
    Optimizer,
    Precision,
    Schedule,
    Selection,
    Strategy,
    recipe_default,
)


def _by_recipe(dotted: str) -> str:
    """'default X; Y pretrained' from the config (the transfer recipe's value if it has one)."""
    scratch, transfer = (recipe_default(dotted, transfer=t) for t in (False, True))
    if scratch == transfer:
        return f"default {scratch}"
    return f"default {scratch}; {transfer} with --pretrained or --weights"


def _devices(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.strip().isdigit() else value.strip()


@app.command("train")
def train_command(
    run_dir: Path = typer.Argument(..., help="Run directory prepared by `cxrlab prepare`."),
    config: Path = typer.Option(
        None,
        "--config",
        help="YAML experiment config (sections model/optim/schedule/"
        "augment/train); the flags below override it.",
    ),
    model: str = typer.Option(
        _NOT_GIVEN, help="simple_cnn or a timm name: resnet18, efficientnet_b0, densenet121, ..."
    ),
    pretrained: bool = typer.Option(
        _NOT_GIVEN, "--pretrained/--no-pretrained", help="Start from ImageNet weights."
    ),
    weights: Path = typer.Option(_NOT_GIVEN, help="Backbone weights file (.pth/.safetensors)."),
    strategy: Strategy = typer.Option(_NOT_GIVEN, help="Transfer learning strategy."),
    freeze_epochs: int = typer.Option(
        _NOT_GIVEN, help="Head-only epochs before unfreezing (freeze-then-unfreeze)."
    ),
    epochs: int = typer.Option(_NOT_GIVEN, help=f"Maximum epochs ({_by_recipe('train.epochs')})."),
    batch_size: int = typer.Option(_NOT_GIVEN, help="Images per batch per device (default 32)."),
    lr: float = typer.Option(_NOT_GIVEN, help="Learning rate of the head / whole model."),
    backbone_lr_mult: float = typer.Option(
        _NOT_GIVEN,
        help=f"Backbone learning rate = lr x this ({_by_recipe('optim.backbone_lr_mult')}).",
    ),
    optimizer: Optimizer = typer.Option(_NOT_GIVEN, help="Optimizer (default adamw)."),
    schedule: Schedule = typer.Option(
        _NOT_GIVEN, help="LR schedule (default cosine: warm-up, then cosine decay)."
    ),
    patience: int = typer.Option(
        _NOT_GIVEN, help="Early stopping: epochs without val macro AUROC gain (default 5)."
    ),
    select: Selection = typer.Option(
        _NOT_GIVEN,
        help="Weights best.ckpt keeps: best (highest val macro AUROC, early stopping) or last"
        f" (final epoch, no early stopping) ({_by_recipe('train.select')}).",
    ),
    ema: bool = typer.Option(
        _NOT_GIVEN,
        "--ema/--no-ema",
        help=f"Validate and keep an EMA of the weights ({_by_recipe('train.ema')}).",
    ),
    pos_weight: bool = typer.Option(
        _NOT_GIVEN, "--pos-weight/--no-pos-weight", help="Weight positives by neg/pos in BCE."
    ),
    seed: int = typer.Option(_NOT_GIVEN, help="Seed; the same seed repeats a CPU run exactly."),
    precision: Precision = typer.Option(
        _NOT_GIVEN, help="auto: mixed precision on CUDA, 32-bit on CPU."
    ),
    accelerator: Accelerator = typer.Option(_NOT_GIVEN, help="Where to train (auto: a GPU)."),
    devices: str = typer.Option(
        _NOT_GIVEN, help="Devices per node: a number or auto (>1 trains with DDP)."
    ),
    num_nodes: int = typer.Option(_NOT_GIVEN, help="Machines for multi-node DDP."),
    num_workers: int = typer.Option(_NOT_GIVEN, help="DataLoader worker processes (default 0)."),
    hflip: bool = typer.Option(
        _NOT_GIVEN, "--hflip/--no-hflip", help="Random horizontal flips (off: it moves the heart)."
    ),
    rotation: float = typer.Option(_NOT_GIVEN, help="Random rotation range, +- degrees."),
    name: str = typer.Option(None, help="Model folder under RUN_DIR/models (default: model)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from models/NAME/last.ckpt."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing models/NAME instead of refusing."
    ),
) -> None:
    """Train a multi-label classifier; writes RUN_DIR/models/NAME (checkpoints, metrics)."""
    from cxrlab.train.engine import resolve_config, train_model

    given = dict(locals())  # every flag, by its name in TRAIN_OPTIONS
    quiet_lightning()
    overrides = {dotted: given[flag] for flag, dotted in TRAIN_OPTIONS.items()}
    overrides["model.weights"] = str(weights) if weights is not None else None
    overrides["train.devices"] = _devices(devices)
    resolved, model_name = resolve_config(run_dir, config, overrides, name, resume)
    result = train_model(run_dir, resolved, name=model_name, resume=resume, overwrite=overwrite)

    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:  # under DDP every rank runs this command
        _print_result(result)


def _print_result(result) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("model folder", str(result.model_dir))
    best = "n/a" if result.best_epoch is None else str(result.best_epoch)
    auroc = "n/a" if result.best_val_auroc is None else f"{result.best_val_auroc:.4f}"
    table.add_row("epoch kept (best.ckpt)", best)
    table.add_row("its val macro AUROC", auroc)
    table.add_row(
        "epochs run", f"{result.epochs_run}{' (early stop)' if result.stopped_early else ''}"
    )
    console.print("[green]training finished[/]")
    console.print(table)

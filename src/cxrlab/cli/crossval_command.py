"""`cxrlab crossval RUN_DIR --name NAME`: k-fold cross-validation of one training config.

cxrlab train RUN --model efficientnet_lite0 --pretrained       # the config to trust
cxrlab crossval RUN --name efficientnet_lite0                  # its 5-fold pooled AUROC
cxrlab train RUN --model simple_cnn
cxrlab crossval RUN --name simple_cnn --against efficientnet_lite0   # paired, same folds
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cxrlab.cli.app import app, console, quiet_lightning
from cxrlab.cli.options import DEVICE_HELP, from_config
from cxrlab.cli.render import frame_table
from cxrlab.config import CrossvalConfig, Device, section_from


@app.command("crossval")
def crossval_command(
    run_dir: Path = typer.Argument(..., help="Run directory prepared by `cxrlab prepare`."),
    name: str = typer.Option(
        ..., help="Cross-validate the config of trained model NAME (or of --config), as NAME."
    ),
    config: Path = typer.Option(
        None, "--config", help="YAML experiment config to use instead of models/NAME's."
    ),
    folds: int = from_config(CrossvalConfig, "folds", help="Folds (by patient)."),
    val: float = from_config(CrossvalConfig, "val", help="Val share of each fold's training."),
    seed: int = from_config(CrossvalConfig, "seed", help="Fold assignment seed."),
    bootstrap: int = from_config(CrossvalConfig, "bootstrap", help="Patient resamples."),
    device: Device = from_config(CrossvalConfig, "device", help=DEVICE_HELP),
    batch_size: int = from_config(CrossvalConfig, "batch_size", help="Images per forward pass."),
    keep_models: bool = from_config(
        CrossvalConfig,
        "keep_models",
        "--keep-models/--no-keep-models",
        help="Keep each fold's checkpoints; --no-keep-models deletes them once the fold's "
        "test images are predicted (config, metrics and predictions stay).",
    ),
    against: str = typer.Option(
        None, help="Also compare with crossval OTHER (same folds): paired bootstrap NAME - OTHER."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace crossval/NAME if it holds another config's folds."
    ),
) -> None:
    """Train NAME's config on each of k patient-grouped folds; pooled out-of-fold AUROC."""
    from cxrlab.crossval import compare_crossval, config_of, crossval

    options = section_from(CrossvalConfig, dict(locals()), "cxrlab crossval options")
    quiet_lightning()
    experiment = config_of(run_dir, name, config)
    result = crossval(run_dir, experiment, name, options, overwrite=overwrite, on_fold=_say)
    _print_summary(result.summary)
    if against:
        from cxrlab.evaluate.tables import paired_table

        paired = compare_crossval(run_dir, name, against, options)
        console.print(frame_table(paired_table(paired), f"Paired: {name} - {against}"))
    console.print(f"written to {result.folder}")


def _say(f: int, k: int, what: str) -> None:
    words = {
        "saved": "kept from the last run",
        "predicting": "trained earlier; predicting its test images",
        "training": "training",
        "resuming": "resuming its training",
    }
    console.print(f"[bold]fold {f + 1}/{k}[/]: {words[what]}")


def _print_summary(summary: dict) -> None:
    pooled = summary["pooled"]
    table = Table(
        title=f"{summary['name']}: pooled out-of-fold AUROC, {len(summary['fold_sizes'])} folds "
        f"({summary['n_images']} images, {summary['n_patients']} patients; 95% CI)"
    )
    table.add_column("target")
    table.add_column("AUROC", justify="right")
    for target in summary["targets"]:
        table.add_row(target, _ci(pooled["per_class"][target]))
    table.add_row("macro", _ci(pooled["macro"]))
    console.print(table)
    console.print(
        f"per-fold macro AUROC: mean {summary['fold_mean']:.3f} ± {summary['fold_sd']:.3f} "
        f"({', '.join(f'{v:.3f}' for v in summary['fold_macro'])})"
    )


def _ci(entry: dict) -> str:
    from cxrlab.evaluate.tables import format_ci

    return format_ci(entry.get("estimate"), entry.get("low"), entry.get("high"))

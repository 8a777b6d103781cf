"""`cxrlab evaluate` and `cxrlab compare`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cxrlab.cli.app import app, console
from cxrlab.cli.options import DEVICE_HELP, csv_list, from_config
from cxrlab.cli.render import frame_table
from cxrlab.config import Device, EvalSplit, EvaluateConfig, ThresholdRule
from cxrlab.rundir import RunDir


@app.command("evaluate")
def evaluate_command(
    run_dir: Path = typer.Argument(..., help="Run directory with a trained model."),
    model: str = typer.Option(..., "--model", help="Model name (folder under RUN_DIR/models)."),
    split: EvalSplit = from_config(EvaluateConfig, "split", help="Split to evaluate."),
    data_root: Path = typer.Option(
        None, help="Evaluate every image of another NIH-layout data set (external test set)."
    ),
    threshold: ThresholdRule = from_config(
        EvaluateConfig, "threshold", help="Threshold rule, chosen on val only."
    ),
    sensitivity: float = from_config(
        EvaluateConfig, "target_sensitivity", help="Target sensitivity for fixed_sensitivity."
    ),
    bootstrap: int = from_config(
        EvaluateConfig, "bootstrap", help="Bootstrap resamples (over patients)."
    ),
    seed: int = from_config(EvaluateConfig, "seed", help="Bootstrap seed."),
    temperature: bool = from_config(
        EvaluateConfig, "temperature", help="Fit temperature scaling on val and apply it."
    ),
    tta: bool = from_config(
        EvaluateConfig,
        "tta",
        "--tta/--no-tta",
        help="Test-time augmentation: mean over 5 small zooms/shifts (never a flip).",
    ),
    drop_missing: bool = from_config(
        EvaluateConfig, "drop_missing", help="External set: drop missing images."
    ),
    device: Device = from_config(EvaluateConfig, "device", help=DEVICE_HELP),
    batch_size: int = from_config(EvaluateConfig, "batch_size", help="Images per forward pass."),
) -> None:
    """Predict, choose thresholds on val, and report metrics with patient-bootstrap CIs."""
    from cxrlab.config import section_from
    from cxrlab.evaluate.workflow import evaluate_model

    given = {**locals(), "target_sensitivity": sensitivity}
    options = section_from(EvaluateConfig, given, "evaluate options")
    result = evaluate_model(run_dir, model, options, data_root=data_root)
    print_evaluation(result)


def print_evaluation(result: dict) -> None:
    from cxrlab.evaluate.tables import multilabel_table, per_class_table

    metrics, ci = result["metrics"], result["ci"]
    title = f"{result['model']}: {result['n_images']} images, {result['n_patients']} patients"
    console.print(
        frame_table(per_class_table(metrics, ci), title + " (95% CI, bootstrap over patients)")
    )
    console.print(
        frame_table(
            multilabel_table(metrics, ci), "All labels at once, beside predicting all-negative"
        )
    )
    for note in metrics.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")


@app.command("compare")
def compare_command(
    run_dir: Path = typer.Argument(..., help="Run directory with evaluated models."),
    split: EvalSplit = from_config(EvaluateConfig, "split", help="Split to compare on."),
    models: str = typer.Option(None, help="Comma-separated model names (default: all evaluated)."),
    bootstrap: int = from_config(EvaluateConfig, "bootstrap", help="Paired bootstrap resamples."),
    seed: int = from_config(EvaluateConfig, "seed", help="Bootstrap seed."),
) -> None:
    """Compare every evaluated model: AUROC with CIs, DeLong and paired-bootstrap p-values."""
    from cxrlab.evaluate.compare import compare_models
    from cxrlab.evaluate.tables import paired_table

    names = csv_list(models)
    summary = compare_models(run_dir, split, names, n_boot=bootstrap, seed=seed)
    table = Table(title=f"AUROC on {split} (95% CI)")
    table.add_column("model")
    for key in [*summary["targets"], "macro"]:
        table.add_column(key, justify="right")
    for name, row in summary["auroc"].items():
        table.add_row(name, *[_ci(row[k]) for k in [*summary["targets"], "macro"]])
    console.print(table)
    for label, pair in summary["pairs"].items():
        console.print(frame_table(paired_table(pair["paired_bootstrap"]), f"Paired: {label}"))
    console.print(f"written to {RunDir(run_dir).comparison(split)}")


def _ci(entry: dict) -> str:
    if entry.get("estimate") is None:
        return "undefined"
    return f"{entry['estimate']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"

"""`cxrlab evaluate` and `cxrlab compare`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cxrlab.cli.app import app, console
from cxrlab.cli.render import frame_table


@app.command("evaluate")
def evaluate_command(
    run_dir: Path = typer.Argument(..., help="Run directory with a trained model."),
    model: str = typer.Option(..., "--model", help="Model name (folder under RUN_DIR/models)."),
    split: str = typer.Option("test", help="Split to evaluate: test or val."),
    data_root: Path = typer.Option(
        None, help="Evaluate every image of another NIH-layout data set (external test set)."
    ),
    threshold: str = typer.Option(
        "max_f1", help="Threshold rule, chosen on val only: max_f1, youden, fixed_sensitivity."
    ),
    sensitivity: float = typer.Option(0.90, help="Target sensitivity for fixed_sensitivity."),
    bootstrap: int = typer.Option(1000, min=10, help="Bootstrap resamples (over patients)."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    temperature: bool = typer.Option(False, help="Fit temperature scaling on val and apply it."),
    drop_missing: bool = typer.Option(False, help="External set: drop missing images."),
    batch_size: int = typer.Option(64, min=1, help="Images per forward pass."),
) -> None:
    """Predict, choose thresholds on val, and report metrics with patient-bootstrap CIs."""
    from cxrlab.evaluate.workflow import EvalOptions, evaluate_model

    options = EvalOptions(
        split=split,
        threshold=threshold,
        target_sensitivity=sensitivity,
        n_boot=bootstrap,
        seed=seed,
        temperature=temperature,
        batch_size=batch_size,
        drop_missing=drop_missing,
    )
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
    split: str = typer.Option("test", help="Split whose predictions to compare."),
    models: str = typer.Option(None, help="Comma-separated model names (default: all evaluated)."),
    bootstrap: int = typer.Option(1000, min=10, help="Paired bootstrap resamples."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
) -> None:
    """Compare every evaluated model: AUROC with CIs, DeLong and paired-bootstrap p-values."""
    from cxrlab.evaluate.compare import compare_models
    from cxrlab.evaluate.tables import paired_table

    names = [m.strip() for m in models.split(",")] if models else None
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
    console.print(f"written to {Path(run_dir) / 'reports' / 'compare' / split}")


def _ci(entry: dict) -> str:
    if entry.get("estimate") is None:
        return "undefined"
    return f"{entry['estimate']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"

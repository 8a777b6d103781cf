"""`cxrlab analyze`."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrlab.cli.app import app, console
from cxrlab.cli.options import DEVICE_HELP, csv_list, from_config
from cxrlab.config import AnalyzeConfig, Device, Scaling, Split
from cxrlab.rundir import ANALYSIS_SUMMARY


@app.command("analyze")
def analyze_command(
    run_dir: Path = typer.Argument(..., help="Run directory with a trained model."),
    model: str = typer.Option(..., "--model", help="Model name (folder under RUN_DIR/models)."),
    layers: str = from_config(
        AnalyzeConfig, "layers", help="Comma-separated layers; the first is clustered, all probed."
    ),
    split: Split = from_config(AnalyzeConfig, "split", help="Split whose images are analysed."),
    scaling: Scaling = from_config(
        AnalyzeConfig,
        "scaling",
        help="Before PCA: none (keeps the features' own geometry), standard, robust.",
    ),
    k: int = from_config(AnalyzeConfig, "k", help="Number of clusters (default: best silhouette)."),
    k_min: int = from_config(AnalyzeConfig, "k_min", help="Smallest k tried."),
    k_max: int = from_config(AnalyzeConfig, "k_max", help="Largest k tried."),
    n_components: int = from_config(
        AnalyzeConfig, "n_components", help="PCA components K-Means runs on."
    ),
    seed: int = from_config(
        AnalyzeConfig, "seed", default=0, help="Seed for K-Means and subsampling."
    ),
    device: Device = from_config(AnalyzeConfig, "device", help=DEVICE_HELP),
    batch_size: int = from_config(AnalyzeConfig, "batch_size", help="Images per forward pass."),
    list_layers: bool = typer.Option(False, "--list-layers", help="List layer names and exit."),
) -> None:
    """Features from intermediate layers → PCA, K-Means, cluster↔pathology statistics."""
    from cxrlab.analysis.workflow import analysis_dir, analyze_model, model_layers
    from cxrlab.config import section_from

    if list_layers:
        for name in model_layers(run_dir, model):
            console.print(name)
        return
    given = {**locals(), "layers": csv_list(layers) or []}
    options = section_from(AnalyzeConfig, given, "analyze options", exclude=("model",))
    result = analyze_model(run_dir, model, options)
    out = analysis_dir(run_dir, model)
    summary = out / ANALYSIS_SUMMARY
    if summary.is_file():
        from rich.markdown import Markdown

        console.print(Markdown(summary.read_text()))
    console.print(f"[green]analysis written to[/] {out} (k = {result.get('k', '?')})")

"""`cxrlab analyze`."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrlab.cli.app import app, console


@app.command("analyze")
def analyze_command(
    run_dir: Path = typer.Argument(..., help="Run directory with a trained model."),
    model: str = typer.Option(..., "--model", help="Model name (folder under RUN_DIR/models)."),
    layers: str = typer.Option(
        "penultimate", help="Comma-separated layers; the first is clustered, all are probed."
    ),
    split: str = typer.Option("test", help="Split whose images are analysed."),
    scaling: str = typer.Option(
        "none", help="Before PCA: none (keeps the features' own geometry), standard, robust."
    ),
    k: int = typer.Option(None, help="Number of clusters (default: best silhouette)."),
    k_min: int = typer.Option(2, help="Smallest k tried."),
    k_max: int = typer.Option(8, help="Largest k tried."),
    n_components: int = typer.Option(50, help="PCA components K-Means runs on."),
    seed: int = typer.Option(0, help="Seed for K-Means and subsampling."),
    list_layers: bool = typer.Option(False, "--list-layers", help="List layer names and exit."),
) -> None:
    """Features from intermediate layers → PCA, K-Means, cluster↔pathology statistics."""
    from cxrlab.analysis.workflow import analysis_dir, analyze_model, model_layers

    if list_layers:
        for name in model_layers(run_dir, model):
            console.print(name)
        return
    result = analyze_model(
        run_dir,
        model,
        layers=[s.strip() for s in layers.split(",") if s.strip()],
        split=split,
        scaling=scaling,
        k=k,
        k_range=(k_min, k_max),
        n_components=n_components,
        seed=seed,
    )
    out = analysis_dir(run_dir, model)
    summary = out / "summary.md"
    if summary.is_file():
        from rich.markdown import Markdown

        console.print(Markdown(summary.read_text()))
    console.print(f"[green]analysis written to[/] {out} (k = {result.get('k', '?')})")

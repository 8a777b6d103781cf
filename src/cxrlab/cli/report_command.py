"""`cxrlab report RUN_DIR`: the run's results as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrlab.cli.app import app, console


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="Run directory (any stages may have run)."),
    out: Path = typer.Option(None, help="Where to write the HTML (default: RUN_DIR/report.html)."),
    split: str = typer.Option("test", help="Evaluated split to report: test or val."),
    embed_interactive: bool = typer.Option(
        False,
        help="Embed the interactive 3-D PCA (plotly, ~3.5 MB each) in the page instead of "
        "linking it relatively; the page then opens on its own, away from the run directory.",
    ),
) -> None:
    """Write report.html: summary, cohort, training, metrics, comparison, analysis, Grad-CAM,
    model card. Sections whose stage has not run say so."""
    from cxrlab.report.build import build_report

    path = build_report(run_dir, out, split=split, embed_interactive=embed_interactive)
    size = path.stat().st_size / 1e6
    console.print(f"wrote [bold]{path}[/] ({size:.1f} MB); open it in any browser, offline")

"""`cxrlab run CONFIG` and `cxrlab demo`."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import typer

from cxrlab.cli.app import app, console, quiet_lightning
from cxrlab.rundir import RunDir


def _on_stage(record) -> None:
    if record.name == "prepare":  # training comes next: Lightning's INFO lines per --verbose
        quiet_lightning()
    if record.status == "skipped":
        console.print(f"[dim]- {record.name}: skipped ({record.detail})[/]")
    else:
        console.print(f"[green]✓ {record.name}[/] ({record.seconds:.1f} s)")


def run_config(config_path: Path, out: Path, overrides: dict) -> Path | None:
    from cxrlab.config import load_study
    from cxrlab.pipeline import run_study

    config = load_study(config_path, overrides)
    result = run_study(config, out, on_stage=_on_stage)
    console.print(f"stages run: {len(result.ran())}, skipped (unchanged): {len(result.skipped())}")
    _print_models(out, [entry.name for entry in config.model_entries()])
    return result.report


def _print_models(run_dir: Path, names: list[str]) -> None:
    """Best validation macro AUROC and test macro AUROC [95% CI] of each model."""
    from rich.table import Table

    table = Table(title="Models (macro AUROC)")
    for column in ("model", "best epoch", "val", "test [95% CI, patient bootstrap]"):
        table.add_column(column, justify="right")
    for name in names:
        run = _json(RunDir(run_dir).model(name).run_json)
        test = _json(RunDir(run_dir).evaluation(name, "test").metrics)
        auroc = (test.get("ci") or {}).get("macro", {}).get("auroc", {})
        val = run.get("best_val_auroc_macro")
        table.add_row(
            name,
            str(run.get("best_epoch", "-")),
            f"{val:.3f}" if isinstance(val, float) else "-",
            f"{auroc['estimate']:.3f} [{auroc['low']:.3f}, {auroc['high']:.3f}]"
            if auroc.get("estimate") is not None
            else "-",
        )
    console.print(table)


def _json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.is_file() else {}


@app.command("run")
def run_command(
    config: Path = typer.Argument(..., help="Study YAML (see configs/)."),
    out: Path = typer.Option(..., help="Run directory (created; re-runs skip unchanged stages)."),
    data_root: Path = typer.Option(None, help="NIH data folder; overrides data.data_root."),
    workers: int = typer.Option(None, help="Processes decoding images for the cache."),
) -> None:
    """Run the whole study: prepare → train → evaluate → compare → analyze → explain → report."""
    overrides = {"data.data_root": str(data_root) if data_root else None, "data.workers": workers}
    report = run_config(config, out, overrides)
    if report is not None:
        console.print(f"[bold green]report:[/] {report.resolve()}")


def demo_config_path() -> Path:
    """The packaged demo study (configs/demo.yaml)."""
    return Path(str(files("cxrlab") / "configs" / "demo.yaml"))


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo-run"), help="Run directory for the demo."),
) -> None:
    """Synthetic data → the whole study (configs/demo.yaml), offline on a laptop CPU."""
    console.print(
        f"cxrlab demo: synthetic NIH-layout data, study {demo_config_path().name}, "
        f"run directory {out}"
    )
    report = run_config(demo_config_path(), out, {})
    if report is not None:
        console.print(f"[bold green]report:[/] {report.resolve()}")

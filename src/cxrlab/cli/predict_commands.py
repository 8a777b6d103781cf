"""`cxrlab export` and `cxrlab predict`: a trained model as a folder, and run on new images.

cxrlab export runs/nih4 --model resnet18 --out models/resnet18 --onnx
cxrlab predict --model models/resnet18 scans/ extra/*.dcm --out preds.csv --cam overlays/
"""

from __future__ import annotations

from pathlib import Path

import typer

from cxrlab.cli.app import app, console, err_console
from cxrlab.cli.options import DEVICE_HELP, from_config
from cxrlab.config import Device, PredictConfig, Runtime

MODEL_HELP = "An export folder (cxrlab export) or a trained model folder RUN_DIR/models/NAME."
DEFAULT_THRESHOLDS_HELP = (
    "Without validation thresholds (cxrlab evaluate not run), call findings at 0.5; "
    "the output records threshold_rule=default_0.5."
)


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="Run directory with a trained model."),
    model: str = typer.Option(..., "--model", help="Model folder under RUN_DIR/models."),
    out: Path = typer.Option(..., "--out", help="New folder to write the model into."),
    onnx: bool = typer.Option(False, "--onnx", help="Also write model.onnx (onnxruntime)."),
    default_thresholds: bool = from_config(
        PredictConfig, "default_thresholds", help=DEFAULT_THRESHOLDS_HELP
    ),
) -> None:
    """Write a trained model as a self-sufficient folder: weights, card, optional ONNX."""
    from cxrlab.predict.bundle import export_model

    card = export_model(run_dir, model, out, onnx=onnx, default_thresholds=default_thresholds)
    console.print(
        f"[green]exported[/] {card.name} (version {card.version}, {card.architecture}, "
        f"{len(card.targets)} targets, thresholds {card.threshold_rule}) to {out}",
        highlight=False,
    )


@app.command("predict")
def predict_command(
    inputs: list[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    model: Path = typer.Option(..., "--model", help=MODEL_HELP),
    out: Path = from_config(PredictConfig, "out", "--out", help="CSV to write."),
    cam: Path = typer.Option(
        None, "--cam", help="Folder for Grad-CAM overlays of every positive finding."
    ),
    runtime: Runtime = from_config(PredictConfig, "runtime", help="torch or onnxruntime."),
    device: Device = from_config(PredictConfig, "device", help=DEVICE_HELP),
    batch_size: int = from_config(PredictConfig, "batch_size", help="Images per forward pass."),
    threads: int = from_config(PredictConfig, "threads", help="CPU threads (default: all)."),
    default_thresholds: bool = from_config(
        PredictConfig, "default_thresholds", help=DEFAULT_THRESHOLDS_HELP
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Probabilities and findings per image and pathology; exit 1 if any file failed."""
    from cxrlab.predict.workflow import predict_files

    predictor = load_predictor(model, runtime, device, threads, default_thresholds)
    result = predict_files(
        predictor, inputs, out, cam_dir=cam, batch_size=batch_size, progress=progress
    )
    n = len(result.frame)
    console.print(
        f"[green]{n - result.n_failed} of {n} images predicted[/] with {predictor.card.name} "
        f"(thresholds: {predictor.card.threshold_rule}); wrote {result.out_csv}",
        highlight=False,
    )
    if result.n_failed:
        for row in result.frame.loc[result.frame["error"].astype(bool)].itertuples():
            err_console.print(f"[red]failed:[/] {row.error}", highlight=False, soft_wrap=True)
        err_console.print(
            f"[bold red]error:[/] {result.n_failed} of {n} inputs failed (rows with an error "
            f"in {result.out_csv})",
            highlight=False,
        )
        raise typer.Exit(1)


def load_predictor(model: Path, runtime: str, device: str, threads, default_thresholds: bool):
    """The model for predict and serve; `threads` also caps torch's CPU threads."""
    import torch

    from cxrlab.predict.bundle import load_bundle

    if threads:
        torch.set_num_threads(threads)
    return load_bundle(
        model,
        runtime=runtime,
        device=device,
        default_thresholds=default_thresholds,
        threads=threads,
    )

"""`cxrlab serve --model M`: the model behind a local HTTP API and a page for a reader.

cxrlab serve --model models/resnet18                    # http://127.0.0.1:8000/
cxrlab serve --model runs/nih4/models/resnet18 --runtime torch --token "$TOKEN"
"""

from __future__ import annotations

from pathlib import Path

import typer

from cxrlab.cli.app import app, console
from cxrlab.cli.options import DEVICE_HELP, from_config
from cxrlab.cli.predict_commands import DEFAULT_THRESHOLDS_HELP, MODEL_HELP, load_predictor
from cxrlab.config import Device, PredictConfig, Runtime, ServeConfig

TOKEN_ENV = "CXRLAB_TOKEN"


@app.command("serve")
def serve_command(
    model: Path = typer.Option(..., "--model", help=MODEL_HELP),
    host: str = from_config(ServeConfig, "host", help="Address to listen on."),
    port: int = from_config(ServeConfig, "port", help="Port to listen on."),
    token: str = typer.Option(
        None, "--token", envvar=TOKEN_ENV, help="Bearer token every /v1 route then needs."
    ),
    runtime: Runtime = from_config(PredictConfig, "runtime", help="torch or onnxruntime."),
    device: Device = from_config(PredictConfig, "device", help=DEVICE_HELP),
    threads: int = from_config(PredictConfig, "threads", help="CPU threads per forward pass."),
    workers: int = from_config(ServeConfig, "workers", help="Inference threads."),
    queue: int = from_config(
        ServeConfig, "queue", help="Requests that may wait for a worker; more get 503."
    ),
    max_upload_bytes: int = from_config(
        ServeConfig, "max_upload_bytes", help="Largest request body; larger ones get 413."
    ),
    max_files: int = from_config(ServeConfig, "max_files", help="Images per request."),
    default_thresholds: bool = from_config(
        PredictConfig, "default_thresholds", help=DEFAULT_THRESHOLDS_HELP
    ),
) -> None:
    """Serve the model: POST /v1/predict, /v1/cam, GET /v1/model, /docs and a page at /."""
    import uvicorn

    from cxrlab.config import build
    from cxrlab.serve.app import create_app

    settings = build(
        ServeConfig,
        {
            "host": host,
            "port": port,
            "workers": workers,
            "queue": queue,
            "max_upload_bytes": max_upload_bytes,
            "max_files": max_files,
        },
        source="serve options",
    )
    predictor = load_predictor(model, runtime, device, threads, default_thresholds)
    card = predictor.card
    console.print(
        f"serving {card.name} (version {card.version}, {runtime}, thresholds "
        f"{card.threshold_rule}) on http://{host}:{port}/  - research use only",
        highlight=False,
    )
    application = create_app(predictor, settings, token=token)
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)

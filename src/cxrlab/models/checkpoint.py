"""Rebuild a trained network from a cxrlab checkpoint alone (no training code needed).

A training checkpoint holds, beside the weights, a `cxrlab` block: the resolved experiment
config, targets, image size, normalisation, versions, seed and split hash. Evaluation,
analysis, Grad-CAM and serving load models through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrlab.config import ExperimentConfig, build
from cxrlab.errors import ModelError


def build_network(config: ExperimentConfig, num_classes: int, *, pretrained: bool) -> nn.Module:
    """The classifier network named in `config.model`, one input channel (grey)."""
    from cxrlab.models.factory import create_model

    m = config.model
    return create_model(
        m.name,
        num_classes,
        pretrained=pretrained and m.pretrained,
        weights=m.weights if pretrained else None,
        in_chans=1,
        drop_rate=m.drop_rate,
        **m.kwargs,
    )


def load_model_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained network from a checkpoint alone; returns (model in eval, info).

    `info` is the checkpoint's `cxrlab` block (model, targets, image_size, mean, std,
    config, versions, split_hash, seed, name) plus `epoch` and `path`.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        raise ModelError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    info = checkpoint.get("cxrlab") if isinstance(checkpoint, dict) else None
    if not info or "config" not in info:
        raise ModelError(f"{path} is not a cxrlab training checkpoint (no 'cxrlab' block)")
    config = build(ExperimentConfig, info["config"], source=f"{path} (cxrlab.config)")
    model = build_network(config, len(info["targets"]), pretrained=False)
    state = {
        k.removeprefix("model."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.")
    }
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit {info['model']}: {exc}") from None
    model.to(map_location).eval()
    return model, {**info, "epoch": checkpoint.get("epoch"), "path": str(path)}


def trained_model_dir(run_dir: str | Path, name: str) -> Path:
    """RUN_DIR/models/<name>, checked to hold best.ckpt (the error lists what is there)."""
    path = Path(run_dir) / "models" / name
    if not (path / "best.ckpt").is_file():
        models = Path(run_dir) / "models"
        found = sorted(p.name for p in models.glob("*") if p.is_dir()) if models.is_dir() else []
        raise ModelError(
            f"no trained model {name!r} in {run_dir}/models (found: {', '.join(found) or 'none'});"
            f" run `cxrlab train {run_dir} --model ...` first"
        )
    return path

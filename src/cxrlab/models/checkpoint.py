"""Rebuild a trained network from a cxrlab checkpoint alone (no training code needed).

A training checkpoint holds, beside the weights, a `cxrlab` block: the resolved experiment
config, targets, image size, normalisation, versions, seed and split hash. Evaluation,
analysis, Grad-CAM and serving load models through here.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cxrlab.config import ExperimentConfig, build
from cxrlab.errors import DataError, ModelError
from cxrlab.models.inference import resolve_device
from cxrlab.rundir import ModelDir

if TYPE_CHECKING:
    from cxrlab.data.rundata import RunData

log = logging.getLogger(__name__)

#: What to do about a damaged checkpoint, unless the caller knows better.
DAMAGED_FIX = (
    "it was cut short (a full disk, or a kill while it was copied): restore it from a copy, "
    "or train the model again with --overwrite"
)


def check_readable(path: str | Path, fix: str = DAMAGED_FIX) -> None:
    """`ModelError` naming `path` and `fix` unless it is a whole torch checkpoint.

    torch writes a zip archive; a truncated one has no central directory and a corrupted
    member fails its CRC. Cheaper and clearer than unpickling to find out.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ModelError(f"checkpoint {path} is damaged ({_first_line(exc)}); {fix}") from None
    if bad is not None:
        raise ModelError(f"checkpoint {path} is damaged (member {bad} fails its CRC); {fix}")


def is_readable(path: str | Path) -> bool:
    """Whether `path` exists and passes `check_readable`."""
    try:
        check_readable(path)
    except ModelError:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


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
    config, versions, split_hash, seed, name) plus `epoch`, `path` and `weights` ("ema"
    when the run kept a weight EMA: those are the weights loaded; else "trained").
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        check_readable(path)  # a damaged file: say so, with the fix (read again only here)
        raise ModelError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
    info = checkpoint.get("cxrlab") if isinstance(checkpoint, dict) else None
    if not info or "config" not in info:
        raise ModelError(f"{path} is not a cxrlab training checkpoint (no 'cxrlab' block)")
    config = build(ExperimentConfig, info["config"], source=f"{path} (cxrlab.config)")
    model = build_network(config, len(info["targets"]), pretrained=False)
    state, averaged = inference_weights(checkpoint["state_dict"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit {info['model']}: {exc}") from None
    model.to(map_location).eval()
    weights = "ema" if averaged else "trained"
    return model, {**info, "epoch": checkpoint.get("epoch"), "path": str(path), "weights": weights}


#: State-dict prefixes of the trained network and of its weight EMA (train/module.py).
MODEL_PREFIX, EMA_PREFIX = "model.", "ema.module."


def inference_weights(state_dict: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the network's state dict for inference, whether it is the EMA's): a run trained with
    `train.ema` is used through its average, every other through its trained weights."""
    averaged = any(k.startswith(EMA_PREFIX) for k in state_dict)
    prefix = EMA_PREFIX if averaged else MODEL_PREFIX
    return {
        k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)
    }, averaged


@dataclass(frozen=True)
class TrainedModel:
    """A trained network ready for inference on a run's images (eval mode, on `device`)."""

    name: str
    model: nn.Module
    info: dict[str, Any]  # the checkpoint's cxrlab block + epoch, path
    folder: ModelDir
    device: torch.device

    @property
    def mean(self) -> list[float]:
        return list(self.info["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.info["std"])


def load_trained(run: RunData, name: str, device: str | torch.device = "cpu") -> TrainedModel:
    """Model `name` of a prepared run, on `device` (auto|cpu|cuda|mps), checked against the
    run's data (`check_compatible`). Every stage that runs a trained model loads it here."""
    folder = run.paths.trained_model(name)
    target = resolve_device(device)
    model, info = load_model_from_checkpoint(folder.best_ckpt, map_location=target)
    check_compatible(info, run, folder.best_ckpt)
    _warn_if_unfinished(folder, info)
    return TrainedModel(name, model, info, folder, target)


def _warn_if_unfinished(folder: ModelDir, info: dict[str, Any]) -> None:
    """Warn when run.json says training never finished (stopped, killed, or still running)."""
    try:
        run = json.loads(folder.run_json.read_text())
    except (OSError, ValueError):
        return  # no run.json (a checkpoint from elsewhere): nothing to say
    if run.get("finished"):
        return
    state = "was stopped" if run.get("interrupted") else "has not finished (killed, or running)"
    log.warning(
        "training of model %r %s; using its best checkpoint so far (epoch %s). Finish it with "
        "`cxrlab train %s --name %s --resume`",
        folder.name,
        state,
        info.get("epoch"),
        folder.path.parent.parent,
        folder.name,
    )


def check_compatible(info: dict[str, Any], run: RunData, checkpoint: str | Path) -> None:
    """`DataError` unless the checkpoint can be run on the run's cache as it was trained:
    same targets in the same order, same image size, same split, a normalisation per input
    channel. The message names both values and the fix."""
    where = f"{checkpoint} vs {run.paths.data}"
    if list(info["targets"]) != list(run.targets):
        raise DataError(
            f"{where}: the model predicts {list(info['targets'])} but the run's targets are "
            f"{list(run.targets)}; re-prepare with the model's targets or retrain"
        )
    if int(info["image_size"]) != run.image_size:
        raise DataError(
            f"{where}: the model was trained on {info['image_size']} px images but the run's "
            f"cache holds {run.image_size} px; re-prepare with --image-size "
            f"{info['image_size']} or retrain at {run.image_size} px"
        )
    saved = info.get("split_hash")
    if saved and run.split_hash and saved != run.split_hash:
        raise DataError(
            f"{where}: the model was trained on split {saved[:12]}... but the run holds split "
            f"{run.split_hash[:12]}...; its test images may have been training images. "
            "Retrain, or use the run directory it was trained in"
        )
    for key in ("mean", "std"):
        values = info.get(key)
        if not values or len(values) != 1:
            raise DataError(
                f"{where}: the checkpoint's {key} is {values!r}; one value for the grey "
                "channel is required (retrain with this cxrlab)"
            )

"""The export folder, and loading a model for prediction from it or from a run directory.

    OUT/
      model.safetensors   the network's weights (state dict)
      model.json          the card: cxrlab.predict.card.ModelCard
      model.onnx          with --onnx: the same network, input "image" (B, 1, S, S) float32
                          normalised, output "logits" (B, K)
      cam_reference.safetensors  the CAM's reference film (cxrlab.explain.reference), so
                          that /v1/cam and predict --cam draw the explain stage's default map

`load_bundle(path)` accepts that folder or RUN_DIR/models/NAME (a trained model whose card is
built from the run's files on the fly); both give the same `Predictor` and the same card.

ONNX: torch's default exporter (`dynamo=True`, torch.export + onnxscript) is used; the older
TorchScript exporter is deprecated since torch 2.9. The batch axis is dynamic.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from cxrlab.config import ExperimentConfig, build
from cxrlab.errors import CxrError, ModelError
from cxrlab.predict.card import ModelCard, card_from_run, read_card, weights_version
from cxrlab.predict.predictor import Predictor, check_runtime
from cxrlab.rundir import BEST_CKPT, CAM_REFERENCE_FILE, ModelDir, RunDir, as_run_dir
from cxrlab.runinfo import write_json

log = logging.getLogger(__name__)

# File names of an export folder, each typed once.
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 18


def export_model(
    run_dir: str | Path | RunDir,
    name: str,
    out: str | Path,
    *,
    onnx: bool = False,
    default_thresholds: bool = False,
) -> ModelCard:
    """Write model `name` of a run as a self-sufficient folder `out`; returns its card.

    `out` must be empty or absent. The folder is written beside `out` and renamed into
    place, so a failed export leaves nothing half-written."""
    folder = as_run_dir(run_dir).trained_model(name)
    model, card, weights = _from_run(folder, default_thresholds)
    reference = _run_reference(folder, card)(model)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"export folder {out} exists and is not empty; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        write_json(tmp / CARD_FILE, card.model_dump(mode="json"))
        if reference is not None:
            reference.save(tmp / CAM_REFERENCE_FILE)
        if onnx:
            export_onnx(model, card.image_size, tmp / ONNX_FILE)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to %s", name, out)
    return card


def export_onnx(model: nn.Module, image_size: int, path: Path) -> Path:
    """`model` (eval, CPU copy) as ONNX with a dynamic batch axis."""
    import copy

    net = copy.deepcopy(model).cpu().eval()
    example = (torch.zeros(2, 1, image_size, image_size),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.onnx.export(
            net,
            example,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=ONNX_OPSET,
            dynamo=True,
            verbose=False,
        )
        program.save(str(path))
    except Exception as exc:  # the exporter raises many types
        raise ModelError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    return path


def load_bundle(
    path: str | Path,
    *,
    runtime: str = "torch",
    device: str = "cpu",
    default_thresholds: bool = False,
    threads: int | None = None,
) -> Predictor:
    """A Predictor for an export folder or RUN_DIR/models/NAME (see the module docstring)."""
    path = Path(path)
    target = check_runtime(runtime, device)
    if (path / CARD_FILE).is_file():
        card = read_card(path / CARD_FILE)
        model = _network(card, path / WEIGHTS_FILE)
        onnx = path / ONNX_FILE
        reference = _export_reference(path / CAM_REFERENCE_FILE)
    elif ModelDir(path).is_trained():
        model, card, _ = _from_run(ModelDir(path), default_thresholds)
        onnx = None
        reference = _run_reference(ModelDir(path), card)
        if runtime == "onnxruntime":
            raise ModelError(
                f"{path} is a run's model folder, which has no ONNX file; export it first: "
                f"`cxrlab export {path.parent.parent} --model {path.name} --out DIR --onnx`"
            )
    else:
        raise ModelError(_not_a_model(path))
    model.to(target).eval()
    return Predictor(
        card,
        model,
        runtime=runtime,
        onnx_path=onnx,
        threads=threads,
        source=str(path),
        cam_reference=reference,
    )


def _run_reference(folder: ModelDir, card: ModelCard):
    """model -> the run's CAM reference film for the default layer (stored or made now), or
    None with a warning where there is none (maps from zero)."""

    def fetch(model: nn.Module):
        from cxrlab.data.rundata import load_run_data
        from cxrlab.explain.reference import model_reference
        from cxrlab.models import resolve_cam_layers

        try:
            data = load_run_data(folder.path.parent.parent)
            layers = resolve_cam_layers(model, "auto", card.image_size)
            return model_reference(
                folder, data, model, {"mean": card.mean, "std": card.std}, layers
            )
        except CxrError as exc:
            log.warning("no CAM reference film for %s (%s): maps are from zero", folder.path, exc)
            return None

    return fetch


def _export_reference(path: Path):
    """model -> the export folder's CAM reference film, or None with a warning (an export
    made before cxrlab kept one: maps are from zero)."""

    def fetch(_model: nn.Module):
        from cxrlab.explain.reference import CamReference

        if not path.is_file():
            log.warning("%s not found (an older export): CAM maps are from zero", path)
            return None
        return CamReference.load(path)

    return fetch


def _from_run(folder: ModelDir, default_thresholds: bool) -> tuple[nn.Module, ModelCard, bytes]:
    """(model on CPU, card, serialised weights) of a trained model folder."""
    from safetensors.torch import save

    from cxrlab.models.checkpoint import load_model_from_checkpoint

    model, info = load_model_from_checkpoint(folder.best_ckpt, map_location="cpu")
    weights = save(_state(model))
    card = card_from_run(
        folder, info, weights_version(weights), default_thresholds=default_thresholds
    )
    return model, card, weights


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _network(card: ModelCard, weights: Path) -> nn.Module:
    """The card's architecture with the weights of `weights` (checked against the card)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from cxrlab.models.checkpoint import build_network

    if not weights.is_file():
        raise ModelError(f"{weights} not found; an export folder holds {WEIGHTS_FILE}")
    data = weights.read_bytes()
    if weights_version(data) != card.version:
        raise ModelError(
            f"{weights} does not match {CARD_FILE} (version {weights_version(data)} vs "
            f"{card.version}); re-export the model"
        )
    config = build(ExperimentConfig, card.config, source=f"{weights.parent / CARD_FILE} config")
    model = build_network(config, len(card.targets), pretrained=False)
    try:
        model.load_state_dict(load(data))
    except (SafetensorError, RuntimeError) as exc:
        raise ModelError(f"{weights}: weights do not fit {card.architecture}: {exc}") from None
    return model.eval()


def _not_a_model(path: Path) -> str:
    if not path.exists():
        return f"model folder {path} not found"
    trained = RunDir(path).trained_models()
    if trained:
        names = ", ".join(trained)
        return (
            f"{path} is a run directory; pass one of its models, e.g. "
            f"{RunDir(path).model(trained[0]).path} (trained: {names})"
        )
    return (
        f"{path} is neither an export folder ({CARD_FILE} + {WEIGHTS_FILE}) nor a trained model "
        f"folder (RUN_DIR/models/NAME with {BEST_CKPT})"
    )

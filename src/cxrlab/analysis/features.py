"""Feature extraction from named intermediate layers of any timm-API model.

Every cxrlab model (timm's and the from-scratch SimpleCNN) exposes `feature_info` (a list of
dicts whose `module` names resolve through `model.named_modules()`), `forward_features(x)`
and `forward_head(x, pre_logits=True)`. So one forward pass with forward hooks on the chosen
modules yields every requested layer, and nothing here special-cases an architecture.

Each layer's activation is globally average-pooled per image: a (B, C, H, W) map becomes a
(B, C) vector; a (B, T, C) token sequence (ViT-style) is averaged over its T tokens. The
pseudo-layer ``"penultimate"`` is `forward_head(forward_features(x), pre_logits=True)`, the
vector the classifier reads.

Features are stored per layer as ``RUN_DIR/analysis/<name>/features_<layer>.npz`` holding
``features`` (N, C) float32, ``ids`` (the image ids, row-aligned) and ``layer``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrlab.errors import ConfigError, DataError, ModelError
from cxrlab.models.inference import autocast, model_device

log = logging.getLogger(__name__)

#: Name of the pseudo-layer holding the pooled pre-logits vector (`forward_head(pre_logits=True)`).
PENULTIMATE = "penultimate"


def list_layers(model: nn.Module) -> list[str]:
    """Names `extract_features` accepts: each `feature_info` module, then ``"penultimate"``."""
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ModelError(
            f"{type(model).__name__} has no `feature_info`; cxrlab models follow timm's API "
            "(feature_info, forward_features, forward_head)"
        )
    if hasattr(info, "get_dicts"):  # timm's FeatureInfo object (features_only wrappers)
        info = info.get_dicts()
    return [fi["module"] for fi in info] + [PENULTIMATE]


def feature_path(out_dir: str | Path, layer: str) -> Path:
    """``out_dir/features_<layer>.npz``; dots in module names (``blocks.6``) are kept."""
    if not layer or "/" in layer or "\\" in layer:
        raise ConfigError(f"layer name {layer!r} cannot name a file; use a name from list_layers")
    return Path(out_dir) / f"features_{layer}.npz"


def extract_features(
    model: nn.Module,
    batches: Iterable,
    layers: Sequence[str],
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Pooled activations of `layers` for every image in `batches`, one forward pass per batch.

    `batches` yields image tensors (B, C, H, W), or tuples/lists whose first item is one, or
    mappings with an ``"image"`` key (as a DataLoader over a cxrlab dataset does). Returns
    ``{layer: (N, C) float32}`` in the order the images came. The model is moved to `device`
    (default: where it already is) and runs in eval mode, with mixed precision on CUDA;
    hooks are removed and its train/eval mode restored even when a batch fails.
    """
    layers = _check_layers(model, layers)
    modules = dict(model.named_modules())
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    handles = []
    was_training = model.training
    device = torch.device(device) if device is not None else model_device(model)
    model.eval().to(device)
    try:
        for name in layers:
            if name != PENULTIMATE:
                handles.append(modules[name].register_forward_hook(_pooling_hook(name, pooled)))
        with torch.inference_mode():
            for x in batches:
                x = _images_of(x).to(device)
                with autocast(device):
                    feats = model.forward_features(x)
                    wanted = PENULTIMATE in pooled
                    head = model.forward_head(feats, pre_logits=True) if wanted else None
                if head is not None:
                    pooled[PENULTIMATE].append(_pool(head, PENULTIMATE))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    out = {name: _stack(chunks, name) for name, chunks in pooled.items()}
    rows = {name: arr.shape[0] for name, arr in out.items()}
    if len(set(rows.values())) > 1:  # a module run twice per forward would do this
        raise ModelError(
            f"layers gave different numbers of rows {rows}; a hooked module ran "
            "more or less than once per forward pass"
        )
    return out


def _check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    valid = list_layers(model)
    unknown = [name for name in layers if name not in valid]
    if unknown:
        raise ConfigError(
            f"unknown layer(s) {', '.join(map(repr, unknown))} for {type(model).__name__}; "
            f"valid layers: {', '.join(valid)}"
        )
    if not layers:
        raise ConfigError(f"no layer chosen; valid layers: {', '.join(valid)}")
    modules = dict(model.named_modules())
    missing = [n for n in layers if n != PENULTIMATE and n not in modules]
    if missing:
        raise ModelError(f"feature_info names modules the model lacks: {', '.join(missing)}")
    return list(dict.fromkeys(layers))  # keep order, drop repeats


def _pooling_hook(name: str, store: dict[str, list[np.ndarray]]):
    def hook(module: nn.Module, args, output) -> None:
        store[name].append(_pool(output, name))

    return hook


def _pool(t, name: str) -> np.ndarray:
    """Global average pool to (B, C), computed in the hook so full maps are never kept."""
    if not isinstance(t, torch.Tensor):
        raise ModelError(f"layer {name!r} returned {type(t).__name__}, expected a tensor")
    if t.ndim == 4:  # (B, C, H, W)
        t = t.mean(dim=(2, 3))
    elif t.ndim == 3:  # (B, T, C) tokens
        t = t.mean(dim=1)
    elif t.ndim != 2:
        raise ModelError(f"layer {name!r} output has shape {tuple(t.shape)}; expected 2-4 dims")
    return t.detach().float().cpu().numpy()


def _images_of(batch) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping) and "image" in batch:
        return batch["image"]
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise DataError(
        f"cannot find images in a batch of type {type(batch).__name__}; expected a tensor, "
        "a (images, ...) tuple or a mapping with an 'image' key"
    )


def _stack(chunks: list[np.ndarray], name: str) -> np.ndarray:
    if not chunks:
        raise DataError(f"no batches were given, so layer {name!r} has no features")
    return np.ascontiguousarray(np.concatenate(chunks, axis=0), dtype=np.float32)


def save_features(
    path: str | Path, feats: np.ndarray, ids: Sequence[str], *, layer: str = ""
) -> Path:
    """Write one layer's (N, C) features with their N image ids to an ``.npz`` file."""
    feats = np.asarray(feats, dtype=np.float32)
    ids = np.asarray([str(i) for i in ids])
    if feats.ndim != 2 or feats.shape[0] != len(ids):
        raise DataError(
            f"features of shape {feats.shape} do not match {len(ids)} ids; expected (N, C) "
            "with one id per row"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:  # a file handle keeps numpy from appending a second .npz
        np.savez_compressed(fh, features=feats, ids=ids, layer=np.asarray(layer))
    log.info("wrote %s features %s to %s", layer or "layer", feats.shape, path)
    return path


def load_features(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(features (N, C) float32, ids (N,) str)`` written by `save_features`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"feature file {path} does not exist; run feature extraction first")
    with np.load(path, allow_pickle=False) as data:
        missing = {"features", "ids"} - set(data.files)
        if missing:
            raise DataError(f"{path} lacks {sorted(missing)}; it holds {sorted(data.files)}")
        feats, ids = data["features"].astype(np.float32), data["ids"].astype(str)
    if feats.ndim != 2 or feats.shape[0] != ids.shape[0]:
        raise DataError(f"{path}: features {feats.shape} and {ids.shape[0]} ids do not match")
    return feats, ids


def save_layer_features(
    out_dir: str | Path, feats: Mapping[str, np.ndarray], ids: Sequence[str]
) -> dict[str, Path]:
    """Write every layer of an `extract_features` result to ``out_dir/features_<layer>.npz``."""
    return {
        name: save_features(feature_path(out_dir, name), arr, ids, layer=name)
        for name, arr in feats.items()
    }

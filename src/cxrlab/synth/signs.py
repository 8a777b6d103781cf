"""The localized signs of the findings the generator draws, and the box each one leaves.

One drawer a finding: it draws into a `Chest`'s layers and returns the sign's `Box` (None when
nothing of it is visible). `sign_names()` is the list of findings with a drawer.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from cxrlab.errors import ConfigError
from cxrlab.labels import FINDINGS
from cxrlab.synth.chest import Chest, lerp, soft, superellipse
from cxrlab.synth.parameters import Box, Sign


def sign_names() -> tuple[str, ...]:
    """The findings this generator draws a visible sign for, in `FINDINGS` order."""
    return tuple(name for name in FINDINGS if name in DRAWERS)


def sample_sign(finding: str, rng: np.random.Generator, *, side: int | None = None) -> Sign:
    """Draw one instance of `finding`'s sign (side, position, size, strength)."""
    if finding not in DRAWERS:
        raise ConfigError(
            f"no sign is drawn for {finding!r}; choose from {', '.join(sign_names())}"
        )
    side_ = int(rng.choice((-1, 1))) if side is None else side
    x, y, size, strength = rng.random(4)
    return Sign(
        finding, side_, float(x), float(y), float(size), float(strength), int(rng.integers(2**31))
    )


def _bbox(mask: np.ndarray, finding: str, px: float) -> Box | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return Box(finding, cols[0] * px, rows[0] * px, (cols[-1] + 1) * px, (rows[-1] + 1) * px)


def _zone_point(c: Chest, s: Sign, across: tuple[float, float], down: tuple[float, float]):
    """Image (x, y) of a sign placed at fractions (s.x, s.y) of a zone of one lung."""
    a = c.a
    t = a.lung_inner + lerp(*across, s.x) * (a.lung_outer - a.lung_inner)
    return a.midline + s.side * t, a.apex + lerp(*down, s.y) * (c.domes[s.side] - a.apex)


def _draw_effusion(c: Chest, s: Sign) -> Box | None:
    """Fluid filling the lung base up to a meniscus that climbs the lateral chest wall."""
    a, g, lung = c.a, c.g, c.open[s.side]
    frac = np.clip(
        (s.side * (g.u - a.midline) - a.lung_inner) / (a.lung_outer - a.lung_inner), 0, 1
    )
    cp = c.domes[s.side] + a.dome_depth
    level = cp - lerp(1.0, 2.6, s.size) * a.dome_depth - lerp(0.02, 0.07, s.x) * frac**2
    fluid = lung * soft(g.v - level, 1.5 * g.px)
    np.maximum(c.fluid, fluid * lerp(0.8, 1.0, s.strength), out=c.fluid)
    return _bbox(fluid > 0.5, s.finding, g.px)


def _draw_atelectasis(c: Chest, s: Sign) -> Box | None:
    """Plate-like band of collapsed lung in a lower zone (volume loss is in `_chest`)."""
    g, lung = c.g, c.open[s.side]
    x0, y0 = _zone_point(c, s, (0.3, 0.75), (0.62, 0.86))
    length, thick = lerp(0.07, 0.15, s.size), lerp(0.018, 0.034, s.size)
    angle = lerp(-0.35, 0.35, (s.seed % 1000) / 999)
    dx, dy = g.u - x0, g.v - y0
    cos, sin = math.cos(angle), math.sin(angle)
    along, across = dx * cos + dy * sin, dy * cos - dx * sin
    band = np.exp(-((along / length) ** 4) - (across / thick) ** 2) * lung
    np.maximum(c.fill, band * lerp(0.6, 0.95, s.strength), out=c.fill)
    return _bbox(band > 0.3, s.finding, g.px)


def _draw_infiltration(c: Chest, s: Sign) -> Box | None:
    """Patchy, ill-defined opacities: thresholded smooth noise under a round envelope."""
    g, lung = c.g, c.open[s.side]
    x0, y0 = _zone_point(c, s, (0.3, 0.85), (0.3, 0.85))
    radius = lerp(0.05, 0.1, s.size)
    noise = np.random.default_rng(s.seed).standard_normal((g.v.size, g.u.size), np.float32)
    patches = ndimage.gaussian_filter(noise, 0.012 / g.px)
    patches = soft(patches / (patches.std() + 1e-6) + 0.2, 0.3)
    envelope = np.exp(-((g.u - x0) ** 2 + (g.v - y0) ** 2) / radius**2) * lung
    np.maximum(c.fill, patches * envelope * lerp(0.5, 0.85, s.strength), out=c.fill)
    return _bbox(envelope > 0.12, s.finding, g.px)


def _draw_pneumothorax(c: Chest, s: Sign) -> Box | None:
    """Apical/lateral air without markings between the chest wall and a visible pleural line."""
    a, g, lung = c.a, c.g, c.lungs[s.side]
    drop = lerp(0.06, 0.15, s.size) * (c.domes[s.side] - a.apex) / 0.5
    rho, scale = superellipse(c, s.side, a.apex + drop, lerp(0.025, 0.08, s.x))
    inside = (1 - rho) * scale  # signed distance-like: > 0 inside the collapsed lung
    gap = lung * soft(-inside, g.px)
    np.maximum(c.gap, gap * lerp(0.7, 1.0, s.strength), out=c.gap)
    np.maximum(c.line, lung * np.exp(-((inside / (0.8 * g.px)) ** 2)), out=c.line)
    return _bbox(gap > 0.5, s.finding, g.px)


def _draw_round_lesion(c: Chest, s: Sign, radii: tuple[float, float]) -> Box | None:
    g = c.g
    x0, y0 = _zone_point(c, s, (0.25, 0.8), (0.15, 0.8))
    radius = lerp(*radii, s.size)
    blob = soft(radius - np.sqrt((g.u - x0) ** 2 + (g.v - y0) ** 2), 0.6 * g.px)
    np.maximum(c.fill, blob * 0.8, out=c.fill)
    c.dense += blob * lerp(0.1, 0.22, s.strength)
    pad = radius + 4 / 256  # the blur's rim belongs to the lesion
    return Box(s.finding, x0 - pad, y0 - pad, x0 + pad, y0 + pad)


def _draw_mass(c: Chest, s: Sign) -> Box | None:
    """A round opacity of 3-5 cm."""
    return _draw_round_lesion(c, s, (0.028, 0.05))


def _draw_nodule(c: Chest, s: Sign) -> Box | None:
    """A small round opacity (< 3 cm)."""
    return _draw_round_lesion(c, s, (0.010, 0.018))


def _draw_cardiomegaly(c: Chest, s: Sign) -> Box | None:
    """The enlarged heart itself is set in `chest.build_chest`; its box is the heart's."""
    h = c.heart
    bottom = min(h.cy + h.half_height, max(c.domes.values()) + 0.02)
    return Box(s.finding, h.cx - h.half_width, h.cy - h.half_height, h.cx + h.half_width, bottom)


DRAWERS = {
    "Atelectasis": _draw_atelectasis,
    "Cardiomegaly": _draw_cardiomegaly,
    "Effusion": _draw_effusion,
    "Infiltration": _draw_infiltration,
    "Mass": _draw_mass,
    "Nodule": _draw_nodule,
    "Pneumothorax": _draw_pneumothorax,
}

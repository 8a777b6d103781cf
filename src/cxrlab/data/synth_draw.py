"""Drawing synthetic chest films: anatomy, acquisition, localized signs and their boxes.

The generator is this project's own idea, so it is written by hand (see `synth` for the label
model and the NIH-layout files). A patient is an `Anatomy` drawn once; each image is a `Shot`
(view, positioning and exposure jitter) plus the `Sign`s of its findings. Coordinates are
image fractions (0..1, origin top-left); `side` is -1 for the patient's right (image left) and
+1 for the patient's left (image right), as on a PA film.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from cxrlab.errors import ConfigError
from cxrlab.labels import FINDINGS

#: Side length of the NIH PNG frame that BBox_List_2017 coordinates refer to.
NIH_FRAME = 1024


def sign_names() -> tuple[str, ...]:
    """The findings this generator draws a visible sign for, in `FINDINGS` order."""
    return tuple(name for name in FINDINGS if name in _DRAWERS)


# ----------------------------------------------------------------------------- parameters
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


def _lerp(lo: float, hi: float, f: float) -> float:
    return lo + (hi - lo) * f


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


def sample_sign(finding: str, rng: np.random.Generator, *, side: int | None = None) -> Sign:
    """Draw one instance of `finding`'s sign (side, position, size, strength)."""
    if finding not in _DRAWERS:
        raise ConfigError(
            f"no sign is drawn for {finding!r}; choose from {', '.join(sign_names())}"
        )
    side_ = int(rng.choice((-1, 1))) if side is None else side
    x, y, size, strength = rng.random(4)
    return Sign(
        finding, side_, float(x), float(y), float(size), float(strength), int(rng.integers(2**31))
    )


# ----------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class _Grid:
    u: np.ndarray  # (1, S) x of pixel centres, image fractions
    v: np.ndarray  # (S, 1) y of pixel centres
    px: float  # one pixel, in image fractions


@dataclass(frozen=True)
class _Heart:
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
class _Chest:
    """One rendering's geometry and the (S, S) layers that signs draw into."""

    g: _Grid
    a: Anatomy
    domes: dict[int, float]  # side -> dome y (after any volume loss)
    heart: _Heart
    fluid: np.ndarray  # fraction of a lung's air replaced by pleural fluid
    fill: np.ndarray  # fraction of a lung's air replaced by parenchymal opacity
    dense: np.ndarray  # extra attenuation (round lesions)
    gap: np.ndarray  # pneumothorax: air without lung markings
    line: np.ndarray  # visceral pleural line
    lungs: dict[int, np.ndarray] = field(default_factory=dict)  # side -> soft lung field
    medi: np.ndarray | None = None  # heart and aortic knob, hiding the medial lungs
    open: dict[int, np.ndarray] = field(default_factory=dict)  # side -> lung left visible


def _soft(x, width: float):
    """Smooth 0 -> 1 step as x crosses 0, over about `width` (tanh: no overflow warnings)."""
    return 0.5 + 0.5 * np.tanh(x / (2.0 * width))


def _superellipse(c: _Chest, side: int, apex: float, shrink: float = 0.0):
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


def _lung_field(c: _Chest, side: int):
    """Soft lung field of one side: a superellipse cut by the diaphragm dome."""
    a, g = c.a, c.g
    rho, scale = _superellipse(c, side, a.apex)
    t = side * (g.u - a.midline)
    tc, ha = (a.lung_inner + a.lung_outer) / 2, (a.lung_outer - a.lung_inner) / 2
    diaphragm = c.domes[side] + a.dome_depth * ((t - tc) / ha) ** 2
    return _soft((1 - rho) * scale, c.g.px) * _soft(diaphragm - g.v, c.g.px)


def _heart_geometry(a: Anatomy, shot: Shot, domes: dict[int, float], signs: Sequence[Sign]):
    """The heart, sized so that its full width / thoracic width is the CTR; AP magnifies it."""
    ctr = a.ctr
    for s in signs:
        if s.finding == "Cardiomegaly":
            ctr = _lerp(0.54, 0.66, s.size)
    half_width = ctr * a.lung_outer * (1.08 if shot.view == "AP" else 1.0)
    unit = _Heart(0.0, 0.0, a.heart_aspect, 1.0)
    short = half_width / unit.half_width
    cx = a.midline + (2 * a.heart_left_share - 1) * half_width
    heart = _Heart(cx, 0.0, a.heart_aspect * short, short)
    return _Heart(cx, domes[1] - 0.2 * heart.half_height, heart.long, heart.short)


def _chest(g: _Grid, a: Anatomy, shot: Shot, signs: Sequence[Sign]) -> _Chest:
    domes = {-1: a.domes[0], 1: a.domes[1]}
    for s in signs:  # atelectasis loses volume: that hemidiaphragm rises
        if s.finding == "Atelectasis":
            domes[s.side] -= _lerp(0.005, 0.02, s.size)
    layers = (np.zeros((g.v.size, g.u.size), np.float32) for _ in range(5))
    c = _Chest(g, a, domes, _heart_geometry(a, shot, domes, signs), *layers)
    c.lungs = {side: _lung_field(c, side) for side in (-1, 1)}
    c.medi = _mediastinum(c)
    c.open = {side: lung * (1 - c.medi) for side, lung in c.lungs.items()}
    return c


def _bbox(mask: np.ndarray, finding: str, px: float) -> Box | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return Box(finding, cols[0] * px, rows[0] * px, (cols[-1] + 1) * px, (rows[-1] + 1) * px)


def _zone_point(c: _Chest, s: Sign, across: tuple[float, float], down: tuple[float, float]):
    """Image (x, y) of a sign placed at fractions (s.x, s.y) of a zone of one lung."""
    a = c.a
    t = a.lung_inner + _lerp(*across, s.x) * (a.lung_outer - a.lung_inner)
    return a.midline + s.side * t, a.apex + _lerp(*down, s.y) * (c.domes[s.side] - a.apex)


def _draw_effusion(c: _Chest, s: Sign) -> Box | None:
    """Fluid filling the lung base up to a meniscus that climbs the lateral chest wall."""
    a, g, lung = c.a, c.g, c.open[s.side]
    frac = np.clip(
        (s.side * (g.u - a.midline) - a.lung_inner) / (a.lung_outer - a.lung_inner), 0, 1
    )
    cp = c.domes[s.side] + a.dome_depth
    level = cp - _lerp(1.0, 2.6, s.size) * a.dome_depth - _lerp(0.02, 0.07, s.x) * frac**2
    fluid = lung * _soft(g.v - level, 1.5 * g.px)
    np.maximum(c.fluid, fluid * _lerp(0.8, 1.0, s.strength), out=c.fluid)
    return _bbox(fluid > 0.5, s.finding, g.px)


def _draw_atelectasis(c: _Chest, s: Sign) -> Box | None:
    """Plate-like band of collapsed lung in a lower zone (volume loss is in `_chest`)."""
    g, lung = c.g, c.open[s.side]
    x0, y0 = _zone_point(c, s, (0.3, 0.75), (0.62, 0.86))
    length, thick = _lerp(0.07, 0.15, s.size), _lerp(0.018, 0.034, s.size)
    angle = _lerp(-0.35, 0.35, (s.seed % 1000) / 999)
    dx, dy = g.u - x0, g.v - y0
    cos, sin = math.cos(angle), math.sin(angle)
    along, across = dx * cos + dy * sin, dy * cos - dx * sin
    band = np.exp(-((along / length) ** 4) - (across / thick) ** 2) * lung
    np.maximum(c.fill, band * _lerp(0.6, 0.95, s.strength), out=c.fill)
    return _bbox(band > 0.3, s.finding, g.px)


def _draw_infiltration(c: _Chest, s: Sign) -> Box | None:
    """Patchy, ill-defined opacities: thresholded smooth noise under a round envelope."""
    g, lung = c.g, c.open[s.side]
    x0, y0 = _zone_point(c, s, (0.3, 0.85), (0.3, 0.85))
    radius = _lerp(0.05, 0.1, s.size)
    noise = np.random.default_rng(s.seed).standard_normal((g.v.size, g.u.size), np.float32)
    patches = ndimage.gaussian_filter(noise, 0.012 / g.px)
    patches = _soft(patches / (patches.std() + 1e-6) + 0.2, 0.3)
    envelope = np.exp(-((g.u - x0) ** 2 + (g.v - y0) ** 2) / radius**2) * lung
    np.maximum(c.fill, patches * envelope * _lerp(0.5, 0.85, s.strength), out=c.fill)
    return _bbox(envelope > 0.12, s.finding, g.px)


def _draw_pneumothorax(c: _Chest, s: Sign) -> Box | None:
    """Apical/lateral air without markings between the chest wall and a visible pleural line."""
    a, g, lung = c.a, c.g, c.lungs[s.side]
    drop = _lerp(0.06, 0.15, s.size) * (c.domes[s.side] - a.apex) / 0.5
    rho, scale = _superellipse(c, s.side, a.apex + drop, _lerp(0.025, 0.08, s.x))
    inside = (1 - rho) * scale  # signed distance-like: > 0 inside the collapsed lung
    gap = lung * _soft(-inside, g.px)
    np.maximum(c.gap, gap * _lerp(0.7, 1.0, s.strength), out=c.gap)
    np.maximum(c.line, lung * np.exp(-((inside / (0.8 * g.px)) ** 2)), out=c.line)
    return _bbox(gap > 0.5, s.finding, g.px)


def _draw_round_lesion(c: _Chest, s: Sign, radii: tuple[float, float]) -> Box | None:
    g = c.g
    x0, y0 = _zone_point(c, s, (0.25, 0.8), (0.15, 0.8))
    radius = _lerp(*radii, s.size)
    blob = _soft(radius - np.sqrt((g.u - x0) ** 2 + (g.v - y0) ** 2), 0.6 * g.px)
    np.maximum(c.fill, blob * 0.8, out=c.fill)
    c.dense += blob * _lerp(0.1, 0.22, s.strength)
    pad = radius + 4 / 256  # the blur's rim belongs to the lesion
    return Box(s.finding, x0 - pad, y0 - pad, x0 + pad, y0 + pad)


def _draw_mass(c: _Chest, s: Sign) -> Box | None:
    """A round opacity of 3-5 cm."""
    return _draw_round_lesion(c, s, (0.028, 0.05))


def _draw_nodule(c: _Chest, s: Sign) -> Box | None:
    """A small round opacity (< 3 cm)."""
    return _draw_round_lesion(c, s, (0.010, 0.018))


def _draw_cardiomegaly(c: _Chest, s: Sign) -> Box | None:
    """The enlarged heart itself is set in `_heart_geometry`; its box is the heart's."""
    h = c.heart
    bottom = min(h.cy + h.half_height, max(c.domes.values()) + 0.02)
    return Box(s.finding, h.cx - h.half_width, h.cy - h.half_height, h.cx + h.half_width, bottom)


_DRAWERS = {
    "Atelectasis": _draw_atelectasis,
    "Cardiomegaly": _draw_cardiomegaly,
    "Effusion": _draw_effusion,
    "Infiltration": _draw_infiltration,
    "Mass": _draw_mass,
    "Nodule": _draw_nodule,
    "Pneumothorax": _draw_pneumothorax,
}


def _body(c: _Chest):
    """Soft-tissue attenuation of the trunk: narrow neck, shoulders, thicker in the middle."""
    a, g = c.a, c.g
    x = g.u - a.midline
    half = 0.09 + (a.body_half + 0.05 * (g.v - 0.5) - 0.09) * _soft(g.v - (a.apex - 0.05), 0.03)
    return a.tissue * _soft(half - np.abs(x), 2 * g.px) * (0.7 + 0.3 * np.exp(-((x / 0.2) ** 2)))


def _mediastinum(c: _Chest):
    """Heart and aortic knob: soft tissue that hides the medial lungs."""
    a, g = c.a, c.g
    h = c.heart
    dx, dy = g.u - h.cx, g.v - h.cy
    cos, sin = math.cos(h.tilt), math.sin(h.tilt)
    r2 = ((dx * cos + dy * sin) / h.long) ** 2 + ((dy * cos - dx * sin) / h.short) ** 2
    heart = _soft(1 - r2, 2 * g.px / h.short)
    kx, ky = a.midline + a.lung_inner + 0.012, a.apex + 0.17
    knob = _soft(0.032 - np.sqrt((g.u - kx) ** 2 + (g.v - ky) ** 2), g.px)
    return np.maximum(heart, knob)


def _ribs(c: _Chest):
    """Posterior ribs falling from the spine to the chest wall, fainter anterior ribs."""
    a, g = c.a, c.g
    t = np.abs(g.u - a.midline)  # both sides at once: ribs are symmetric
    reach = _soft(a.lung_outer + 0.035 - t, 2 * g.px) * _soft(t - 0.7 * a.lung_inner, 2 * g.px)
    s = t / a.lung_outer  # rises a little out of the spine, then arches down to the wall
    phase = (g.v - a.apex + 0.025 + a.rib_slope * (0.5 * s - 1.5 * s**3)) / a.rib_gap
    post = _soft(0.16 - np.abs(phase - np.round(phase)), 0.03) * _soft(phase + 0.5, 0.05)
    phase = (g.v - a.apex - 0.06 - 1.2 * a.rib_slope * (1 - t / a.lung_outer)) / (1.2 * a.rib_gap)
    ant = _soft(0.15 - np.abs(phase - np.round(phase)), 0.05) * _soft(t - 0.12, 0.02)
    low = _soft(max(c.domes.values()) + a.dome_depth + 0.01 - g.v, 0.01)
    return (post + 0.4 * ant) * reach * low


def _clavicles(c: _Chest, view: str):
    """Two bony bands from the sternal notch out and up; higher on lordotic AP films."""
    a, g = c.a, c.g
    t = np.abs(g.u - a.midline)
    y_med = a.apex + (0.0 if view == "AP" else 0.03)
    along = np.clip((t - 0.035) / 0.25, 0, 1)  # 0 at the sternum, 1 at the shoulder
    centre = y_med - 0.06 * along + 0.03 * np.sin(np.pi * along)
    return _soft(0.011 - np.abs(g.v - centre), g.px) * _soft(0.29 - t, g.px) * _soft(t - 0.03, g.px)


def _spine_and_trachea(c: _Chest):
    """Vertebral column (bright, segmented) minus the air column of the trachea."""
    a, g = c.a, c.g
    x = np.abs(g.u - a.midline)
    spine = _soft(0.028 - x, 2 * g.px) * (0.8 + 0.2 * np.cos(2 * np.pi * g.v / a.rib_gap))
    trachea = _soft(0.013 - x, g.px) * _soft(a.apex + 0.17 - g.v, 0.01)
    return 0.5 * a.bone * spine - 0.3 * a.air * trachea


def _vessels(c: _Chest):
    """Lung markings: ridge lines of the patient's smooth noise, densest near the hila."""
    a, g = c.a, c.g
    noise = np.random.default_rng(a.texture_seed).standard_normal((g.v.size, g.u.size), np.float32)
    field = ndimage.gaussian_filter(noise, 0.007 / g.px)
    ridges = np.exp(-((field / (0.35 * field.std() + 1e-6)) ** 2))
    hilum = np.sqrt(
        (np.abs(g.u - a.midline) - a.lung_inner - 0.06) ** 2 + (g.v - a.apex - 0.26) ** 2
    )
    return ridges * (0.12 + np.exp(-hilum / 0.12))


def _attenuation(c: _Chest, view: str) -> np.ndarray:
    """Sum of the layers, in attenuation units (0 = air outside the body)."""
    a = c.a
    lungs = c.open[-1] + c.open[1]
    air = lungs * (1 - c.fluid) * (1 - c.fill)  # fraction of a full air column, (S, S)
    air = air * (0.8 + 0.2 * _soft(a.domes[0] - 0.1 - c.g.v, 0.1))  # bases: more tissue over
    # Ribs show best against lung; over thick tissue scatter washes them out.
    bones = a.bone * (_ribs(c) * (0.35 + 0.65 * lungs) + 2.0 * _clavicles(c, view))
    body = _body(c)
    return (
        body
        - a.air * air * (0.82 + 0.33 * c.gap)  # 18% of a normal lung is tissue; none in a gap
        + a.markings * _vessels(c) * air * (1 - c.gap)
        + bones * _soft(body, 0.05)
        + _spine_and_trachea(c)
        + c.dense
        + 0.1 * c.line * lungs
    )


def _develop(att: np.ndarray, shot: Shot) -> np.ndarray:
    """Positioning jitter, blur, a saturating film curve, quantum noise -> uint8 (S, S)."""
    size = att.shape[0]
    centre = (size - 1) / 2
    offset = centre - (centre + np.array(shot.shift[::-1]) * size) / shot.scale  # (row, col)
    moved = ndimage.affine_transform(att, np.full(2, 1 / shot.scale), offset, order=1, cval=0.0)
    moved = ndimage.gaussian_filter(moved, shot.blur * size / 256)
    film = np.clip((1 - np.exp(-1.8 * moved)) / (1 - np.exp(-1.8)), 0, None) ** shot.gamma
    grey = shot.offset + shot.gain * film
    noise = np.random.default_rng(shot.noise_seed).standard_normal(grey.shape, np.float32)
    grey += shot.noise * noise
    return np.clip(np.rint(grey * 255), 0, 255).astype(np.uint8)


def _jitter_box(box: Box, shot: Shot) -> Box:
    """The box as the positioning jitter of `_develop` moved it, clipped to the image."""
    (sx, sy), k = shot.shift, shot.scale

    def move(p: float, d: float) -> float:
        return float(np.clip((p - 0.5) * k + 0.5 + d, 0.0, 1.0))

    return Box(box.finding, move(box.x0, sx), move(box.y0, sy), move(box.x1, sx), move(box.y1, sy))


def render_chest(
    anatomy: Anatomy, shot: Shot, signs: Sequence[Sign] = (), size: int = 256
) -> tuple[np.ndarray, list[Box]]:
    """Draw one chest film: (uint8 (size, size) image, one `Box` per visible sign).

    A sign whose region came out empty (e.g. hidden by another) gets no box; callers label an
    image with the findings of its boxes, so labels stay truthful.
    """
    g = _Grid(*_centres(size), 1.0 / size)
    c = _chest(g, anatomy, shot, signs)
    boxes = [_DRAWERS[s.finding](c, s) for s in signs]
    image = _develop(_attenuation(c, shot.view).astype(np.float32), shot)
    return image, [_jitter_box(b, shot) for b in boxes if b is not None]


def _centres(size: int):
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :], c[:, None]


# ----------------------------------------------------------------------------- data set

"""Rendering a synthetic chest film: body, bones, lung markings, film curve and noise.

The generator is this project's own idea, so it is written by hand (see `dataset` for the label
model, `nih_files` for the files). `render_chest` lays out the chest (`chest`), draws the signs
(`signs`), sums the attenuation layers and develops the film with the shot's jitter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from cxrlab.synth.chest import Chest, Grid, build_chest, soft
from cxrlab.synth.parameters import Anatomy, Box, Shot, Sign
from cxrlab.synth.signs import DRAWERS


def _body(c: Chest):
    """Soft-tissue attenuation of the trunk: narrow neck, shoulders, thicker in the middle."""
    a, g = c.a, c.g
    x = g.u - a.midline
    half = 0.09 + (a.body_half + 0.05 * (g.v - 0.5) - 0.09) * soft(g.v - (a.apex - 0.05), 0.03)
    return a.tissue * soft(half - np.abs(x), 2 * g.px) * (0.7 + 0.3 * np.exp(-((x / 0.2) ** 2)))


def _ribs(c: Chest):
    """Posterior ribs falling from the spine to the chest wall, fainter anterior ribs."""
    a, g = c.a, c.g
    t = np.abs(g.u - a.midline)  # both sides at once: ribs are symmetric
    reach = soft(a.lung_outer + 0.035 - t, 2 * g.px) * soft(t - 0.7 * a.lung_inner, 2 * g.px)
    s = t / a.lung_outer  # rises a little out of the spine, then arches down to the wall
    phase = (g.v - a.apex + 0.025 + a.rib_slope * (0.5 * s - 1.5 * s**3)) / a.rib_gap
    post = soft(0.16 - np.abs(phase - np.round(phase)), 0.03) * soft(phase + 0.5, 0.05)
    phase = (g.v - a.apex - 0.06 - 1.2 * a.rib_slope * (1 - t / a.lung_outer)) / (1.2 * a.rib_gap)
    ant = soft(0.15 - np.abs(phase - np.round(phase)), 0.05) * soft(t - 0.12, 0.02)
    low = soft(max(c.domes.values()) + a.dome_depth + 0.01 - g.v, 0.01)
    return (post + 0.4 * ant) * reach * low


def _clavicles(c: Chest, view: str):
    """Two bony bands from the sternal notch out and up; higher on lordotic AP films."""
    a, g = c.a, c.g
    t = np.abs(g.u - a.midline)
    y_med = a.apex + (0.0 if view == "AP" else 0.03)
    along = np.clip((t - 0.035) / 0.25, 0, 1)  # 0 at the sternum, 1 at the shoulder
    centre = y_med - 0.06 * along + 0.03 * np.sin(np.pi * along)
    return soft(0.011 - np.abs(g.v - centre), g.px) * soft(0.29 - t, g.px) * soft(t - 0.03, g.px)


def _spine_and_trachea(c: Chest):
    """Vertebral column (bright, segmented) minus the air column of the trachea."""
    a, g = c.a, c.g
    x = np.abs(g.u - a.midline)
    spine = soft(0.028 - x, 2 * g.px) * (0.8 + 0.2 * np.cos(2 * np.pi * g.v / a.rib_gap))
    trachea = soft(0.013 - x, g.px) * soft(a.apex + 0.17 - g.v, 0.01)
    return 0.5 * a.bone * spine - 0.3 * a.air * trachea


def _vessels(c: Chest):
    """Lung markings: ridge lines of the patient's smooth noise, densest near the hila."""
    a, g = c.a, c.g
    noise = np.random.default_rng(a.texture_seed).standard_normal((g.v.size, g.u.size), np.float32)
    field = ndimage.gaussian_filter(noise, 0.007 / g.px)
    ridges = np.exp(-((field / (0.35 * field.std() + 1e-6)) ** 2))
    hilum = np.sqrt(
        (np.abs(g.u - a.midline) - a.lung_inner - 0.06) ** 2 + (g.v - a.apex - 0.26) ** 2
    )
    return ridges * (0.12 + np.exp(-hilum / 0.12))


def _attenuation(c: Chest, view: str) -> np.ndarray:
    """Sum of the layers, in attenuation units (0 = air outside the body)."""
    a = c.a
    lungs = c.open[-1] + c.open[1]
    air = lungs * (1 - c.fluid) * (1 - c.fill)  # fraction of a full air column, (S, S)
    air = air * (0.8 + 0.2 * soft(a.domes[0] - 0.1 - c.g.v, 0.1))  # bases: more tissue over
    # Ribs show best against lung; over thick tissue scatter washes them out.
    bones = a.bone * (_ribs(c) * (0.35 + 0.65 * lungs) + 2.0 * _clavicles(c, view))
    body = _body(c)
    return (
        body
        - a.air * air * (0.82 + 0.33 * c.gap)  # 18% of a normal lung is tissue; none in a gap
        + a.markings * _vessels(c) * air * (1 - c.gap)
        + bones * soft(body, 0.05)
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
    g = Grid(*_centres(size), 1.0 / size)
    c = build_chest(g, anatomy, shot, signs)
    boxes = [DRAWERS[s.finding](c, s) for s in signs]
    image = _develop(_attenuation(c, shot.view).astype(np.float32), shot)
    return image, [_jitter_box(b, shot) for b in boxes if b is not None]


def _centres(size: int):
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :], c[:, None]

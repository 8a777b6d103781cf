"""Which images to show per pathology, and the overlay PNGs and contact sheets that show them.

Selection (per pathology, an image is called positive when `p >= threshold`, as in
`cxrlab.evaluate`): the `per_group` most confident true positives and false positives
(highest p first) and the `per_group` most confidently missed false negatives (lowest p
first). Ties keep the split's row order.

Rendering: the grey X-ray as RGB with the Grad-CAM heat map blended in by
`pytorch_grad_cam.utils.image.show_cam_on_image` (JET colour map, half weight), the
radiologists' boxes drawn in green and the map's peak as a white cross (PIL). Contact
sheets are drawn on a `matplotlib.figure.Figure` (no pyplot, no global backend).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlab.errors import DataError

log = logging.getLogger(__name__)

GROUPS: tuple[str, ...] = ("true_positive", "false_positive", "false_negative")
GROUP_TITLES = {"true_positive": "TP", "false_positive": "FP", "false_negative": "FN"}
BOX_RGB = (0, 255, 0)
PEAK_RGB = (255, 255, 255)


def select_gallery(
    y: np.ndarray, p: np.ndarray, threshold: float, per_group: int = 4
) -> dict[str, np.ndarray]:
    """Indices into y/p (N,) for each of GROUPS: top TPs and FPs by p, bottom FNs by p."""
    y, p = np.asarray(y).reshape(-1), np.asarray(p, dtype=float).reshape(-1)
    if y.shape != p.shape:
        raise DataError(f"labels {y.shape} and probabilities {p.shape} differ in length")
    if per_group < 0:
        raise DataError(f"per_group={per_group} should be >= 0")
    called = p >= threshold
    groups = {
        "true_positive": np.flatnonzero((y == 1) & called),
        "false_positive": np.flatnonzero((y == 0) & called),
        "false_negative": np.flatnonzero((y == 1) & ~called),
    }
    out = {}
    for group, idx in groups.items():
        key = p[idx] if group == "false_negative" else -p[idx]
        out[group] = idx[np.argsort(key, kind="stable")][:per_group]
    return out


def overlay(
    image_u8: np.ndarray,
    cam: np.ndarray,
    boxes_px: np.ndarray | Sequence = (),
    peak: tuple[int, int] | None = None,
    image_weight: float = 0.5,
) -> np.ndarray:
    """(S, S, 3) uint8: heat map over the grey image, boxes in green, peak (row, col) marked."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    grey = np.asarray(image_u8, dtype=np.float32) / 255.0
    if grey.shape != np.shape(cam):
        raise DataError(f"image {grey.shape} and map {np.shape(cam)} differ in size")
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    blended = show_cam_on_image(rgb, np.clip(cam, 0, 1), use_rgb=True, image_weight=image_weight)
    return draw_marks(blended, boxes_px, peak)


def draw_marks(
    rgb: np.ndarray, boxes_px: np.ndarray | Sequence = (), peak: tuple[int, int] | None = None
) -> np.ndarray:
    """A copy of `rgb` (S, S, 3) uint8 with box outlines and a peak cross drawn on it."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    draw = ImageDraw.Draw(picture)
    size = picture.width
    width = max(1, round(size / 150))
    for x0, y0, x1, y1 in np.asarray(boxes_px, dtype=float).reshape(-1, 4):
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=BOX_RGB, width=width)
    if peak is not None:
        row, col = peak
        arm = max(2, round(size / 40))
        draw.line([col - arm, row, col + arm, row], fill=PEAK_RGB, width=width)
        draw.line([col, row - arm, col, row + arm], fill=PEAK_RGB, width=width)
    return np.asarray(picture)


def enlarge(image_u8: np.ndarray, cam: np.ndarray, boxes_px, peak, min_side: int = 256):
    """Blow small images up by a whole factor (nearest neighbour, so pixels stay honest)
    until the side is >= `min_side`; boxes and peak (row, col) are moved to match."""
    factor = max(1, math.ceil(min_side / image_u8.shape[-1]))
    if factor == 1:
        return image_u8, cam, boxes_px, peak
    grow = lambda a: np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)  # noqa: E731
    boxes = np.asarray(boxes_px, dtype=float).reshape(-1, 4) * factor
    centre = None if peak is None else tuple(v * factor + factor // 2 for v in peak)
    return grow(image_u8), grow(cam), boxes, centre


def side_by_side(image_u8: np.ndarray, marked_overlay: np.ndarray, boxes_px=()) -> np.ndarray:
    """(S, 2S + gap, 3) uint8: the X-ray with its boxes, then the overlay."""
    grey = np.repeat(np.asarray(image_u8, dtype=np.uint8)[..., None], 3, axis=-1)
    left = draw_marks(grey, boxes_px)
    gap = np.full((left.shape[0], max(2, left.shape[1] // 50), 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, marked_overlay], axis=1)


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 array as PNG, creating folders."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(path)
    return path


@dataclass(frozen=True)
class Tile:
    """One picture of a contact sheet."""

    group: str  # one of GROUPS
    rgb: np.ndarray  # (S, S, 3) uint8 overlay
    caption: str
    rank: int = 0  # position within its group (0 = shown first)


def gallery_sheet(path: str | Path, tiles: Sequence[Tile], title: str, per_group: int) -> Path:
    """One PNG: a row per group in GROUPS, up to `per_group` captioned overlays each."""
    from matplotlib.figure import Figure

    cols = max(1, per_group)
    fig = Figure(figsize=(2.4 * cols + 0.6, 2.75 * len(GROUPS)), layout="constrained")
    axes = fig.subplots(len(GROUPS), cols, squeeze=False)
    for r, group in enumerate(GROUPS):
        members = sorted((t for t in tiles if t.group == group), key=lambda t: t.rank)[:cols]
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{GROUP_TITLES[group]} ({len(members)})", fontsize=11)
            if c < len(members):
                ax.imshow(members[c].rgb, interpolation="nearest")
                ax.set_title(members[c].caption, fontsize=8)
                continue
            ax.set_frame_on(False)
            if c == 0:
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    log.info("wrote %s", path)
    return path


def caption(image: str, prob: float, hit: bool | None = None, iou: float | None = None) -> str:
    """Short tile caption: image id, probability and, where a box exists, hit and IoU."""
    text = f"{image}\np={prob:.2f}"
    if hit is not None and iou is not None and not math.isnan(iou):
        text += f"  {'hit' if hit else 'miss'}  IoU {iou:.2f}"
    return text


def remove_indexed_pngs(index: Path, run_dir: Path) -> None:
    """Delete the PNGs that an earlier run listed in `index` (its explain.json, paths relative
    to `run_dir`) inside index's folder, so no stale overlay survives."""
    out_dir = index.parent
    if not index.is_file():
        return
    try:
        old = json.loads(index.read_text())
    except ValueError:
        return
    for entry in old.get("entries", []):
        png = (run_dir / entry.get("png", "")).resolve()
        if png.suffix == ".png" and png.is_relative_to(out_dir.resolve()) and png.is_file():
            png.unlink()

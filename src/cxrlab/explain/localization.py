"""How well a saliency map points at the radiologists' boxes: pointing game and IoU.

Definitions (this project's own scoring; the maps come from `cxrlab.explain.gradcam`):

* Pixel frame. A map is S x S; pixel (row r, column c) covers [c, c + 1) x [r, r + 1) and
  stands for its centre (c + 0.5, r + 0.5). Boxes are `boxes.csv`'s normalised x0, y0, x1,
  y1 times S. A pixel is *in* a box when its centre is; the box mask of one image and
  pathology is the union of all its boxes of that pathology.
* Pointing game (Zhang et al., ECCV 2016): a hit when the map's maximum (the first in row
  order on ties) lies in the box mask. `tolerance_px` grows every box by that many pixels
  on each side (Zhang et al. used 15 px at about 224 px); the default 0 is the strict
  game. A flat map (max == min: no evidence anywhere, e.g. all-zero Grad-CAM) is a miss.
* IoU: the map thresholded at `cam_threshold` (default 0.5 of the per-map min-max scaled
  map, i.e. "at least half the peak") against the box mask (without tolerance).
* Baselines, on the same images and masks:
  - random point: a uniformly random pixel hits with probability (pixels in the grown box
    mask) / S^2; reported as the mean over images, the expected hit rate of pure chance;
  - centre point: the pointing game of the image centre pixel (S // 2, S // 2);
  - centre map: IoU of a centred Gaussian with sigma = S / 6 thresholded the same way, a
    disc of radius ~0.2 S (about 12% of the image, the scale of a typical NIH box).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.errors import DataError
from cxrlab.labels import IMAGE_INDEX

DEFAULT_TOLERANCE_PX = 0
DEFAULT_CAM_THRESHOLD = 0.5
CENTRE_SIGMA = 1 / 6  # of S: the centre-map baseline's Gaussian width
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
NO_BOXES_NOTE = (
    "no image in this split is positive for {name} and has a {name} box; "
    "nothing to score (on NIH, boxes exist only for images of the official test list)"
)

#: What each number of `summarize` means (written into localization.json).
DEFINITIONS = {
    "n": "images positive for the pathology that have at least one box of it",
    "hit_rate": "pointing game: share of those whose Grad-CAM maximum lies in a box "
    "(boxes grown by tolerance_px per side; a flat map is a miss)",
    "mean_iou": "mean IoU of (map >= cam_threshold) with the union of the boxes",
    "random_point_hit_rate": "expected hit rate of a uniformly random pixel (box area share)",
    "centre_point_hit_rate": "pointing game of the image centre pixel",
    "centre_map_iou": "IoU of a centred Gaussian (sigma = S/6) thresholded the same way",
}


@dataclass(frozen=True)
class PairScore:
    """Localization of one (image, pathology) pair that has at least one box."""

    image: str
    pathology: str
    n_boxes: int
    hit: bool  # pointing game
    iou: float  # thresholded map vs box mask
    peak_x: int  # column of the map's maximum
    peak_y: int  # row of the map's maximum
    random_hit: float  # expected hit rate of a uniformly random pixel
    centre_hit: bool  # pointing game of the centre pixel
    centre_iou: float  # IoU of the centre-Gaussian map


def boxes_in_pixels(boxes: pd.DataFrame, size: int) -> np.ndarray:
    """(M, 4) float x0, y0, x1, y1 in pixels of the S x S cache from `boxes.csv` rows."""
    missing = [c for c in BOX_COLUMNS if c not in boxes.columns]
    if missing:
        raise DataError(f"boxes lack column(s) {missing}; expected {list(BOX_COLUMNS)}")
    coords = boxes[list(BOX_COLUMNS)].to_numpy(dtype=float).reshape(-1, 4)
    if np.isnan(coords).any() or (coords < 0).any() or (coords > 1).any():
        raise DataError("box coordinates x0, y0, x1, y1 must be numbers in [0, 1] (of the cache)")
    return coords * size


def box_mask(boxes_px: np.ndarray, size: int, tolerance_px: float = 0) -> np.ndarray:
    """(S, S) bool: pixels whose centre lies in any box grown by `tolerance_px` per side."""
    centres = np.arange(size) + 0.5
    mask = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes_px, dtype=float).reshape(-1, 4):
        cols = (centres >= x0 - tolerance_px) & (centres <= x1 + tolerance_px)
        rows = (centres >= y0 - tolerance_px) & (centres <= y1 + tolerance_px)
        mask |= rows[:, None] & cols[None, :]
    return mask


def peak(cam: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the map's maximum, the first in row order; None for a flat map."""
    cam = np.asarray(cam)
    if cam.max() <= cam.min():
        return None
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(row), int(col)


def pointing_hit(cam: np.ndarray, boxes_px: np.ndarray, tolerance_px: float = 0) -> bool:
    """Pointing game: does the map's maximum fall in any (grown) box? Flat map: False."""
    where = peak(cam)
    if where is None:
        return False
    return bool(box_mask(boxes_px, cam.shape[-1], tolerance_px)[where])


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks; 0.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def cam_iou(
    cam: np.ndarray, boxes_px: np.ndarray, threshold: float = DEFAULT_CAM_THRESHOLD
) -> float:
    """IoU of `cam >= threshold` with the union of the boxes."""
    return mask_iou(np.asarray(cam) >= threshold, box_mask(boxes_px, cam.shape[-1]))


def centre_map(size: int) -> np.ndarray:
    """(S, S) centred Gaussian in [0, 1] with sigma = S * CENTRE_SIGMA: the centre baseline."""
    d = np.arange(size) + 0.5 - size / 2
    sigma = size * CENTRE_SIGMA
    g = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma**2))
    return (g / g.max()).astype(np.float32)


def score_pair(
    image: str,
    pathology: str,
    cam: np.ndarray,
    boxes_px: np.ndarray,
    *,
    tolerance_px: float = DEFAULT_TOLERANCE_PX,
    cam_threshold: float = DEFAULT_CAM_THRESHOLD,
) -> PairScore:
    """Pointing game, IoU and the three baselines for one map and its boxes."""
    boxes_px = np.asarray(boxes_px, dtype=float).reshape(-1, 4)
    if len(boxes_px) == 0:
        raise DataError(f"{image}: no {pathology} box to score the map against")
    size = cam.shape[-1]
    grown = box_mask(boxes_px, size, tolerance_px)
    where = peak(cam)
    centre = (size // 2, size // 2)
    return PairScore(
        image=image,
        pathology=pathology,
        n_boxes=len(boxes_px),
        hit=bool(where is not None and grown[where]),
        iou=cam_iou(cam, boxes_px, cam_threshold),
        peak_x=-1 if where is None else where[1],
        peak_y=-1 if where is None else where[0],
        random_hit=float(grown.mean()),
        centre_hit=bool(grown[centre]),
        centre_iou=cam_iou(centre_map(size), boxes_px, cam_threshold),
    )


def summarize(scores: Sequence[PairScore], targets: Sequence[str]) -> dict[str, dict]:
    """Per pathology: n, hits, pointing hit rate, mean IoU and the baselines beside them.

    A pathology without scored pairs gets n = 0, None for the rates and a note.
    """
    frame = scores_frame(scores)
    out: dict[str, dict] = {}
    for name in targets:
        part = frame[frame["pathology"] == name]
        if part.empty:
            out[name] = {
                "n": 0,
                "n_boxes": 0,
                "hits": 0,
                "hit_rate": None,
                "mean_iou": None,
                "random_point_hit_rate": None,
                "centre_point_hit_rate": None,
                "centre_map_iou": None,
                "note": NO_BOXES_NOTE.format(name=name),
            }
            continue
        out[name] = {
            "n": int(len(part)),
            "n_boxes": int(part["n_boxes"].sum()),
            "hits": int(part["hit"].sum()),
            "hit_rate": float(part["hit"].mean()),
            "mean_iou": float(part["iou"].mean()),
            "random_point_hit_rate": float(part["random_hit"].mean()),
            "centre_point_hit_rate": float(part["centre_hit"].mean()),
            "centre_map_iou": float(part["centre_iou"].mean()),
        }
    return out


def scores_frame(scores: Sequence[PairScore]) -> pd.DataFrame:
    """One row per scored pair (the columns of `PairScore`), for localization.csv."""
    columns = list(PairScore.__dataclass_fields__)
    return pd.DataFrame([asdict(s) for s in scores], columns=columns)


def read_boxes(path: Path, targets: Sequence[str], notes: list[str]) -> dict:
    """(image, pathology) -> (M, 4) boxes of the `targets` in [0, 1] from boxes.csv; {} with a
    note in `notes` where the file is missing (nothing to score against)."""
    if not path.is_file():
        notes.append(f"{path} not found: nothing to score localization against")
        return {}
    frame = pd.read_csv(path, dtype={IMAGE_INDEX: str, "label": str})
    missing = [c for c in (IMAGE_INDEX, "label", *BOX_COLUMNS) if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; it has {list(frame.columns)}")
    frame = frame[frame["label"].isin(set(targets))]
    return {
        (image, label): boxes_in_pixels(part, 1)  # normalised; times S when used
        for (image, label), part in frame.groupby([IMAGE_INDEX, "label"], sort=False)
    }

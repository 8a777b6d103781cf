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

The explain stage runs both curves on a few true positives per target (`true_positive_picks`)
for the maps and for random rankings, and `faithfulness_table` reads the gain over random
with a confidence interval over patients (a t interval of the per-patient mean gains, scipy):
a verdict of "better" needs the whole interval above zero, so a handful of pairs says
"not shown" rather than a lucky "better".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from cxrlab.errors import DataError
from cxrlab.evaluate.intervals import BETTER, NOT_SHOWN, WORSE, holm, stability, verdict_from_ci
from cxrlab.models.inference import predict_images

DEFAULT_STEPS = 8  # curve points 0, 1/8, ..., 1: 16 forward images per (image, class) pair
BLUR_SIGMA = 1 / 16  # of S: the baseline image's blur (7 px at 112 px)
ALL = "all targets"  # the row of faithfulness_table over every pair

#: What the explain stage's faithfulness fields mean (localization.json and the report).
DEFINITIONS = {
    "deletion": "area under the target's probability as the map's top pixels are blurred, "
    "0 to 100% of the image (lower: the map found what the model uses)",
    "insertion": "area under the probability as the map's top pixels return to a blurred "
    "image (higher is better)",
    "random": "the same curve for a random map as coarse as the CAM (uniform noise on a grid "
    "of the finest hooked layer's side, upsampled), on the same image",
    "gain": "random's deletion minus the map's (or the map's insertion minus random's), "
    "averaged per patient, then over patients, with a 95% t interval over patients",
    "verdict": "better or worse than random where the gain differs from 0 at the 5% level: "
    "over all targets where its CI excludes 0, per target after Holm's adjustment across "
    "the targets; else not shown",
}


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
    t = len(f)
    per_pass = max(1, batch_size // (2 * t - 2))  # pairs whose curves share a forward pass
    for start in range(0, n, per_pass):
        group = range(start, min(start + per_pass, n))
        stack = np.concatenate([_perturbed(images_u8[i], maps[i], f, size) for i in group])
        p = predict_images(model, stack, np.arange(len(stack)), mean, std, batch_size=batch_size)
        p = p.reshape(len(group), 2 * t - 2, -1)  # (pairs, images, K)
        for j, i in enumerate(group):
            deletion[i] = p[j, :t, classes[i]]
            # insertion starts from the blur (deletion's end) and ends at the image (its start)
            insertion[i] = np.r_[deletion[i, -1], p[j, t:, classes[i]], deletion[i, 0]]
    return Curves(f, deletion, insertion)


def _perturbed(image: np.ndarray, cam: np.ndarray, f: np.ndarray, size: int) -> np.ndarray:
    """(2T - 2, S, S): the T deletion images (the first is the image, the last its blur), then
    the T - 2 insertion images between the blur and the image, which deletion already has."""
    blurred = gaussian_filter(image.astype(np.float32), sigma=size * BLUR_SIGMA)
    blurred = np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
    order = np.argsort(-cam.reshape(-1), kind="stable")  # highest first; ties in row order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    counts = np.rint(f * order.size).astype(np.int64)
    top = rank[None, :] < counts[:, None]  # (T, S*S): the top-f pixels of each step
    flat, blur = image.reshape(-1), blurred.reshape(-1)
    deleted = np.where(top, blur, flat)
    inserted = np.where(top[1:-1], flat, blur)
    return np.concatenate([deleted, inserted]).reshape(-1, size, size)


def random_ranking(shape: tuple[int, ...], seed: int = 0, cells: int | None = None) -> np.ndarray:
    """(N, S, S) maps that know nothing: the reference both curves are read against.

    `cells`: uniform noise on a cells x cells grid, bilinearly upsampled to S, so that the
    random map removes patches as coarse as a CAM's at that side. Without it, noise per pixel,
    which is a harder reference for deletion than any smooth map: blurring scattered pixels
    all over the film lowers a model's probability faster than blurring one region of the
    same area (demo: SimpleCNN's deletion AUC 0.47 per pixel, 0.68 on a 14-cell grid).
    """
    rng = np.random.default_rng(seed)
    if cells is None:
        return rng.random(shape, dtype=np.float32)
    n, side = shape[0], shape[-1]
    grid = torch.from_numpy(rng.random((n, 1, cells, cells), dtype=np.float32))
    up = torch.nn.functional.interpolate(grid, size=(side, side), mode="bilinear")
    return up[:, 0].numpy()


def _auc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Trapezoid area under each row of y over x in [0, 1]."""
    return ((y[:, 1:] + y[:, :-1]) / 2 * np.diff(x)[None, :]).sum(axis=1)


def score_maps(
    model: nn.Module,
    images_u8: np.ndarray,
    classes: Sequence[int],
    maps: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    targets: Sequence[str],
    patients: Sequence,
    cells: int | None,
    chosen: str,
) -> dict:
    """Both curves of `maps` and of random maps on a `cells` grid (`random_ranking`) for the
    same pairs, summarised by `faithfulness_table`: localization.json's "faithfulness"."""
    cam = deletion_insertion(model, images_u8, classes, maps, mean=mean, std=std)
    noise = random_ranking(np.shape(maps), cells=cells)
    chance = deletion_insertion(model, images_u8, classes, noise, mean=mean, std=std)
    return {
        "pairs": chosen,
        "steps": DEFAULT_STEPS,
        "random_cells": cells,
        "definitions": DEFINITIONS,
        "per_pathology": faithfulness_table(cam, chance, classes, targets, patients),
    }


def true_positive_picks(y: np.ndarray, p: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Up to `n` indices of the true positives (y == 1, p >= threshold), evenly spaced over
    them in order of falling probability: confident and borderline calls alike."""
    tp = np.flatnonzero((np.asarray(y) == 1) & (np.asarray(p) >= threshold))
    if n <= 0 or tp.size == 0:
        return np.zeros(0, dtype=np.int64)
    ordered = tp[np.argsort(-np.asarray(p)[tp], kind="stable")]
    if ordered.size <= n:
        return ordered
    return ordered[np.round(np.linspace(0, ordered.size - 1, n)).astype(np.int64)]  # distinct


def faithfulness_table(
    cam: Curves,
    chance: Curves,
    ks: Sequence[int],
    targets: Sequence[str],
    patients: Sequence,
    level: float = 0.95,
) -> dict:
    """Per target (with pairs) and over all pairs (`ALL`): mean deletion and insertion AUC of
    the maps and of random rankings on the same images, and each gain over random with its
    CI and verdict (`DEFINITIONS`). Pair i is class ks[i] of an image of patient patients[i]."""
    ks, patients = np.asarray(ks), np.asarray(patients).astype(str)
    gains = {
        "deletion": chance.deletion_auc - cam.deletion_auc,  # (N,) > 0: falls faster
        "insertion": cam.insertion_auc - chance.insertion_auc,  # (N,) > 0: rises faster
    }
    groups = {t: ks == k for k, t in enumerate(targets)} | {ALL: np.ones(ks.size, bool)}
    out = {}
    for name, keep in groups.items():
        if keep.any():
            out[name] = {
                "n": int(keep.sum()),
                "patients": int(np.unique(patients[keep]).size),
                "deletion": float(cam.deletion_auc[keep].mean()),
                "deletion_random": float(chance.deletion_auc[keep].mean()),
                "insertion": float(cam.insertion_auc[keep].mean()),
                "insertion_random": float(chance.insertion_auc[keep].mean()),
                **{
                    f"{curve}_gain": patient_mean_ci(g[keep], patients[keep], level)
                    for curve, g in gains.items()
                },
                "unstable": stability(pairs=int(keep.sum())),
            }
    for curve in gains:
        _verdicts(out, f"{curve}_gain", f"{curve}_verdict", alpha=1 - level)
    return out


def _verdicts(table: dict, gain: str, verdict: str, alpha: float) -> None:
    """Over all targets: from the CI. Per target: Holm-adjusted p < alpha, by the gain's sign."""
    every = table.pop(ALL, None)
    adjusted = holm([entry[gain]["p"] for entry in table.values()])
    for entry, p in zip(table.values(), adjusted, strict=True):
        sign = BETTER if entry[gain]["estimate"] > 0 else WORSE
        entry[verdict] = None if p is None else (sign if p < alpha else NOT_SHOWN)
    if every is not None:
        every[verdict] = verdict_from_ci(every[gain]["low"], every[gain]["high"])
        table[ALL] = every


def patient_mean_ci(values: np.ndarray, patients: np.ndarray, level: float = 0.95) -> dict:
    """Mean over patients of their mean value, with a t interval and the t test's two-sided p
    (images of one patient are correlated, so patients are the independent units); no interval
    under 2 patients."""
    from scipy import stats

    frame = pd.DataFrame({"v": np.asarray(values, float), "p": np.asarray(patients)})
    per_patient = frame.groupby("p", sort=False)["v"].mean().to_numpy()
    out = {"estimate": float(per_patient.mean()), "low": None, "high": None, "p": None}
    if per_patient.size >= 2 and np.ptp(per_patient) > 0:  # else no spread to read
        test = stats.ttest_1samp(per_patient, 0.0)
        ci = test.confidence_interval(level)
        out.update(low=float(ci.low), high=float(ci.high), p=float(test.pvalue))
    return out

"""`explain_model`: Grad-CAM galleries and localization scores for one trained model.

Two modes, both writing under `RUN_DIR/reports/<name>/explain/`:

* gallery (no `images`): for each target, the top true positives, false positives and
  missed false negatives of the split (`gallery.select_gallery`, from the evaluate stage's
  `predictions.csv` and `thresholds.json`, else from a fresh forward pass and 0.5, with a
  note), and the localization score over *every* image of the split that is positive for
  the target and has a box of it. Files: `<Pathology>/<group>_<rank>_<image>.png`
  (X-ray with boxes | Grad-CAM overlay), `<Pathology>_gallery.png` (contact sheet),
  `explain.json` (index), `localization.json`, `localization.csv` (per pathology) and
  `localization_pairs.csv` (per scored image and pathology). With `faithfulness` > 0,
  localization.json also holds deletion/insertion curves (`explain.faithfulness`) of the maps
  of that many true positives per target, beside random maps: boxes are not needed.
* images (`images=[ids]`): every target for each named image, into `explain/images/`
  (`<image>/<Pathology>.png`, same index files), so the split's gallery is not overwritten.

Boxes of pathologies that are not targets of the model are ignored. Zero scorable boxes
(e.g. a patient-wise split of the dev set) is not an error: the scores say n = 0 with a note.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from cxrlab.config import ExplainConfig, with_overrides
from cxrlab.data.rundata import RunData, load_run_data
from cxrlab.errors import DataError, EvaluationError
from cxrlab.explain import faithfulness as fa
from cxrlab.explain import gallery as gal
from cxrlab.explain import localization as loc
from cxrlab.explain.gradcam import REFERENCE_METHODS, gradcam
from cxrlab.explain.reference import model_reference
from cxrlab.models import resolve_cam_layers, stage_sides
from cxrlab.rundir import EXPLAIN_INDEX, LOCALIZATION_FILE
from cxrlab.runinfo import write_atomic, write_json

log = logging.getLogger(__name__)

REQUESTED = "requested"  # the group of images named by the user


@dataclass
class _Context:
    """Everything one explain run reads: model, cohort data, boxes, and where to write."""

    run_dir: Path
    name: str
    model: nn.Module
    info: dict
    data: RunData
    ids: list[str]  # cohort order == cache rows
    boxes: dict[tuple[str, str], np.ndarray]  # (image, pathology) -> (M, 4) in [0, 1]
    out_dir: Path
    tolerance_px: float = loc.DEFAULT_TOLERANCE_PX
    cam_threshold: float = loc.DEFAULT_CAM_THRESHOLD
    method: str = "gradcam"
    layers: list[str] = field(default_factory=list)  # hooked module names (fused if several)
    reference: list[np.ndarray] | None = None  # (C, h, w) per hooked layer, or none
    notes: list[str] = field(default_factory=list)


@dataclass
class _Jobs:
    """(row, class) pairs to explain: which to show (group, rank) and which to score."""

    show: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)
    score: set[tuple[int, int]] = field(default_factory=set)
    prob: dict[tuple[int, int], float] = field(default_factory=dict)  # from predictions
    faith: list[tuple[int, int]] = field(default_factory=list)  # deletion/insertion curves
    maps: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # kept: faith pairs

    def pairs(self) -> list[tuple[int, int]]:
        return sorted(set(self.show) | self.score | set(self.faith), key=lambda rk: (rk[1], rk[0]))


def explain_model(
    run_dir: str | Path,
    name: str,
    options: ExplainConfig | None = None,
    *,
    images: Sequence[str] | str | None = None,
    progress: bool = True,
    **overrides: Any,
) -> dict:
    """Explain model `name` of RUN_DIR: the split's gallery, or the named `images`.

    `options` (default `ExplainConfig()`) with `overrides` (its field names, e.g.
    `per_group=2`) on top. Returns a summary: mode, out_dir, the written files,
    per-pathology localization (`localization.summarize`), the number of overlays and notes.
    """
    options = with_overrides(options or ExplainConfig(), overrides)
    split, per_group, batch_size = options.split, options.per_group, options.batch_size
    tolerance_px, cam_threshold = options.tolerance, options.cam_threshold
    wanted = _parse_ids(images)
    ctx = _load_context(Path(run_dir), name, "images" if wanted else None, options.device)
    ctx.tolerance_px, ctx.cam_threshold = tolerance_px, cam_threshold
    ctx.method = options.method
    ctx.layers = resolve_cam_layers(ctx.model, options.layer, ctx.data.image_size)
    reference = _reference(ctx, batch_size) if options.reference else None
    if wanted:
        jobs = _requested_jobs(ctx, wanted)
        thresholds: dict[str, float] = {}
        source = "model forward pass of the Grad-CAM run"
    else:
        jobs, thresholds, source = _gallery_jobs(ctx, split, per_group, batch_size, progress)
        _faith_jobs(ctx, jobs, split, thresholds, options.faithfulness)
    scores, entries, tiles = _run_jobs(ctx, jobs, thresholds, batch_size, progress)
    summary = loc.summarize(scores, ctx.data.targets)
    faith = _faithfulness(ctx, jobs, options.faithfulness) if jobs.faith else None
    settings = {
        "mode": "images" if wanted else "gallery",
        "split": None if wanted else split,
        "probability_source": source,
        "thresholds": thresholds,
        "method": ctx.method,
        "layer": "+".join(ctx.layers),  # the hooked module(s); the report shows this
        "layer_option": options.layer,
        "reference": reference,
        "tolerance_px": tolerance_px,
        "cam_threshold": cam_threshold,
    }
    files = _write_outputs(ctx, settings, entries, scores, summary, faith)
    if not wanted:
        files += _write_sheets(ctx, tiles, split, per_group)
    if not scores:
        ctx.notes.append(
            "no image here is positive for a target and has a box of it: "
            "localization was not scored"
        )
    return {
        **settings,
        "out_dir": str(ctx.out_dir),
        "files": [str(f) for f in files],
        "n_overlays": len(entries),
        "n_scored": len(scores),
        "localization": summary,
        "faithfulness": faith,
        "notes": ctx.notes,
    }


def _parse_ids(images: Sequence[str] | str | None) -> list[str]:
    if images is None:
        return []
    parts = images.split(",") if isinstance(images, str) else list(images)
    ids = [str(i).strip() for i in parts if str(i).strip()]
    return list(dict.fromkeys(ids))  # unique, in the given order


# ---- loading ----------------------------------------------------------------------------------
def _load_context(run_dir: Path, name: str, subdir: str | None, device: str) -> _Context:
    from cxrlab.models.checkpoint import load_trained

    data = load_run_data(run_dir)
    trained = load_trained(data, name, device)
    out_dir = data.paths.explanation(name)
    ctx = _Context(
        run_dir,
        name,
        trained.model,
        trained.info,
        data,
        list(data.cache.ids),
        {},
        out_dir / subdir if subdir else out_dir,
    )
    ctx.boxes = loc.read_boxes(data.paths.boxes, data.targets, ctx.notes)
    return ctx


def _reference(ctx: _Context, batch_size: int) -> dict | None:
    """Set ctx.reference to the model's stored reference film for the hooked layers (made on
    first use: `explain.reference.model_reference`); None, with a note, where the method takes
    no reference or no training image is free of every target."""
    if ctx.method not in REFERENCE_METHODS:
        ctx.notes.append(
            f"{ctx.method} takes no reference film (only {', '.join(REFERENCE_METHODS)}): "
            "its maps are from an all-zero feature map"
        )
        return None
    folder = ctx.data.paths.model(ctx.name)
    try:
        reference = model_reference(
            folder, ctx.data, ctx.model, ctx.info, ctx.layers, batch_size=batch_size
        )
    except DataError as exc:
        ctx.notes.append(f"{exc}: the maps are from an all-zero feature map")
        return None
    ctx.reference = list(reference.maps)
    return reference.describe()


# ---- what to explain --------------------------------------------------------------------------
def _requested_jobs(ctx: _Context, wanted: list[str]) -> _Jobs:
    index = {image: row for row, image in enumerate(ctx.ids)}
    unknown = [i for i in wanted if i not in index]
    if unknown:
        example = ", ".join(ctx.ids[:3])
        raise DataError(
            f"image(s) {', '.join(map(repr, unknown))} not in the run's cohort "
            f"({ctx.data.paths.cohort}, {len(ctx.ids)} images, e.g. {example})"
        )
    jobs = _Jobs()
    for row in (index[i] for i in wanted):
        for k, target in enumerate(ctx.data.targets):
            jobs.show[(row, k)] = (REQUESTED, 0)
            if ctx.data.labels[row, k] == 1 and (ctx.ids[row], target) in ctx.boxes:
                jobs.score.add((row, k))
    return jobs


def _gallery_jobs(ctx: _Context, split: str, per_group: int, batch_size: int, progress: bool):
    rows = ctx.data.rows(split)
    if rows.size == 0:
        raise DataError(f"split {split!r} of {ctx.run_dir} has no images; choose another split")
    probs, source = _split_probabilities(ctx, split, rows, batch_size, progress)
    thresholds = _thresholds(ctx)
    jobs = _Jobs()
    for k, target in enumerate(ctx.data.targets):
        y = ctx.data.labels[rows, k]
        chosen = gal.select_gallery(y, probs[:, k], thresholds[target], per_group)
        for group, picks in chosen.items():
            for rank, i in enumerate(picks):
                jobs.show[(int(rows[i]), k)] = (group, rank)
        for i in np.flatnonzero(y == 1):
            if (ctx.ids[rows[i]], target) in ctx.boxes:
                jobs.score.add((int(rows[i]), k))
        jobs.prob.update({(int(r), k): float(p) for r, p in zip(rows, probs[:, k], strict=True)})
    return jobs, thresholds, source


def _faith_jobs(ctx: _Context, jobs: _Jobs, split: str, thresholds: dict, per_target: int):
    """Add the true positives whose maps get deletion/insertion curves
    (`fa.true_positive_picks`)."""
    rows = ctx.data.rows(split)
    for k, target in enumerate(ctx.data.targets):
        probs = np.array([jobs.prob[(int(r), k)] for r in rows])
        picks = fa.true_positive_picks(
            ctx.data.labels[rows, k], probs, thresholds[target], per_target
        )
        jobs.faith += [(int(rows[i]), k) for i in picks]


def _faithfulness(ctx: _Context, jobs: _Jobs, per_target: int) -> dict:
    """Deletion and insertion curves of the kept maps and of random maps, summarised."""
    rows, ks = np.array(jobs.faith).T  # (P,) each
    return fa.score_maps(
        ctx.model,
        ctx.data.images[rows],
        ks,
        np.stack([jobs.maps[pair] for pair in jobs.faith]),
        mean=ctx.info["mean"],
        std=ctx.info["std"],
        targets=ctx.data.targets,
        patients=ctx.data.patient_ids[rows],
        cells=_finest_side(ctx),
        chosen=f"up to {per_target} true positives per target, evenly spaced by probability",
    )


def _finest_side(ctx: _Context) -> int | None:
    """Side of the finest hooked map, so the random maps are as coarse as the CAM's: from the
    reference film, else from `feature_info`; None (noise per pixel) for a layer it lacks."""
    if ctx.reference:
        return max(int(m.shape[-1]) for m in ctx.reference)
    sides = stage_sides(ctx.model, ctx.data.image_size)
    known = [sides[name] for name in ctx.layers if name in sides]
    return max(known) if known else None


def _split_probabilities(ctx: _Context, split: str, rows, batch_size: int, progress: bool):
    """(len(rows), K) probabilities: the evaluate stage's predictions, else a forward pass."""
    from cxrlab.evaluate.metrics import read_predictions
    from cxrlab.models.inference import predict_images

    path = ctx.data.paths.evaluation(ctx.name, split).predictions
    if not path.is_file():
        ctx.notes.append(f"{path} not found: probabilities from a fresh forward pass")
        probs = predict_images(
            ctx.model,
            ctx.data.images,
            rows,
            ctx.info["mean"],
            ctx.info["std"],
            batch_size=batch_size,
            progress=progress,
        )
        return probs, "model forward pass (no predictions.csv)"
    pred = read_predictions(path, ctx.data.targets)
    position = {image: i for i, image in enumerate(pred.ids)}
    split_ids = [ctx.ids[r] for r in rows]
    if len(position) != len(split_ids) or any(i not in position for i in split_ids):
        raise EvaluationError(
            f"{path} holds {len(pred.ids)} images that are not the {len(split_ids)} images of "
            f"split {split!r} in {ctx.data.paths.cohort}; re-run `cxrlab evaluate`"
        )
    return pred.p[[position[i] for i in split_ids]], str(path.relative_to(ctx.run_dir))


def _thresholds(ctx: _Context) -> dict[str, float]:
    from cxrlab.evaluate.thresholds import FALLBACK, load_thresholds

    path = ctx.data.paths.model(ctx.name).thresholds
    if not path.is_file():
        ctx.notes.append(f"{path} not found: every target is called positive at p >= {FALLBACK}")
        return dict.fromkeys(ctx.data.targets, FALLBACK)
    chosen = load_thresholds(path, ctx.data.targets)
    return {t: float(chosen[t]["threshold"]) for t in ctx.data.targets}


# ---- Grad-CAM, scores, overlays ---------------------------------------------------------------
def _run_jobs(ctx: _Context, jobs: _Jobs, thresholds: dict, batch_size: int, progress: bool):
    """Grad-CAM every pair once, chunk by chunk; score boxed pairs and render shown ones."""
    pairs = jobs.pairs()
    scores: list[loc.PairScore] = []
    entries: list[dict] = []
    tiles: dict[str, list[gal.Tile]] = defaultdict(list)
    gal.remove_indexed_pngs(ctx.out_dir / EXPLAIN_INDEX, ctx.run_dir)
    chunks = range(0, len(pairs), batch_size)
    for start in tqdm(chunks, desc="grad-cam", disable=not progress, unit="batch"):
        chunk = pairs[start : start + batch_size]
        rows, ks = np.array(chunk).reshape(-1, 2).T
        cams = gradcam(
            ctx.model,
            ctx.data.images[rows],
            ks,
            mean=ctx.info["mean"],
            std=ctx.info["std"],
            layer=[ctx.model.get_submodule(name) for name in ctx.layers],
            method=ctx.method,
            batch_size=batch_size,
            reference=ctx.reference,
        )
        for i, (row, k) in enumerate(chunk):
            score = _score(ctx, row, k, cams.maps[i])
            if (row, k) in jobs.score:
                scores.append(score)
            if (row, k) in jobs.faith:
                jobs.maps[(row, k)] = cams.maps[i]
            if (row, k) in jobs.show:
                prob = jobs.prob.get((row, k), float(cams.probs[i, k]))
                entry, tile = _render(ctx, row, k, cams.maps[i], score, *jobs.show[(row, k)], prob)
                entries.append({**entry, "threshold": thresholds.get(ctx.data.targets[k])})
                tiles[ctx.data.targets[k]].append(tile)
    order = {group: i for i, group in enumerate((*gal.GROUPS, REQUESTED))}
    index = {target: i for i, target in enumerate(ctx.data.targets)}
    entries.sort(key=lambda e: (index[e["pathology"]], order[e["group"]], e["rank"], e["image"]))
    return scores, entries, tiles


def _boxes_px(ctx: _Context, row: int, k: int) -> np.ndarray:
    """(M, 4) boxes of target k on cohort row `row`, in cache pixels; (0, 4) when none."""
    key = (ctx.ids[row], ctx.data.targets[k])
    return ctx.boxes.get(key, np.zeros((0, 4))) * ctx.data.image_size


def _score(ctx: _Context, row: int, k: int, cam: np.ndarray) -> loc.PairScore | None:
    boxes_px = _boxes_px(ctx, row, k)
    if not len(boxes_px):
        return None
    return loc.score_pair(
        ctx.ids[row],
        ctx.data.targets[k],
        cam,
        boxes_px,
        tolerance_px=ctx.tolerance_px,
        cam_threshold=ctx.cam_threshold,
    )


def _render(ctx: _Context, row, k, cam, score, group: str, rank: int, prob: float):
    """Write one overlay PNG; return its explain.json entry and its contact-sheet tile."""
    target, image = ctx.data.targets[k], ctx.ids[row]
    boxes_px = _boxes_px(ctx, row, k)
    stem = Path(image).stem
    if group == REQUESTED:
        path = ctx.out_dir / stem / f"{target}.png"
    else:
        path = ctx.out_dir / target / f"{group}_{rank + 1:02d}_{stem}.png"
    peak = loc.peak(cam)
    big_image, big_cam, big_boxes, big_peak = gal.enlarge(ctx.data.images[row], cam, boxes_px, peak)
    marked = gal.overlay(big_image, big_cam, big_boxes, big_peak)
    gal.save_png(path, gal.side_by_side(big_image, marked, big_boxes))
    entry = {
        "image": image,
        "pathology": target,
        "group": group,
        "rank": rank + 1,
        "probability": round(prob, 6),
        "label": int(ctx.data.labels[row, k]),
        "png": str(path.relative_to(ctx.run_dir)),
        "n_boxes": len(boxes_px),
        "hit": None if score is None else score.hit,
        "iou": None if score is None else round(score.iou, 6),
        "peak": None if peak is None else {"x": peak[1], "y": peak[0]},
    }
    hit, iou = (score.hit, score.iou) if score else (None, None)
    return entry, gal.Tile(group, marked, gal.caption(image, prob, hit, iou), rank)


# ---- writing ----------------------------------------------------------------------------------
def _write_outputs(ctx: _Context, settings: dict, entries, scores, summary, faith) -> list[Path]:
    head = {
        "model": ctx.name,
        "checkpoint": str(Path(ctx.info["path"]).relative_to(ctx.run_dir)),
        "architecture": ctx.info.get("model"),
        **settings,
    }
    out = ctx.out_dir
    table = pd.DataFrame.from_dict(summary, orient="index").rename_axis("pathology")
    return [
        write_json(out / EXPLAIN_INDEX, {**head, "entries": entries, "notes": ctx.notes}),
        write_json(
            out / LOCALIZATION_FILE,
            {
                **head,
                "definitions": loc.DEFINITIONS,
                "per_pathology": summary,
                "faithfulness": faith,
                "notes": ctx.notes,
            },
        ),
        write_atomic(out / "localization.csv", table.reset_index().to_csv(index=False)),
        write_atomic(out / "localization_pairs.csv", loc.scores_frame(scores).to_csv(index=False)),
    ]


def _write_sheets(ctx: _Context, tiles: dict, split: str, per_group: int) -> list[Path]:
    if per_group == 0:
        return []
    return [
        gal.gallery_sheet(
            ctx.out_dir / f"{target}_gallery.png",
            tiles.get(target, []),
            f"{ctx.name} - {target} ({split})",
            per_group,
        )
        for target in ctx.data.targets
    ]

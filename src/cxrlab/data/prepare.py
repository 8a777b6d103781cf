"""The prepare stage: metadata → cohort → patient-wise split → image cache, in RUN_DIR/data.

Writes (names are a contract, see docs/ARCHITECTURE.md):
`cohort.csv`, `split_summary.json`, `prepare.json`, `boxes.csv`, `cache/`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.config import DataConfig
from cxrlab.data.cache import CacheInfo, box_to_cache_coords, build_cache
from cxrlab.data.cohort import cooccurrence, label_counts, select_cohort
from cxrlab.data.discovery import resolve_images
from cxrlab.data.imaging import image_size
from cxrlab.data.metadata import (
    MetadataFiles,
    find_metadata_files,
    findings_matrix,
    read_bbox_list,
    read_data_entry,
    read_split_lists,
)
from cxrlab.data.split import check_leakage, official_split, split_patients, split_summary
from cxrlab.errors import ConfigError, DataError
from cxrlab.labels import IMAGE_INDEX, PATIENT_ID
from cxrlab.locking import exclusive, require_free
from cxrlab.rundir import RunDir
from cxrlab.runinfo import package_versions, read_json, write_atomic, write_json

log = logging.getLogger(__name__)

#: NIH PNGs are 1024 x 1024 and BBox_List_2017 coordinates are in that frame; a non-square
#: image's boxes are taken in its own aspect ratio with this long side (`box_frame`).
BOX_FRAME = 1024
META_COLUMNS = ("Finding Labels", "age", "sex", "view", "follow_up")


@dataclass
class PrepareResult:
    """What `prepare` made, for the CLI to report."""

    data_dir: Path
    cohort: pd.DataFrame
    summary: dict
    counts: pd.DataFrame
    cooccurrence: pd.DataFrame
    n_missing: int
    cache: CacheInfo
    n_boxes: int
    notes: list[str] = field(default_factory=list)


def prepare(
    options: DataConfig, out: str | Path, *, progress: bool = True, overwrite: bool = False
) -> PrepareResult:
    """Run the prepare stage for `options` into `out/data`; safe to re-run (cache resumes).

    Holds `data/`'s lock (a second prepare of the same run is refused). New data that the
    run's trained models were not trained on (another split, size or targets) is refused
    unless `overwrite`: those models would stop being usable.
    """
    if not options.data_root:
        raise ConfigError("prepare needs a data root (--data-root DIR in NIH layout)")
    paths = RunDir(out)
    with exclusive(paths.data_lock, f"run directory {paths.root} (data/)"):
        for name, lock in paths.model_locks().items():  # no training reads data/ meanwhile
            require_free(lock, f"model {name!r} of {paths.root} (being trained)")
        return _prepare(options, paths, progress, overwrite)


def _prepare(options: DataConfig, paths: RunDir, progress: bool, overwrite: bool):
    files = find_metadata_files(options.data_root)
    entries = read_data_entry(files.data_entry)
    resolved = resolve_images(entries, files.root, drop_missing=options.drop_missing)
    pool = resolved.df.assign(_path=[str(p) for p in resolved.paths])
    cohort = _select(pool, options)
    cohort["split"] = _split(cohort, options, files)
    check_leakage(cohort)
    cohort = cohort.sort_values(["split", PATIENT_ID, IMAGE_INDEX], kind="stable")
    cohort = cohort.reset_index(drop=True)
    targets = list(options.pathologies)
    summary = split_summary(cohort, targets)
    summary.update(split=options.split, seed=options.seed)
    _check_splits_nonempty(summary, options)
    if not overwrite:
        _check_models_keep_working(paths, summary, options)
    paths.data.mkdir(parents=True, exist_ok=True)
    table = cohort_table(cohort, targets)
    write_atomic(paths.cohort, table.to_csv(index=False))
    write_json(paths.split_summary, summary)
    n_boxes = _write_boxes(files, cohort, options.image_size, paths.boxes)
    write_json(paths.prepare_json, _provenance(options, files, resolved.n_missing))
    cache = build_cache(
        cohort["_path"].tolist(),
        cohort[IMAGE_INDEX].tolist(),
        paths.cache,
        size=options.image_size,
        workers=options.workers,
        progress=progress,
    )
    return PrepareResult(
        data_dir=paths.data,
        cohort=table,
        summary=summary,
        counts=label_counts(cohort, targets),
        cooccurrence=cooccurrence(cohort, targets),
        n_missing=resolved.n_missing,
        cache=cache,
        n_boxes=n_boxes,
    )


def _check_splits_nonempty(summary: dict, options: DataConfig) -> None:
    """Training needs train and val images, evaluation test images: none may be empty."""
    empty = [name for name, part in summary["splits"].items() if not part["images"]]
    if empty:
        sizes = ", ".join(f"{k} {v['images']}" for k, v in summary["splits"].items())
        raise DataError(
            f"the {' and '.join(empty)} split(s) would be empty ({sizes} images of "
            f"{summary['n_images']}, val={options.val}, test={options.test}); choose more "
            "images (--n-images) or larger --val/--test shares"
        )


def _check_models_keep_working(paths: RunDir, summary: dict, options: DataConfig) -> None:
    """ConfigError when trained models exist and the new data differs from what they were
    trained on (split hash, image size, targets)."""
    trained = paths.trained_models()
    if not trained or not paths.split_summary.is_file():
        return
    old_summary = read_json(paths.split_summary)
    old_options = (
        read_json(paths.prepare_json).get("options", {}) if paths.prepare_json.is_file() else {}
    )
    changes = []
    if old_summary.get("split_hash") != summary["split_hash"]:
        changes.append("the cohort or split")
    if old_options.get("image_size") not in (None, options.image_size):
        changes.append(f"the image size ({old_options['image_size']} -> {options.image_size})")
    if list(old_summary.get("targets", [])) != list(summary["targets"]):
        changes.append("the targets")
    if changes:
        raise ConfigError(
            f"{paths.root} holds trained models ({', '.join(trained)}) and this prepare changes "
            f"{', '.join(changes)}: they could no longer be evaluated. Prepare into another "
            "--out, or pass --overwrite to replace the data (then retrain those models)"
        )


def _select(pool: pd.DataFrame, options: DataConfig) -> pd.DataFrame:
    age_range = None
    if options.age_min is not None or options.age_max is not None:
        age_range = (options.age_min or 0, options.age_max if options.age_max is not None else 200)
    return select_cohort(
        pool,
        options.pathologies,
        n_images=options.n_images,
        one_per_patient=options.one_per_patient,
        sampling=options.sampling,
        min_positives=options.min_positives if options.sampling == "enriched" else None,
        views=options.views,
        age_range=age_range,
        seed=options.seed,
    )


def _split(cohort: pd.DataFrame, options: DataConfig, files: MetadataFiles) -> pd.Series:
    if options.split == "patient":
        return split_patients(
            cohort, options.pathologies, val=options.val, test=options.test, seed=options.seed
        )
    if files.train_val_list is None or files.test_list is None:
        raise DataError(
            f"--split official needs train_val_list.txt and test_list.txt in {files.root}"
        )
    lists = read_split_lists(files.root)
    return official_split(cohort, lists, options.pathologies, val=options.val, seed=options.seed)


def cohort_table(cohort: pd.DataFrame, targets: list[str]) -> pd.DataFrame:
    """The `cohort.csv` frame: ids, split, one 0/1 column per target, then metadata."""
    y = findings_matrix(cohort, targets)  # (N, K)
    table = cohort[[IMAGE_INDEX, PATIENT_ID, "split"]].copy()
    for k, name in enumerate(targets):
        table[name] = y[:, k].astype(np.uint8)
    for column in META_COLUMNS:
        table[column] = cohort[column].to_numpy()
    return table


def _write_boxes(files: MetadataFiles, cohort: pd.DataFrame, size: int, path: Path) -> int:
    """Boxes of cohort images, in the NIH frame and normalised to the cached square."""
    columns = [IMAGE_INDEX, "label", "x", "y", "w", "h", "x0", "y0", "x1", "y1"]
    boxes = pd.DataFrame(columns=columns)
    if files.bbox_list is not None:
        found = read_bbox_list(files.bbox_list)
        boxes = found[found[IMAGE_INDEX].isin(set(cohort[IMAGE_INDEX]))].copy()
        source = dict(zip(cohort[IMAGE_INDEX], cohort["_path"], strict=True))
        frames = {name: box_frame(source[name]) for name in boxes[IMAGE_INDEX].unique()}
        rows = boxes[[IMAGE_INDEX, "x", "y", "w", "h"]].itertuples(index=False, name=None)
        coords = [box_to_cache_coords(x, y, w, h, *frames[name]) for name, x, y, w, h in rows]
        boxes[["x0", "y0", "x1", "y1"]] = np.asarray(coords, dtype=float).reshape(-1, 4)
    write_atomic(path, boxes[columns].to_csv(index=False))
    log.info("%d radiologist boxes on cohort images (cache size %d)", len(boxes), size)
    return len(boxes)


def box_frame(image_path: str | Path) -> tuple[float, float]:
    """(width, height) of the frame a box of this image is given in: the image's own aspect
    ratio, long side `BOX_FRAME` (NIH boxes are in the 1024-px PNG frame, and `cxrlab
    synth` keeps that frame at any PNG size). For NIH's square PNGs this is 1024 x 1024;
    for a non-square image the cache's pad-to-square offset then moves the box with it.
    Not `OriginalImage[Width,Height]` of Data_Entry: that is the size before NIH resized
    the image to its PNG, not the frame the boxes are in."""
    width, height = image_size(image_path)
    scale = BOX_FRAME / max(width, height)
    return width * scale, height * scale


def _provenance(options: DataConfig, files: MetadataFiles, n_missing: int) -> dict:
    return {
        "options": options.model_dump(mode="json"),
        "data_root": str(Path(files.root).resolve()),
        "files": {
            "data_entry": files.data_entry.name,
            "bbox_list": files.bbox_list.name if files.bbox_list else None,
        },
        "dropped_missing": n_missing,
        "box_frame": BOX_FRAME,
        "versions": package_versions(),
    }

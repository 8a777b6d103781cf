"""Evaluate a trained model on every image of another NIH-layout data set (external test).

The run's targets, image size and normalisation are reused; the images are cached once under
`RUN_DIR/reports/<name>/external-<dirname>/cache` exactly as `prepare` caches them.

An external set must be external: images of the run's own cohort (by Image Index) and every
image of its patients (by Patient ID) are left out, with a warning that says how many, and
the counts are kept in predictions.json. A set with nothing else left is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cxrlab.data.cache import build_cache, open_cache
from cxrlab.data.discovery import resolve_images
from cxrlab.data.metadata import find_metadata_files, read_data_entry
from cxrlab.data.prepare import cohort_table
from cxrlab.errors import DataError
from cxrlab.evaluate.predict import predictions_frame, write_predictions
from cxrlab.labels import IMAGE_INDEX, PATIENT_ID
from cxrlab.models.inference import predict_images
from cxrlab.rundir import SplitDir

log = logging.getLogger(__name__)


def predict_external(trained, data, data_root, sidecar, options, progress) -> SplitDir:
    """Predict every image listed in `data_root`'s Data_Entry; returns the output folder."""
    files = find_metadata_files(data_root)
    entries = read_data_entry(files.data_entry)
    resolved = resolve_images(entries, files.root, drop_missing=options.drop_missing)
    frame, paths, overlap = _without_run_cohort(resolved.df, resolved.paths, data, data_root)
    targets = list(trained.info["targets"])
    cohort = cohort_table(frame.assign(split="external"), targets)
    out_dir = data.paths.external(trained.name, data_root)
    build_cache(
        paths,
        cohort[IMAGE_INDEX].tolist(),
        out_dir.cache,
        size=int(trained.info["image_size"]),
        workers=1,
        progress=progress,
    )
    cache = open_cache(out_dir.cache)
    probs = predict_images(
        trained.model,
        cache.images,
        np.arange(len(cohort)),
        trained.mean,
        trained.std,
        batch_size=options.batch_size,
        progress=progress,
        desc=f"predicting external{' (TTA)' if options.tta else ''}",
        tta=options.tta,
    )
    frame = predictions_frame(cohort, targets, probs)
    meta = {
        **sidecar,
        "split": "external",
        "data_root": str(Path(data_root).resolve()),
        "dropped_missing": resolved.n_missing,
        "dropped_overlap": overlap,
    }
    write_predictions(frame, out_dir, meta)
    log.info("external set %s: %d images", data_root, len(frame))
    return out_dir


def _patient_keys(values) -> np.ndarray:
    """Patient IDs as comparable strings: cohort.csv and Data_Entry may differ in zero padding."""
    text = np.asarray(values).astype(str)
    return np.array([(v.lstrip("0") or "0") if v.isdigit() else v for v in text])


def _without_run_cohort(frame, paths: list, data, data_root) -> tuple:
    """Rows of the external set that are neither cohort images nor images of cohort patients.

    Returns (frame, paths, counts) with counts {"images": same Image Index, "patients":
    other images of a cohort patient, "by_split": {split: images}}.
    """
    same_image = frame[IMAGE_INDEX].isin(set(data.ids)).to_numpy()
    same_patient = np.isin(_patient_keys(frame[PATIENT_ID]), _patient_keys(data.patient_ids))
    drop = same_image | same_patient
    split_of = dict(zip(data.ids, data.cohort["split"], strict=True))
    by_split: dict[str, int] = {}
    for name in frame.loc[same_image, IMAGE_INDEX]:
        by_split[split_of[name]] = by_split.get(split_of[name], 0) + 1
    counts = {
        "images": int(same_image.sum()),
        "patients": int((same_patient & ~same_image).sum()),
        "by_split": by_split,
    }
    if drop.all():
        raise DataError(
            f"every one of the {len(frame)} images under {data_root} belongs to the run's own "
            f"cohort or its patients ({data.run_dir}); an external test needs other patients"
        )
    if drop.any():
        splits = ", ".join(f"{n} {k}" for k, n in sorted(by_split.items()))
        log.warning(
            "external set %s: left out %d of %d images that are the run's own cohort images "
            "(%s) or images of its patients (%d more); %d images remain",
            data_root,
            int(drop.sum()),
            len(frame),
            splits or "none",
            counts["patients"],
            int((~drop).sum()),
        )
    keep = np.flatnonzero(~drop)
    return frame.iloc[keep].reset_index(drop=True), [paths[i] for i in keep], counts

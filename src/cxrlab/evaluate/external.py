"""Evaluate a trained model on every image of another NIH-layout data set (external test).

The run's targets, image size and normalisation are reused; the images are cached once under
`RUN_DIR/reports/<name>/external-<dirname>/cache` exactly as `prepare` caches them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cxrlab.data.cache import build_cache, open_cache
from cxrlab.data.discovery import resolve_images
from cxrlab.data.metadata import find_metadata_files, read_data_entry
from cxrlab.data.prepare import cohort_table
from cxrlab.evaluate.predict import predictions_frame, write_predictions
from cxrlab.labels import IMAGE_INDEX
from cxrlab.models.inference import predict_images
from cxrlab.rundir import SplitDir

log = logging.getLogger(__name__)


def predict_external(trained, data, data_root, sidecar, options, progress) -> SplitDir:
    """Predict every image listed in `data_root`'s Data_Entry; returns the output folder."""
    files = find_metadata_files(data_root)
    entries = read_data_entry(files.data_entry)
    resolved = resolve_images(entries, files.root, drop_missing=options.drop_missing)
    targets = list(trained.info["targets"])
    cohort = cohort_table(resolved.df.assign(split="external"), targets)
    out_dir = data.paths.external(trained.name, data_root)
    build_cache(
        resolved.paths,
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
        desc="predicting external",
    )
    frame = predictions_frame(cohort, targets, probs)
    meta = {
        **sidecar,
        "split": "external",
        "data_root": str(Path(data_root).resolve()),
        "dropped_missing": resolved.n_missing,
    }
    write_predictions(frame, out_dir, meta)
    log.info("external set %s: %d images", data_root, len(frame))
    return out_dir

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
from cxrlab.models.inference import predict_images

log = logging.getLogger(__name__)


def external_dir(run_dir: Path, name: str, data_root: str | Path) -> Path:
    return Path(run_dir) / "reports" / name / f"external-{Path(data_root).resolve().name}"


def predict_external(model, info, run_dir, name, data_root, sidecar, options, progress) -> Path:
    """Predict every image listed in `data_root`'s Data_Entry; returns the output folder."""
    files = find_metadata_files(data_root)
    entries = read_data_entry(files.data_entry)
    resolved = resolve_images(entries, files.root, drop_missing=options.drop_missing)
    targets = list(info["targets"])
    cohort = cohort_table(resolved.df.assign(split="external"), targets)
    out_dir = external_dir(run_dir, name, data_root)
    size = int(info["image_size"])
    build_cache(
        resolved.paths,
        cohort["Image Index"].tolist(),
        out_dir / "cache",
        size=size,
        workers=1,
        progress=progress,
    )
    cache = open_cache(out_dir / "cache")
    rows = np.arange(len(cohort))
    probs = predict_images(
        model,
        cache.images,
        rows,
        info["mean"],
        info["std"],
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

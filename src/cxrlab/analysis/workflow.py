"""The analyze stage: a trained model's features on one split → PCA, K-Means, statistics.

Writes `RUN_DIR/analysis/<name>/`: `features_<layer>.npz` (with image ids), `analysis.json`,
`summary.md`, tables and figures (see `summary.run_analysis`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from cxrlab.analysis.features import PENULTIMATE, extract_features, list_layers, save_layer_features
from cxrlab.analysis.summary import run_analysis
from cxrlab.errors import ConfigError

log = logging.getLogger(__name__)


def analysis_dir(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / "analysis" / name


def model_layers(run_dir: str | Path, name: str) -> list[str]:
    """Layer names `analyze_model` accepts for a trained model."""
    from cxrlab.models.checkpoint import load_model_from_checkpoint, trained_model_dir

    model, _ = load_model_from_checkpoint(trained_model_dir(run_dir, name) / "best.ckpt")
    return list_layers(model)


def analyze_model(
    run_dir: str | Path,
    name: str,
    *,
    layers: Sequence[str] = (PENULTIMATE,),
    split: str = "test",
    scaling: str = "none",
    k: int | None = None,
    k_range: tuple[int, int] = (2, 8),
    n_components: int = 50,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> dict:
    """Extract features of `layers` on `split`, then cluster and test the first layer;
    every layer gets a linear probe. Returns what `analysis.json` holds."""
    from cxrlab.data.prepare import load_cohort
    from cxrlab.data.rundata import load_run_data
    from cxrlab.models.checkpoint import load_model_from_checkpoint, trained_model_dir

    if not layers:
        raise ConfigError("give at least one layer (see --list-layers)")
    run_dir = Path(run_dir)
    model, info = load_model_from_checkpoint(trained_model_dir(run_dir, name) / "best.ckpt")
    data = load_run_data(run_dir)
    cohort, targets = load_cohort(run_dir)
    rows = data.rows(split)
    if rows.size < 10:
        raise ConfigError(f"split {split!r} has {rows.size} images; analysis needs at least 10")
    batches = _batches(data.images, rows, info["mean"], info["std"], batch_size, progress)
    feats = extract_features(model, batches, list(layers))
    out_dir = analysis_dir(run_dir, name)
    ids = cohort["Image Index"].to_numpy()[rows]
    save_layer_features(out_dir, feats, ids)
    meta = cohort.iloc[rows].reset_index(drop=True)
    result = run_analysis(
        feats[layers[0]],
        meta,
        targets,
        out_dir,
        scaling=scaling,
        k=k,
        k_range=k_range,
        n_components=n_components,
        seed=seed,
        layer=layers[0],
        probe_features=feats,
    )
    log.info("analysis of %s (%s, %d images) written to %s", name, split, rows.size, out_dir)
    return result


def _batches(images, rows, mean, std, batch_size: int, progress: bool) -> Iterator:
    from tqdm.auto import tqdm

    from cxrlab.models.inference import to_model_input

    rows = np.asarray(rows)
    for start in tqdm(
        range(0, len(rows), batch_size),
        desc="extracting features",
        disable=not progress,
        unit="batch",
    ):
        yield to_model_input(images[rows[start : start + batch_size]], mean, std)

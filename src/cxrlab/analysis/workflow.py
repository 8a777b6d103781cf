"""The analyze stage: a trained model's features on one split → PCA, K-Means, statistics.

Writes `RUN_DIR/analysis/<name>/`: `features_<layer>.npz` (with image ids), `analysis.json`,
`summary.md`, tables and figures (see `summary.run_analysis`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.analysis.features import extract_features, list_layers, save_layer_features
from cxrlab.analysis.summary import run_analysis
from cxrlab.config import AnalyzeConfig, with_overrides
from cxrlab.errors import ConfigError
from cxrlab.rundir import RunDir

log = logging.getLogger(__name__)


def analysis_dir(run_dir: str | Path, name: str) -> Path:
    return RunDir(run_dir).analysis(name)


def model_layers(run_dir: str | Path, name: str) -> list[str]:
    """Layer names `analyze_model` accepts for a trained model."""
    from cxrlab.models.checkpoint import load_model_from_checkpoint

    model, _ = load_model_from_checkpoint(RunDir(run_dir).trained_model(name).best_ckpt)
    return list_layers(model)


def analyze_model(
    run_dir: str | Path,
    name: str,
    options: AnalyzeConfig | None = None,
    *,
    progress: bool = True,
    **overrides: Any,
) -> dict:
    """Extract features of `options.layers` on `options.split`, then cluster and test the
    first layer; every layer gets a linear probe. Returns what `analysis.json` holds.

    `options` (default `AnalyzeConfig()`) with `overrides` (its field names) on top."""
    from cxrlab.data.rundata import load_run_data
    from cxrlab.models.checkpoint import load_trained

    options = with_overrides(options or AnalyzeConfig(), overrides)
    layers = list(options.layers)
    if not layers:
        raise ConfigError("give at least one layer (see --list-layers)")
    data = load_run_data(run_dir)
    trained = load_trained(data, name, options.device)
    rows = data.rows(options.split)
    if rows.size < 10:
        raise ConfigError(
            f"split {options.split!r} has {rows.size} images; analysis needs at least 10"
        )
    batches = _batches(data.images, rows, trained, options.batch_size, progress)
    feats = extract_features(trained.model, batches, layers)
    out_dir = data.paths.analysis(name)
    save_layer_features(out_dir, feats, data.ids[rows])
    result = run_analysis(
        feats[layers[0]],
        data.cohort.iloc[rows].reset_index(drop=True),
        data.targets,
        out_dir,
        scaling=options.scaling,
        k=options.k,
        k_range=(options.k_min, options.k_max),
        n_components=options.n_components,
        seed=options.seed or 0,
        layer=layers[0],
        probe_features=feats,
    )
    log.info("analysis of %s (%s, %d images) in %s", name, options.split, rows.size, out_dir)
    return result


def _batches(images, rows, trained, batch_size: int, progress: bool) -> Iterator:
    """Normalised input batches on the model's device."""
    from tqdm.auto import tqdm

    from cxrlab.models.inference import to_model_input

    rows = np.asarray(rows)
    for start in tqdm(
        range(0, len(rows), batch_size),
        desc="extracting features",
        disable=not progress,
        unit="batch",
    ):
        x = to_model_input(images[rows[start : start + batch_size]], trained.mean, trained.std)
        yield x.to(trained.device, non_blocking=True)

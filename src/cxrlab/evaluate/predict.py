"""Turn model outputs on a run's images into `predictions.csv` (+ its sidecar).

Prediction uses exactly what training used for validation: the cached uint8 image, scaled
to [0, 1] and normalised with the checkpoint's own mean/std, no augmentation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.labels import IMAGE_INDEX, PATIENT_ID
from cxrlab.rundir import SplitDir
from cxrlab.runinfo import write_atomic, write_json

log = logging.getLogger(__name__)

META_COLUMNS = ("age", "sex", "view", "follow_up")


def predictions_frame(
    cohort: pd.DataFrame, targets: Sequence[str], probs: np.ndarray
) -> pd.DataFrame:
    """The predictions.csv frame for `cohort` rows (row-aligned with `probs` (N, K))."""
    frame = cohort[[IMAGE_INDEX, PATIENT_ID]].reset_index(drop=True).copy()
    for k, name in enumerate(targets):
        frame[f"p_{name}"] = probs[:, k].astype(float)
        frame[f"y_{name}"] = cohort[name].to_numpy().astype(int)
    for column in META_COLUMNS:
        if column in cohort.columns:
            frame[column] = cohort[column].to_numpy()
    return frame


def write_predictions(frame: pd.DataFrame, out_dir: SplitDir, sidecar: dict) -> Path:
    """Write predictions.csv and its predictions.json sidecar (run id, split hash, model)."""
    out_dir.path.mkdir(parents=True, exist_ok=True)
    path = write_atomic(out_dir.predictions, frame.to_csv(index=False, float_format="%.6f"))
    write_json(out_dir.predictions_meta, sidecar)
    log.info("wrote %d predictions to %s", len(frame), path)
    return path

"""Run a trained checkpoint over cached images and write `predictions.csv`.

Prediction uses exactly what training used for validation: the cached uint8 image, scaled
to [0, 1] and normalised with the checkpoint's own mean/std, no augmentation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrlab.runinfo import write_atomic, write_json

log = logging.getLogger(__name__)

META_COLUMNS = ("age", "sex", "view", "follow_up")


def to_model_input(batch_u8: np.ndarray, mean: Sequence[float], std: Sequence[float]):
    """(B, S, S) uint8 → (B, 1, S, S) float32 normalised tensor."""
    x = torch.from_numpy(np.ascontiguousarray(batch_u8)).unsqueeze(1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


@torch.inference_mode()
def predict_images(
    model: torch.nn.Module,
    images: np.ndarray,
    rows: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "predicting",
) -> np.ndarray:
    """Sigmoid probabilities (len(rows), K) for cache rows `rows` of `images` (N, S, S)."""
    model.eval()
    device = next(model.parameters()).device
    rows = np.asarray(rows, dtype=np.int64)
    out = []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        chunk = rows[start : start + batch_size]
        x = to_model_input(images[chunk], mean, std).to(device)
        out.append(torch.sigmoid(model(x).float()).cpu().numpy())  # (B, K)
    k = int(getattr(model, "num_classes", 0)) or (out[0].shape[1] if out else 0)
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.float32)


def predictions_frame(
    cohort: pd.DataFrame, targets: Sequence[str], probs: np.ndarray
) -> pd.DataFrame:
    """The predictions.csv frame for `cohort` rows (row-aligned with `probs` (N, K))."""
    frame = cohort[["Image Index", "Patient ID"]].reset_index(drop=True).copy()
    for k, name in enumerate(targets):
        frame[f"p_{name}"] = probs[:, k].astype(float)
        frame[f"y_{name}"] = cohort[name].to_numpy().astype(int)
    for column in META_COLUMNS:
        if column in cohort.columns:
            frame[column] = cohort[column].to_numpy()
    return frame


def write_predictions(frame: pd.DataFrame, out_dir: Path, sidecar: dict) -> Path:
    """Write predictions.csv and its predictions.json sidecar (run id, split hash, model)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_atomic(out_dir / "predictions.csv", frame.to_csv(index=False, float_format="%.6f"))
    write_json(out_dir / "predictions.json", sidecar)
    log.info("wrote %d predictions to %s", len(frame), path)
    return path

"""Inference on cached images: exactly the preprocessing validation used in training.

The cached uint8 image is scaled to [0, 1] and normalised with the checkpoint's own mean/std;
no augmentation. Evaluation, analysis, Grad-CAM and serving all go through here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm


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

"""Inference on cached images: exactly the preprocessing validation used in training.

The cached uint8 image is scaled to [0, 1] and normalised with the checkpoint's own mean/std;
no augmentation. Evaluation, analysis, Grad-CAM and serving all go through here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrlab.errors import ConfigError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` → CUDA if visible, else Apple MPS, else CPU; an explicit device must exist."""
    if isinstance(name, torch.device):
        return name
    name = str(name).lower()
    cuda, mps = torch.cuda.is_available(), _mps_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if (name.startswith("cuda") and not cuda) or (name == "mps" and not mps):
        raise ConfigError(
            f"device {name!r} was asked for but is not available on this machine "
            f"(CUDA: {'yes' if cuda else 'no'}, MPS: {'yes' if mps else 'no'}); "
            "use --device auto or --device cpu"
        )
    if name.startswith("cuda") or name == "mps":
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N, mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for inference on CUDA (bf16 where supported, else fp16); a no-op
    elsewhere, so CPU results stay bit-identical to training-time validation."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


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
    device = model_device(model)
    rows = np.asarray(rows, dtype=np.int64)
    out = []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        chunk = rows[start : start + batch_size]
        x = to_model_input(images[chunk], mean, std).to(device, non_blocking=True)
        with autocast(device):
            logits = model(x)  # (B, K)
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    k = int(getattr(model, "num_classes", 0)) or (out[0].shape[1] if out else 0)
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.float32)

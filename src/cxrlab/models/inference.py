"""Inference on cached images: exactly the preprocessing validation used in training.

The cached uint8 image is scaled to [0, 1] and normalised with the checkpoint's own mean/std;
no augmentation. Evaluation, analysis, Grad-CAM and serving all go through here.

Test-time augmentation (`tta=True`) averages the sigmoid probabilities over `TTA_VIEWS`:
the image itself and four small zooms/shifts inside the training augmentation's range,
never a flip (a flipped film puts the heart on the wrong side).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
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


def to_model_input(batch, mean: Sequence[float], std: Sequence[float], *, scaled: bool = False):
    """(B, S, S) uint8 → (B, 1, S, S) float32 normalised tensor; `scaled`: `batch` is already
    a (B, 1, S, S) float tensor in [0, 1]."""
    if scaled:
        x = batch
    else:
        x = torch.from_numpy(np.ascontiguousarray(batch)).unsqueeze(1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


#: (zoom, shift x, shift y) of each test-time view; shifts as a share of the image side,
#: zoom > 1 magnifies. The first is the image itself.
TTA_VIEWS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0),
    (1.05, 0.0, 0.0),
    (0.95, 0.0, 0.0),
    (1.0, 0.03, 0.03),
    (1.0, -0.03, -0.03),
)


def view(x01: torch.Tensor, zoom: float, shift_x: float, shift_y: float) -> torch.Tensor:
    """(B, C, S, S) images in [0, 1], zoomed about the centre and shifted; the area the
    view brings in is black, as in training's augmentation."""
    if (zoom, shift_x, shift_y) == (1.0, 0.0, 0.0):
        return x01
    theta = torch.tensor(
        [[1.0 / zoom, 0.0, 2.0 * shift_x], [0.0, 1.0 / zoom, 2.0 * shift_y]],
        dtype=x01.dtype,
        device=x01.device,
    )
    grid = F.affine_grid(theta.expand(len(x01), 2, 3), list(x01.shape), align_corners=False)
    return F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _probabilities(model, batch_u8: np.ndarray, mean, std, device, views) -> np.ndarray:
    """Mean sigmoid probabilities over `views` of one uint8 batch (one view: the image)."""
    x01 = torch.from_numpy(np.ascontiguousarray(batch_u8)).unsqueeze(1).float().div_(255.0)
    total = None
    for v in views:
        x = to_model_input(view(x01, *v), mean, std, scaled=True).to(device, non_blocking=True)
        with autocast(device):
            p = torch.sigmoid(model(x).float())  # (B, K)
        total = p if total is None else total + p
    return (total / len(views)).cpu().numpy()


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
    tta: bool = False,
) -> np.ndarray:
    """Sigmoid probabilities (len(rows), K) for cache rows `rows` of `images` (N, S, S);
    with `tta`, the mean over `TTA_VIEWS`."""
    model.eval()
    device = model_device(model)
    views = TTA_VIEWS if tta else TTA_VIEWS[:1]
    rows = np.asarray(rows, dtype=np.int64)
    out = []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        chunk = rows[start : start + batch_size]
        out.append(_probabilities(model, images[chunk], mean, std, device, views))
    k = int(getattr(model, "num_classes", 0)) or (out[0].shape[1] if out else 0)
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.float32)

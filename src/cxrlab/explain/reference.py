"""The reference film of a trained model's CAM, made once and kept beside the model.

The default CAM (`ExplainConfig`: Grad-CAM with a reference) maps the change of the hooked
layers' activations from their mean over the run's training images without any target
finding ("sign-free films"), not from an all-zero map: the evidence this image adds, not the
anatomy every film carries (docs/benchmarks.md, issue 16). The explain stage, `cxrlab
predict --cam`, `cxrlab serve`'s /v1/cam and an exported model must draw the same map for
the same image, so the reference is one artifact:

    RUN_DIR/models/<name>/cam_reference.safetensors   (made on first use, reused)
    EXPORT_DIR/cam_reference.safetensors              (written by `cxrlab export`)

One tensor per hooked layer, named by the layer, plus metadata: the image size, how many
films were averaged and a stamp of the checkpoint it was made from. A stored reference is
reused only when layers, image size and checkpoint all match; otherwise it is made again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrlab.data.rundata import RunData
from cxrlab.errors import DataError
from cxrlab.explain.gradcam import reference_activations
from cxrlab.rundir import ModelDir
from cxrlab.runinfo import atomic_file

log = logging.getLogger(__name__)

REFERENCE_IMAGES = 512  # at most this many films are averaged (evenly spaced over the rows)
SOURCE = "training images without any target finding"


@dataclass(frozen=True)
class CamReference:
    """Mean activation (C, h, w) of each hooked layer over `images` sign-free films."""

    layers: tuple[str, ...]
    maps: tuple[np.ndarray, ...]
    image_size: int
    images: int
    checkpoint: str = ""  # stamp of the checkpoint it was made from ("" = not known)

    def describe(self) -> dict:
        """What localization.json and the report say about it."""
        return {"images": self.images, "from": SOURCE, "layers": "+".join(self.layers)}

    def fits(self, layers: list[str], image_size: int, checkpoint: str) -> bool:
        return (
            list(self.layers) == list(layers)
            and self.image_size == image_size
            and self.checkpoint == checkpoint
        )

    def save(self, path: Path) -> Path:
        from safetensors.torch import save

        tensors = {
            name: torch.from_numpy(m) for name, m in zip(self.layers, self.maps, strict=True)
        }
        meta = {
            "layers": "+".join(self.layers),
            "image_size": str(self.image_size),
            "images": str(self.images),
            "checkpoint": self.checkpoint,
        }
        with atomic_file(path, "wb") as handle:
            handle.write(save(tensors, metadata=meta))
        return path

    @classmethod
    def load(cls, path: Path) -> CamReference:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                layers = tuple(meta["layers"].split("+"))
                maps = tuple(f.get_tensor(name).numpy() for name in layers)
        except (SafetensorError, KeyError, OSError) as exc:
            raise DataError(f"{path} is not a CAM reference file: {exc}") from None
        return cls(layers, maps, int(meta["image_size"]), int(meta["images"]), meta["checkpoint"])


def sign_free_rows(data: RunData) -> np.ndarray:
    """Training rows without any target finding, evenly spaced, at most REFERENCE_IMAGES."""
    train = data.rows("train")
    clean = train[data.labels[train].sum(axis=1) == 0]
    if clean.size <= REFERENCE_IMAGES:
        return clean
    return clean[np.linspace(0, clean.size - 1, REFERENCE_IMAGES).astype(int)]  # distinct


def checkpoint_stamp(folder: ModelDir) -> str:
    """Size and modification time of the model's best.ckpt: changes when it is retrained."""
    stat = os.stat(folder.best_ckpt)
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def make_reference(
    model: nn.Module,
    data: RunData,
    layers: list[str],
    info: dict,
    *,
    checkpoint: str = "",
    batch_size: int = 16,
) -> CamReference:
    """Average `layers` of `model` over the run's sign-free training films."""
    rows = sign_free_rows(data)
    if rows.size == 0:
        raise DataError(
            f"no training image of the run is free of every target ({', '.join(data.targets)}): "
            "no reference film to make"
        )
    modules = [model.get_submodule(name) for name in layers]
    maps = reference_activations(
        model, data.images[rows], modules, mean=info["mean"], std=info["std"], batch_size=batch_size
    )
    return CamReference(tuple(layers), tuple(maps), data.image_size, int(rows.size), checkpoint)


def model_reference(
    folder: ModelDir,
    data: RunData,
    model: nn.Module,
    info: dict,
    layers: list[str],
    *,
    batch_size: int = 16,
) -> CamReference:
    """The stored reference of RUN_DIR/models/<name> for `layers`, made (and stored) if it is
    missing or was made for other layers, another image size or another checkpoint."""
    stamp = checkpoint_stamp(folder)
    path = folder.cam_reference
    if path.is_file():
        try:
            stored = CamReference.load(path)
            if stored.fits(layers, data.image_size, stamp):
                return stored
        except DataError as exc:
            log.warning("%s; making it again", exc)
    reference = make_reference(model, data, layers, info, checkpoint=stamp, batch_size=batch_size)
    try:
        reference.save(path)
    except OSError as exc:  # a read-only run directory: use it without keeping it
        log.warning("could not keep the CAM reference in %s: %s", path, exc)
    return reference

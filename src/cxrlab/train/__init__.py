"""Training stage: `train_model(run_dir, config)` on PyTorch Lightning (`cxrlab train`).

Import-light: torch and Lightning load on first use of a name below, so `cxrlab --help`
and modules that only need e.g. `TrainResult`'s type stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "train_model": "cxrlab.train.engine",
    "TrainResult": "cxrlab.train.engine",
    "load_model_from_checkpoint": "cxrlab.models.checkpoint",
    "ChestXrayClassifier": "cxrlab.train.module",
    "BatchAugment": "cxrlab.train.augment",
    "load_run_data": "cxrlab.train.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cxrlab.train' has no attribute {name!r}")
    return getattr(import_module(module), name)

"""Explain stage: Grad-CAM overlays and how well they point at the radiologists' boxes.

Modules (imported on first use, so ``import cxrlab.explain`` stays light):

- `gradcam`: `gradcam(model, images_u8, classes)` -> maps (N, S, S) in [0, 1] and
  probabilities, through `pytorch-grad-cam`, for every model family; the model is left as
  it was (no hooks, same mode, same gradients).
- `localization`: pointing game, IoU and the random-point / centre baselines per pathology.
- `gallery`: which TPs / FPs / FNs to show, overlay PNGs and contact sheets.
- `workflow`: `explain_model(run_dir, name, ...)` end to end (`cxrlab explain`).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CamResult": "cxrlab.explain.gradcam",
    "gradcam": "cxrlab.explain.gradcam",
    "PairScore": "cxrlab.explain.localization",
    "pointing_hit": "cxrlab.explain.localization",
    "cam_iou": "cxrlab.explain.localization",
    "score_pair": "cxrlab.explain.localization",
    "summarize": "cxrlab.explain.localization",
    "select_gallery": "cxrlab.explain.gallery",
    "explain_model": "cxrlab.explain.workflow",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxrlab.explain' has no attribute {name!r}")

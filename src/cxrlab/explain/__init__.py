"""Explain stage: Grad-CAM overlays and how well they point at the radiologists' boxes.

Modules (importing the package loads torch):

- `gradcam`: `gradcam(model, images_u8, classes)` -> maps (N, S, S) in [0, 1] and
  probabilities, through `pytorch-grad-cam`, for every model family; the model is left as
  it was (no hooks, same mode, same gradients).
- `localization`: pointing game, IoU and the random-point / centre baselines per pathology.
- `gallery`: which TPs / FPs / FNs to show, overlay PNGs and contact sheets.
- `workflow`: `explain_model(run_dir, name, ...)` end to end (`cxrlab explain`).
"""

from cxrlab.explain.gallery import select_gallery
from cxrlab.explain.gradcam import CamResult, gradcam
from cxrlab.explain.localization import PairScore, cam_iou, pointing_hit, score_pair, summarize
from cxrlab.explain.workflow import explain_model

__all__ = [
    "CamResult",
    "PairScore",
    "cam_iou",
    "explain_model",
    "gradcam",
    "pointing_hit",
    "score_pair",
    "select_gallery",
    "summarize",
]

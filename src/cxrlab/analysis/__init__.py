"""Unsupervised analysis of learned features: do they group X-rays by pathology?

Stages, one module each (imported on use, so ``import cxrlab.analysis`` stays light):

- `features`: pooled activations of named layers (`list_layers`, `extract_features`,
  `save_features`, `load_features`).
- `embedding`: scaling, PCA and K-Means with k chosen by silhouette (`ClusterAnalysis`).
- `correspondence`: cluster x pathology enrichment (Fisher + Benjamini-Hochberg), ARI / NMI /
  purity on single-label images, and the confound check against view, sex, age, follow-up.
- `probe`: cross-validated linear probes per layer and pathology (`probe_layers`).
- `figures`: PNG/SVG figures and the offline interactive 3-D PCA.
- `summary`: `run_analysis` end to end, ``analysis.json`` and ``summary.md``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ClusterAnalysis": "cxrlab.analysis.embedding",
    "extract_features": "cxrlab.analysis.features",
    "list_layers": "cxrlab.analysis.features",
    "load_features": "cxrlab.analysis.features",
    "save_features": "cxrlab.analysis.features",
    "probe_layers": "cxrlab.analysis.probe",
    "run_analysis": "cxrlab.analysis.summary",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxrlab.analysis' has no attribute {name!r}")

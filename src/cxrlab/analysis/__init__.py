"""Unsupervised analysis of learned features: do they group X-rays by pathology?

Stages, one module each. The package exports the analysis of a feature matrix, which needs
no torch (it runs on any (N, D) array, pixels included); feature extraction from a model is
imported from `cxrlab.analysis.features`, and the stage from `cxrlab.analysis.workflow`
(`analyze_model`, `cxrlab analyze`), both of which load torch.

- `features`: pooled activations of named layers (`list_layers`, `extract_features`,
  `save_features`, `load_features`).
- `embedding`: scaling, PCA and K-Means with k chosen by silhouette (`ClusterAnalysis`).
- `correspondence`: cluster x pathology enrichment (Fisher + Benjamini-Hochberg), ARI / NMI /
  purity on single-label images, and the confound check against view, sex, age, follow-up.
- `probe`: cross-validated linear probes per layer and pathology (`probe_layers`).
- `figures`: PNG/SVG figures and the offline interactive 3-D PCA.
- `summary`: `run_analysis` end to end, ``analysis.json`` and ``summary.md``.
"""

from cxrlab.analysis.embedding import ClusterAnalysis
from cxrlab.analysis.probe import probe_layers
from cxrlab.analysis.summary import run_analysis

__all__ = ["ClusterAnalysis", "probe_layers", "run_analysis"]

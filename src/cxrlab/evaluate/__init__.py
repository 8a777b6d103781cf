"""Evaluate stage: honest multi-label metrics from predictions files.

Modules (imported on first use, so `import cxrlab.evaluate` stays light):
- `metrics`: `read_predictions`, `check_same_run`, `compute_metrics` (per class, macro,
  micro, Hamming/exact match beside the all-negative predictor, undefined = None + reason)
- `thresholds`: per-class thresholds chosen on validation (`max_f1`, `youden`,
  `fixed_sensitivity`), saved as `thresholds.json`
- `bootstrap`: patient-level bootstrap CIs, `paired_bootstrap` model comparison
- `delong`: DeLong's test and AUROC variance (Sun & Xu midrank algorithm)
- `calibration`: ECE, reliability data, `TemperatureScaler`
- `subgroups`: AUROC with CI by sex, age band and view position
- `figures`: ROC/PR, confusion matrices, training curves, AUROC bars, reliability (PNG + SVG)
- `tables`: display tables as DataFrames, CSV and Markdown
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Predictions": "metrics",
    "read_predictions": "metrics",
    "check_same_run": "metrics",
    "compute_metrics": "metrics",
    "choose_thresholds": "thresholds",
    "save_thresholds": "thresholds",
    "load_thresholds": "thresholds",
    "bootstrap_ci": "bootstrap",
    "bootstrap_auroc": "bootstrap",
    "paired_bootstrap": "bootstrap",
    "PatientResampler": "bootstrap",
    "delong_test": "delong",
    "delong_ci": "delong",
    "compare_delong": "delong",
    "calibration_report": "calibration",
    "expected_calibration_error": "calibration",
    "TemperatureScaler": "calibration",
    "subgroup_auroc": "subgroups",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cxrlab.evaluate' has no attribute {name!r}")
    module = importlib.import_module(f"cxrlab.evaluate.{_EXPORTS[name]}")
    return getattr(module, name)

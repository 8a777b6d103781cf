"""Evaluate stage: honest multi-label metrics from predictions files.

The package exports the statistics, which need numpy and pandas only: `report` imports
`evaluate.tables`, and so this package, and must not load torch. The stage itself
(`workflow.evaluate_model`, with `predict`, `compare`, `external`) is imported from its
modules. Modules:
- `metrics`: `read_predictions`, `check_same_run`, `compute_metrics` (per class, macro,
  micro, Hamming/exact match beside the all-negative predictor, undefined = None + reason)
- `thresholds`: per-class thresholds chosen on validation (`max_f1`, `youden`,
  `fixed_sensitivity`), saved as `thresholds.json`
- `bootstrap`: patient-level bootstrap CIs, `paired_bootstrap` model comparison (Holm
  across classes), the difference from the all-negative predictor, three-way verdicts
- `intervals`: clustered Wilson intervals, `unstable` marks (< 10), Holm, `verdict_from_ci`
- `delong`: DeLong's test and AUROC variance (Sun & Xu midrank algorithm)
- `calibration`: ECE, reliability data, `TemperatureScaler`
- `subgroups`: AUROC with CI by sex, age band and view position
- `figures`: ROC/PR, confusion matrices, training curves, AUROC bars, reliability (PNG + SVG)
- `tables`: display tables as DataFrames, CSV and Markdown
"""

from cxrlab.evaluate.bootstrap import (
    PatientResampler,
    bootstrap_auroc,
    bootstrap_ci,
    paired_bootstrap,
)
from cxrlab.evaluate.calibration import (
    TemperatureScaler,
    calibration_report,
    expected_calibration_error,
)
from cxrlab.evaluate.delong import compare_delong, delong_ci, delong_test
from cxrlab.evaluate.metrics import (
    Predictions,
    check_same_run,
    compute_metrics,
    read_predictions,
)
from cxrlab.evaluate.subgroups import subgroup_auroc
from cxrlab.evaluate.thresholds import choose_thresholds, load_thresholds, save_thresholds

__all__ = [
    "PatientResampler",
    "Predictions",
    "TemperatureScaler",
    "bootstrap_auroc",
    "bootstrap_ci",
    "calibration_report",
    "check_same_run",
    "choose_thresholds",
    "compare_delong",
    "compute_metrics",
    "delong_ci",
    "delong_test",
    "expected_calibration_error",
    "load_thresholds",
    "paired_bootstrap",
    "read_predictions",
    "save_thresholds",
    "subgroup_auroc",
]

"""The evaluate stage: checkpoint → predictions → thresholds (val only) → metrics, CIs, figures.

Layout, per model `<name>` (docs/ARCHITECTURE.md):
  RUN_DIR/models/<name>/thresholds.json        chosen on the validation split only
  RUN_DIR/reports/<name>/val/predictions.csv   used for thresholds and temperature only
  RUN_DIR/reports/<name>/<split>/              predictions.csv/.json, metrics.json, tables,
                                               figures (roc, pr, confusion, reliability)
  RUN_DIR/reports/<name>/external-<dir>/       the same for another NIH-layout data set
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.config import EvaluateConfig, with_overrides
from cxrlab.errors import EvaluationError
from cxrlab.evaluate.bootstrap import bootstrap_ci
from cxrlab.evaluate.calibration import TemperatureScaler, calibration_report
from cxrlab.evaluate.figures import (
    plot_confusion_matrices,
    plot_pr_curves,
    plot_reliability,
    plot_roc_curves,
    plot_training_curves,
)
from cxrlab.evaluate.metrics import Predictions, compute_metrics, read_predictions
from cxrlab.evaluate.predict import predictions_frame, write_predictions
from cxrlab.evaluate.subgroups import subgroup_auroc_of
from cxrlab.evaluate.tables import (
    multilabel_table,
    per_class_table,
    save_table,
    subgroup_table,
    threshold_table,
)
from cxrlab.evaluate.thresholds import choose_thresholds, save_thresholds
from cxrlab.labels import IMAGE_INDEX
from cxrlab.models.inference import predict_images
from cxrlab.rundir import RunDir, SplitDir
from cxrlab.runinfo import read_json, write_json

log = logging.getLogger(__name__)

VAL_NOTE = (
    "evaluated on val: its thresholds (and temperature) are chosen on these same images, so "
    "threshold metrics and calibration are optimistic; use the test split for claims"
)


def evaluate_model(
    run_dir: str | Path,
    name: str,
    options: EvaluateConfig | None = None,
    *,
    data_root: str | Path | None = None,
    progress: bool = True,
    **overrides: Any,
) -> dict:
    """Evaluate model `name` of a run on its test split (or an external NIH-layout set).

    `options` (default `EvaluateConfig()`) with `overrides` (its field names) on top."""
    from cxrlab.data.rundata import load_run_data
    from cxrlab.models.checkpoint import load_trained

    options = with_overrides(options or EvaluateConfig(), overrides)
    data = load_run_data(run_dir)
    trained = load_trained(data, name, options.device)
    if options.split == "val" and data_root is None:
        log.warning(VAL_NOTE)
    sidecar = {
        "run_id": str(data.run_dir.resolve()),
        "split_hash": data.split_hash,
        "model": name,
        "targets": data.targets,
        "checkpoint_epoch": trained.info.get("epoch"),
        "weights": trained.info.get("weights"),
        "tta": options.tta,
    }
    val_dir = _predict_split(trained, data, "val", sidecar, options, progress)
    val = read_predictions(val_dir.predictions, data.targets)
    # thresholds.json holds thresholds on the model's own single-view outputs (explain,
    # predict and serve apply it to raw probabilities); evaluation under temperature or
    # TTA re-chooses them below.
    own = _single_view(trained, data, val, options) if options.tta else val
    save_thresholds(choose_for(own, options), trained.folder.thresholds)
    scaler = TemperatureScaler().fit(val.p, val.y) if options.temperature else None
    thresholds = choose_for(val, options, scaler)
    if data_root is not None:
        from cxrlab.evaluate.external import predict_external

        out_dir = predict_external(trained, data, data_root, sidecar, options, progress)
    else:
        out_dir = _predict_split(trained, data, options.split, sidecar, options, progress)
    return evaluate_predictions(
        out_dir.predictions,
        thresholds,
        options,
        scaler=scaler,
        training_csv=trained.folder.metrics_csv,
        model_name=name,
    )


def choose_for(val: Predictions, options: EvaluateConfig, scaler=None) -> dict:
    """Thresholds chosen on the validation probabilities that will be compared with them:
    temperature-scaled when `scaler` is given, else the model's own. Each entry records which
    (`probabilities`, absent = raw), so a threshold is never applied on another scale."""
    p = val.p if scaler is None else scaler.transform(val.p)
    chosen = choose_thresholds(val.y, p, val.targets, options.threshold, options.target_sensitivity)
    if scaler is None:
        return chosen  # no "probabilities" key: the model's own outputs
    return {t: {**entry, "probabilities": _scale(scaler)} for t, entry in chosen.items()}


def _single_view(trained, data, val: Predictions, options: EvaluateConfig) -> Predictions:
    """`val` with the model's probabilities without test-time augmentation."""
    import dataclasses

    rows = data.rows("val")
    if list(val.ids) != data.cohort.iloc[rows][IMAGE_INDEX].astype(str).tolist():
        raise EvaluationError("val predictions are not in the cohort's order")  # a bug
    kwargs = {"batch_size": options.batch_size}
    probs = predict_images(trained.model, data.images, rows, trained.mean, trained.std, **kwargs)
    return dataclasses.replace(val, p=probs.astype(np.float64))


def _predict_split(trained, data, split: str, sidecar: dict, options, progress) -> SplitDir:
    rows = data.rows(split)
    if rows.size == 0:
        raise EvaluationError(f"split {split!r} of {data.run_dir} has no images")
    probs = predict_images(
        trained.model,
        data.images,
        rows,
        trained.mean,
        trained.std,
        batch_size=options.batch_size,
        progress=progress,
        desc=f"predicting {split}{' (TTA)' if options.tta else ''}",
        tta=options.tta,
    )
    frame = predictions_frame(data.cohort.iloc[rows], data.targets, probs)
    out_dir = data.paths.evaluation(trained.name, split)
    write_predictions(frame, out_dir, {**sidecar, "split": split})
    return out_dir


def evaluate_predictions(
    path: str | Path,
    thresholds: dict,
    options: EvaluateConfig,
    *,
    scaler: TemperatureScaler | None = None,
    training_csv: Path | None = None,
    model_name: str = "model",
) -> dict:
    """Metrics, patient-bootstrap CIs, calibration, subgroups, tables and figures for one file."""
    path = Path(path)
    out_dir = path.parent
    preds = read_predictions(path)
    thresholds_on = _thresholds_on(thresholds, scaler)  # refuses a scale mismatch first
    p = preds.p
    if scaler is not None:
        p = scaler.transform(p)
        preds = _with_p(preds, p)
    metrics = compute_metrics(preds.y, p, thresholds, preds.targets)
    ci = bootstrap_ci(
        preds.y,
        p,
        preds.patient_ids,
        thresholds,
        preds.targets,
        n_boot=options.bootstrap,
        seed=options.seed,
    )
    result = {
        "model": model_name,
        "predictions": path.name,
        "n_images": int(preds.y.shape[0]),
        "n_patients": int(len(set(preds.patient_ids.tolist()))),
        "options": options.model_dump(mode="json"),
        "thresholds": thresholds,
        "metrics": metrics,
        "ci": ci,
        "calibration": calibration_report(preds.y, p, preds.targets),
        "subgroups": subgroup_auroc_of(
            preds,
            n_boot=max(200, options.bootstrap // 5),
            seed=options.seed,
            age_edges=options.age_edges,
        ),
        "temperature": getattr(scaler, "temperature_", None),
        "split": out_dir.name,  # test, val, or external-<dir>
        "notes": [VAL_NOTE] if out_dir.name == "val" else [],
        "thresholds_on": thresholds_on,
    }
    write_json(SplitDir(out_dir).metrics, result)
    _tables(result, out_dir)
    if options.figures:
        _figures(preds, p, metrics, out_dir, model_name, training_csv)
    return result


def _thresholds_on(thresholds: dict, scaler: TemperatureScaler | None) -> str:
    """Which validation probabilities the thresholds were chosen on; refuses a mismatch
    between temperature-scaled test probabilities and thresholds chosen on raw ones."""
    scales = {e.get("probabilities", "raw") for e in thresholds.values() if isinstance(e, dict)}
    expected = "raw" if scaler is None else _scale(scaler)
    if scales and scales != {expected}:
        raise EvaluationError(
            f"thresholds were chosen on {sorted(scales)} validation probabilities, but the "
            f"probabilities evaluated are {expected}; choose them with `choose_for(val, "
            "options, scaler)`"
        )
    return f"validation, {expected} probabilities"


def _scale(scaler: TemperatureScaler) -> str:
    return f"temperature-scaled (T = {scaler.temperature_:.3f})"


def _with_p(preds: Predictions, p: np.ndarray) -> Predictions:
    from dataclasses import replace

    return replace(preds, p=p)


def _tables(result: dict, out_dir: Path) -> None:
    metrics, ci = result["metrics"], result["ci"]
    save_table(per_class_table(metrics, ci), out_dir, "per_class")
    save_table(multilabel_table(metrics, ci), out_dir, "multilabel")
    save_table(threshold_table(metrics), out_dir, "thresholds")
    save_table(subgroup_table(result["subgroups"]), out_dir, "subgroups")


def _figures(preds, p, metrics, out_dir: Path, name: str, training_csv: Path | None) -> None:
    fig_dir = SplitDir(out_dir).figures
    probs = {name: p}
    plot_roc_curves(preds.y, probs, preds.targets, fig_dir)
    plot_pr_curves(preds.y, probs, preds.targets, fig_dir)
    plot_confusion_matrices(preds.y, p, metrics["thresholds"], preds.targets, fig_dir)
    plot_reliability(preds.y, probs, preds.targets, fig_dir)
    if training_csv is not None and Path(training_csv).is_file():
        plot_training_curves(training_csv, fig_dir)


def load_metrics(run_dir: str | Path, name: str, split: str = "test") -> dict:
    path = RunDir(run_dir).evaluation(name, split).metrics
    if not path.is_file():
        raise EvaluationError(f"{path} not found; run `cxrlab evaluate {run_dir} --model {name}`")
    return read_json(path)

"""cxrlab's public Python API: one function per CLI command, with its names and defaults.

    import cxrlab
    data = cxrlab.synth("synthetic-nih", patients=120)          # or your NIH download
    run = cxrlab.prepare(data.root, "runs/first", image_size=64)
    cxrlab.train(run, "simple_cnn", epochs=3)
    ev = cxrlab.evaluate(run, "simple_cnn", bootstrap=200)
    ev.table            # per-class metrics with patient-bootstrap 95% CIs (a DataFrame)
    ev.figure("roc")    # the ROC curves the stage drew (a matplotlib Figure)

Each function writes exactly the files of its CLI twin (`cxrlab prepare`, `cxrlab train`, ...)
into the run directory and returns a small object that reads them back: `Run`, `Training`,
`Evaluation`, `Comparison`, `Analysis`, `Explanation`. Keyword defaults are the config
sections' (`cxrlab.config`), read from them below rather than typed again, so the API, the
CLI and a study YAML cannot disagree. Errors are `cxrlab.errors.CxrError` subclasses.

`__all__` (with `cxrlab.results.__all__`, both repeated in `cxrlab.__all__`) is the public,
stable API; every other module of the
package is internal. Importing this module loads no torch: each function imports its stage
when it is called.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrlab.config import (
    TRAIN_OPTIONS,
    TRANSFER_RECIPE,
    Accelerator,
    AnalyzeConfig,
    CamMethod,
    CrossvalConfig,
    DataConfig,
    Device,
    EvalSplit,
    EvaluateConfig,
    ExperimentConfig,
    ExplainConfig,
    Optimizer,
    Precision,
    PredictConfig,
    Runtime,
    Sampling,
    Scaling,
    Schedule,
    Selection,
    Split,
    SplitMethod,
    Strategy,
    StudyConfig,
    SyntheticConfig,
    ThresholdRule,
    build,
    experiment_default,
    section_from,
)
from cxrlab.results import (
    Analysis,
    Comparison,
    CrossValidation,
    Evaluation,
    Explanation,
    Run,
    Training,
)
from cxrlab.rundir import RunDir

__all__ = [
    "synth",
    "prepare",
    "train",
    "evaluate",
    "compare",
    "crossval",
    "analyze",
    "list_layers",
    "explain",
    "report",
    "run_study",
    "export",
    "predict",
    "open_run",
]

# The sections' defaults, read once; each keyword default below is one of their fields.
_SYNTH, _DATA = SyntheticConfig(), DataConfig()
_EVAL, _ANALYZE, _EXPLAIN = EvaluateConfig(), AnalyzeConfig(), ExplainConfig()
_PREDICT = PredictConfig()
_CV = CrossvalConfig()


def _d(flag: str) -> Any:
    return experiment_default(TRAIN_OPTIONS[flag])


#: Keys whose default depends on a pretrained start (None in `train`'s signature).
_BY_RECIPE = frozenset(f"{s}.{k}" for s, keys in TRANSFER_RECIPE.items() for k in keys)


def _root(run: Run | str | os.PathLike) -> Path:
    return Path(os.fspath(run))


def synth(
    out: str | os.PathLike,
    *,
    patients: int = _SYNTH.patients,
    seed: int = _SYNTH.seed,
    image_size: int = _SYNTH.image_size,
    workers: int = 1,
    overwrite: bool = False,
):
    """Write a synthetic data set in the exact NIH layout to `out` (`cxrlab synth`).

    Chest-like images with drawn, boxed signs of seven findings; the same seed gives the
    same bytes. Returns a `SynthInfo` (`.root` is the data root to `prepare`, `.images`,
    `.label_counts`, ...).
    """
    from cxrlab.synth import write_synthetic_dataset

    options = section_from(SyntheticConfig, locals(), "synth options")
    return write_synthetic_dataset(
        out,
        patients=options.patients,
        seed=options.seed,
        image_size=options.image_size,
        workers=workers,
        overwrite=overwrite,
    )


def prepare(
    data_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    pathologies: Sequence[str] | str = tuple(_DATA.pathologies),
    n_images: int | None = _DATA.n_images,
    one_per_patient: bool = _DATA.one_per_patient,
    sampling: Sampling = _DATA.sampling,
    min_positives: int = _DATA.min_positives,
    views: Sequence[str] | None = _DATA.views,
    age_min: int | None = _DATA.age_min,
    age_max: int | None = _DATA.age_max,
    split: SplitMethod = _DATA.split,
    val: float = _DATA.val,
    test: float = _DATA.test,
    image_size: int = _DATA.image_size,
    drop_missing: bool = _DATA.drop_missing,
    workers: int = _DATA.workers,
    seed: int = _DATA.seed,
    progress: bool = True,
) -> Run:
    """Select a cohort by patient, split it (with the leakage check) and cache the images
    into `out/data` (`cxrlab prepare`). Safe to re-run: the cache resumes.

    pathologies: 1-14 NIH findings (a list, "a,b" or "all"), in column order.
    sampling: natural (the data set's prevalence) or enriched (`min_positives` per target).
    split: patient (stratified by patient, `val`/`test` shares of patients) or official
        (the NIH test list; `val` carved by patient from train_val).
    image_size: the cached square side in px; workers: processes decoding images.
    """
    from cxrlab.data.prepare import prepare as prepare_stage

    arguments = {**locals(), "data_root": os.fspath(data_root)}
    options = section_from(DataConfig, arguments, "prepare options")
    prepare_stage(options, out, progress=progress)
    return Run(Path(out))


def train(
    run: Run | str | os.PathLike,
    model: str = _d("model"),
    *,
    pretrained: bool = _d("pretrained"),
    weights: str | os.PathLike | None = _d("weights"),
    model_kwargs: Mapping[str, Any] | None = None,
    strategy: Strategy = _d("strategy"),
    freeze_epochs: int = _d("freeze_epochs"),
    epochs: int | None = None,
    batch_size: int = _d("batch_size"),
    lr: float | None = None,
    backbone_lr_mult: float = _d("backbone_lr_mult"),
    optimizer: Optimizer = _d("optimizer"),
    schedule: Schedule = _d("schedule"),
    patience: int = _d("patience"),
    select: Selection | None = None,
    ema: bool = _d("ema"),
    pos_weight: bool = _d("pos_weight"),
    seed: int = _d("seed"),
    precision: Precision = _d("precision"),
    accelerator: Accelerator = _d("accelerator"),
    devices: int | str = _d("devices"),
    num_nodes: int = _d("num_nodes"),
    num_workers: int = _d("num_workers"),
    hflip: bool = _d("hflip"),
    rotation: float = _d("rotation"),
    config: str | os.PathLike | ExperimentConfig | Mapping[str, Any] | None = None,
    name: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Training:
    """Train one multi-label classifier on the run's train split, validating on val
    (`cxrlab train`); writes models/<name> (default name: the model's).

    model: simple_cnn or a timm name (resnet18, efficientnet_lite0, densenet121, ...);
        `model_kwargs` go to its constructor (SimpleCNN: base_width, depth, convs_per_block).
    strategy: full, freeze-then-unfreeze (head only for `freeze_epochs`) or linear-probe.
    epochs, lr, select: None takes the config's value: from scratch 30, 1e-3, "best"
        (early stopping); with `pretrained` or `weights`, the transfer recipe
        (`cxrlab.config.TRANSFER_RECIPE`: 8, 3e-4, "last", no warm-up).
    backbone_lr_mult: the backbone's LR as a share of `lr`; ema: keep a weight EMA
        (timm's ModelEmaV3) and use its weights.
    precision/accelerator/devices/num_nodes: where to train; devices > 1 trains with DDP.
    config: a YAML experiment file (as `--config`), a mapping or an `ExperimentConfig`;
        keyword options that differ from their default override it (an option left at
        its default keeps the file's value). With `resume` and no config, the saved
        config.yaml is the base.
    """
    from cxrlab.train.engine import resolve_config, train_model

    given = locals()
    overrides = {
        dotted: _override(given[flag], _d(flag) if dotted not in _BY_RECIPE else None)
        for flag, dotted in TRAIN_OPTIONS.items()
    }
    if weights is not None:
        overrides["model.weights"] = os.fspath(weights)
    if model_kwargs is not None:
        overrides["model.kwargs"] = dict(model_kwargs)
    root = _root(run)
    if config is None or isinstance(config, (str, os.PathLike)):
        resolved, folder = resolve_config(root, config, overrides, name, resume)
    else:
        resolved, folder = _experiment(config, overrides, name)
    train_model(root, resolved, folder, resume, overwrite=overwrite, progress_bar=progress)
    return Training(RunDir(root).model(folder).path)


def _override(value: Any, default: Any) -> Any:
    """None (= not given, keep the base config's value) where `value` is the default."""
    return None if value == default else value


def _experiment(config, overrides: dict[str, Any], name: str | None):
    from cxrlab.config import merge_overrides
    from cxrlab.rundir import check_folder_name

    base = config.model_dump() if isinstance(config, ExperimentConfig) else dict(config)
    resolved = build(ExperimentConfig, merge_overrides(base, overrides), source="train config")
    return resolved, check_folder_name(name or resolved.model.name)


def evaluate(
    run: Run | str | os.PathLike,
    model: str,
    *,
    split: EvalSplit = _EVAL.split,
    data_root: str | os.PathLike | None = None,
    threshold: ThresholdRule = _EVAL.threshold,
    target_sensitivity: float = _EVAL.target_sensitivity,
    bootstrap: int = _EVAL.bootstrap,
    seed: int = _EVAL.seed,
    temperature: bool = _EVAL.temperature,
    tta: bool = _EVAL.tta,
    drop_missing: bool = _EVAL.drop_missing,
    figures: bool = _EVAL.figures,
    age_edges: Sequence[int] = tuple(_EVAL.age_edges),
    device: Device = _EVAL.device,
    batch_size: int = _EVAL.batch_size,
    progress: bool = True,
) -> Evaluation:
    """Predict, choose thresholds on val only, and compute metrics with patient-bootstrap
    95% CIs beside trivial baselines (`cxrlab evaluate`; `target_sensitivity` is its
    `--sensitivity`).

    split: test, or val (optimistic: its thresholds were chosen on it).
    data_root: evaluate every image of another NIH-layout data set instead (external set).
    threshold: max_f1, youden or fixed_sensitivity (at `target_sensitivity`).
    tta: test-time augmentation (mean over 5 small zooms/shifts, never a flip).
    device: auto (a GPU when there is one), cpu, cuda or mps; batch_size per forward pass.
    """
    from cxrlab.evaluate.workflow import evaluate_model

    options = section_from(EvaluateConfig, locals(), "evaluate options")
    root = _root(run)
    evaluate_model(root, model, options, data_root=data_root, progress=progress)
    paths = RunDir(root)
    where = paths.external(model, data_root) if data_root else paths.evaluation(model, split)
    return Evaluation(where.path)


def compare(
    run: Run | str | os.PathLike,
    *,
    split: EvalSplit = _EVAL.split,
    models: Sequence[str] | None = None,
    bootstrap: int = _EVAL.bootstrap,
    seed: int = _EVAL.seed,
) -> Comparison:
    """Every evaluated model (or `models`) on the same images: AUROC with CIs, DeLong and a
    paired bootstrap over patients for each pair (`cxrlab compare`)."""
    from cxrlab.evaluate.compare import compare_models

    root = _root(run)
    names = list(models) if models else None
    compare_models(root, split, names, n_boot=bootstrap, seed=seed)
    return Comparison(RunDir(root).comparison(split))


def crossval(
    run: Run | str | os.PathLike,
    name: str,
    *,
    config: str | os.PathLike | None = None,
    folds: int = _CV.folds,
    val: float = _CV.val,
    seed: int = _CV.seed,
    bootstrap: int = _CV.bootstrap,
    device: Device = _CV.device,
    batch_size: int = _CV.batch_size,
    keep_models: bool = _CV.keep_models,
    against: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> CrossValidation:
    """Patient-grouped k-fold cross-validation of trained model `name`'s config (or of the
    YAML `config`): one training per fold, every image predicted once by a model that never
    saw its patient (`cxrlab crossval`). The result reads crossval/NAME back: `.table` (pooled
    out-of-fold AUROC with patient-bootstrap CIs), `.folds` (each fold's macro AUROC),
    `.predictions`, `.summary`; with `against`, `.against` holds the paired difference
    `name - against` on the same folds (with every other pair saved for NAME)."""
    from cxrlab.crossval import compare_crossval, config_of
    from cxrlab.crossval import crossval as run_crossval

    options = section_from(CrossvalConfig, dict(locals()), "cxrlab.crossval options")
    root = _root(run)
    experiment = config_of(root, name, config)
    done = run_crossval(root, experiment, name, options, overwrite=overwrite, progress=progress)
    if against:
        compare_crossval(root, name, against, options)  # saved beside it: `.paired`, `.against`
    return CrossValidation(done.folder)


def analyze(
    run: Run | str | os.PathLike,
    model: str,
    *,
    layers: Sequence[str] = tuple(_ANALYZE.layers),
    split: Split = _ANALYZE.split,
    scaling: Scaling = _ANALYZE.scaling,
    k: int | None = _ANALYZE.k,
    k_min: int = _ANALYZE.k_min,
    k_max: int = _ANALYZE.k_max,
    n_components: int = _ANALYZE.n_components,
    seed: int | None = _ANALYZE.seed,
    device: Device = _ANALYZE.device,
    batch_size: int = _ANALYZE.batch_size,
    progress: bool = True,
) -> Analysis:
    """Pooled activations of `layers` on `split` → PCA, K-Means (k by silhouette unless
    given), cluster-vs-pathology and cluster-vs-metadata statistics, a linear probe per
    layer (`cxrlab analyze`). `list_layers(run, model)` names the layers; seed None is 0.

    scaling: before PCA, none (keeps the features' own geometry), standard or robust.
    """
    from cxrlab.analysis.workflow import analyze_model

    # AnalyzeConfig.model names the study's model to analyse; here it is the `model` argument
    options = section_from(AnalyzeConfig, locals(), "analyze options", exclude=("model",))
    root = _root(run)
    analyze_model(root, model, options, progress=progress)
    return Analysis(RunDir(root).analysis(model))


def list_layers(run: Run | str | os.PathLike, model: str) -> list[str]:
    """Layer names `analyze` accepts for a trained model (`cxrlab analyze --list-layers`)."""
    from cxrlab.analysis.workflow import model_layers

    return model_layers(_root(run), model)


def explain(
    run: Run | str | os.PathLike,
    model: str,
    *,
    images: Sequence[str] | None = None,
    split: Split = _EXPLAIN.split,
    per_group: int = _EXPLAIN.per_group,
    tolerance: float = _EXPLAIN.tolerance,
    cam_threshold: float = _EXPLAIN.cam_threshold,
    faithfulness: int = _EXPLAIN.faithfulness,
    method: CamMethod = _EXPLAIN.method,
    layer: str = _EXPLAIN.layer,
    reference: bool = _EXPLAIN.reference,
    device: Device = _EXPLAIN.device,
    batch_size: int = _EXPLAIN.batch_size,
    progress: bool = True,
) -> Explanation:
    """Grad-CAM per image and pathology, scored against the radiologists' boxes (pointing
    game, IoU, beside random and centre baselines) (`cxrlab explain`).

    images: Image Index values to explain for every target (into explain/images/), instead
        of the split's gallery of top true/false positives and missed positives.
    reference: maps of the change from the mean training film without any target finding
        (the default; methods gradcam, hirescam and layercam, the others run without it).
    faithfulness: true positives per target whose maps get deletion and insertion curves
        against random maps (`explain.faithfulness`; 0: none).
    """
    from cxrlab.explain.workflow import explain_model

    options = section_from(ExplainConfig, locals(), "explain options")
    root = _root(run)
    result = explain_model(root, model, options, images=images, progress=progress)
    return Explanation(Path(result["out_dir"]))


def report(
    run: Run | str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    split: EvalSplit = "test",
    embed_interactive: bool = False,
) -> Path:
    """Write the self-contained report.html (default RUN_DIR/report.html) and return its
    path (`cxrlab report`). Sections whose stage has not run say so."""
    from cxrlab.report.build import build_report

    return build_report(_root(run), out, split=split, embed_interactive=embed_interactive)


def run_study(
    config: str | os.PathLike | StudyConfig | Mapping[str, Any],
    out: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Run:
    """The whole study of a YAML file (`cxrlab run CONFIG --out OUT`): prepare → train each
    model → evaluate → compare → analyze → explain → report. Re-runnable: unchanged stages
    are skipped (`Run.stages` says which ran). No data root: the built-in synthetic data."""
    from cxrlab.config import load_study, merge_overrides
    from cxrlab.pipeline import run_study as run_pipeline

    overrides = {"data.data_root": os.fspath(data_root) if data_root else None}
    overrides["data.workers"] = workers
    if isinstance(config, (str, os.PathLike)):
        study = load_study(config, overrides)
    else:
        base = config.model_dump() if isinstance(config, StudyConfig) else dict(config)
        study = build(StudyConfig, merge_overrides(base, overrides), source="study config")
    run_pipeline(study, out, progress=progress)
    return Run(Path(out))


def export(
    run: Run | str | os.PathLike,
    model: str,
    out: str | os.PathLike,
    *,
    onnx: bool = False,
    default_thresholds: bool = _PREDICT.default_thresholds,
) -> Path:
    """Write a trained model as a self-sufficient folder (`cxrlab export`): weights
    (safetensors), `model.json` (targets, image size, normalisation, validation thresholds
    and their rule, temperature, test metrics with CIs, provenance, intended use) and, with
    `onnx=True`, `model.onnx`. Returns the folder; `predict` and `cxrlab serve` accept it."""
    from cxrlab.predict.bundle import export_model

    export_model(_root(run), model, out, onnx=onnx, default_thresholds=default_thresholds)
    return Path(out)


def predict(
    model: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike = _PREDICT.out,
    *,
    cam: str | os.PathLike | None = None,
    runtime: Runtime = _PREDICT.runtime,
    device: Device = _PREDICT.device,
    batch_size: int = _PREDICT.batch_size,
    default_thresholds: bool = _PREDICT.default_thresholds,
    progress: bool = True,
):
    """Probabilities and findings for new images (`cxrlab predict`): `model` is an exported
    folder or RUN_DIR/models/NAME; `inputs` files, folders or globs (PNG, JPEG, DICOM,
    NIfTI), preprocessed exactly as training did. Returns the table (a DataFrame: one row
    per image, `p_<finding>` and `finding_<finding>` columns, `error` for unreadable files)
    and writes it to `out`; `cam` writes Grad-CAM overlays of the positive findings."""
    from cxrlab.predict.bundle import load_bundle
    from cxrlab.predict.workflow import predict_files

    predictor = load_bundle(
        model, runtime=runtime, device=device, default_thresholds=default_thresholds
    )
    result = predict_files(
        predictor, list(inputs), out, cam_dir=cam, batch_size=batch_size, progress=progress
    )
    return result.frame


def open_run(path: str | os.PathLike) -> Run:
    """The prepared run directory at `path` (e.g. after restarting a notebook's kernel)."""
    paths = RunDir(path)
    paths.require_prepared()
    return Run(paths.root)

"""One experiment schema (data, model, optimiser, schedule, augmentation, training).

The defaults are the documentation: one knob a line, with a comment saying why. YAML files
and CLI flags both land here; unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cxrlab.errors import ConfigError
from cxrlab.labels import DEFAULT_TARGETS, parse_targets

# ---- Choices, each declared once: config sections, CLI options and workflows use these ----
Split = Literal["train", "val", "test"]
EvalSplit = Literal["test", "val"]  # external sets use --data-root
Device = Literal["auto", "cpu", "cuda", "mps"]  # auto: CUDA, then MPS, then CPU
ThresholdRule = Literal["max_f1", "youden", "fixed_sensitivity"]
Scaling = Literal["none", "standard", "robust"]
Strategy = Literal["full", "freeze-then-unfreeze", "linear-probe"]
Optimizer = Literal["adamw", "adam"]
Schedule = Literal["cosine", "onecycle", "plateau", "none"]
Precision = Literal["auto", "32", "16-mixed", "bf16-mixed"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
Sampling = Literal["natural", "enriched"]
SplitMethod = Literal["patient", "official"]
Selection = Literal["best", "last"]  # which epoch's weights best.ckpt keeps
Runtime = Literal["torch", "onnxruntime"]  # onnxruntime needs an export made with --onnx
CamMethod = Literal["gradcam", "gradcam++", "hirescam", "layercam", "eigencam"]  # pytorch-grad-cam

#: Keys that say how to run on this machine, not what to compute: they never enter a
#: stage key, so moving a run to a GPU does not redo finished work.
MACHINE_KEYS = frozenset({"device", "batch_size", "workers", "num_workers"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_S = TypeVar("_S", bound=BaseModel)


class DataConfig(_Section):
    """What `cxrlab prepare` selects and caches."""

    data_root: str | None = None  # NIH layout folder; None in `run` means synthetic data
    pathologies: list[str] = list(DEFAULT_TARGETS)  # 1-14 targets, in column order
    n_images: int | None = None  # None = every image that passes the filters
    one_per_patient: bool = False  # one image per chosen patient instead of all of them
    sampling: Sampling = "natural"  # enriched guarantees min_positives
    min_positives: int = 50  # per target, for sampling=enriched
    views: list[str] | None = None  # e.g. [PA, AP]; None keeps both
    age_min: int | None = None
    age_max: int | None = None
    split: SplitMethod = "patient"  # official: NIH test list + carved val
    val: float = Field(0.15, gt=0, lt=1)  # share of patients in validation
    test: float = Field(0.15, gt=0, lt=1)  # share of patients in test (split=patient only)
    image_size: int = Field(224, ge=32, le=1024)  # cached square size in pixels
    drop_missing: bool = False  # drop listed-but-missing images instead of failing
    workers: int = Field(1, ge=1)  # processes that decode images for the cache
    seed: int = 0

    @field_validator("pathologies", mode="before")
    @classmethod
    def _targets(cls, value: Any) -> list[str]:
        return parse_targets(value)


class ModelConfig(_Section):
    """Which network, how it starts."""

    name: str = "simple_cnn"  # simple_cnn or any timm model name
    pretrained: bool = False  # ImageNet weights (hub, --weights file, or bundled lite0)
    weights: str | None = None  # .pth/.safetensors file with backbone weights
    drop_rate: float = Field(0.2, ge=0, lt=1)  # dropout before the classifier
    kwargs: dict[str, Any] = {}  # extra constructor arguments (SimpleCNN: base_width, depth)


class OptimConfig(_Section):
    name: Optimizer = "adamw"
    lr: float = Field(1e-3, gt=0)  # head / whole-model learning rate
    weight_decay: float = Field(1e-4, ge=0)
    # Backbone LR = lr * this (the head keeps lr); not for linear-probe, which trains no
    # backbone. 0.3 (with a 1e-3 head) lost to one LR in cross-validation (benchmarks.md).
    backbone_lr_mult: float = Field(1.0, gt=0, le=1)
    # Layer-wise LR decay (timm's param_groups_layer_decay): the head keeps lr, each block
    # below it lr * layer_decay**depth. None = off; replaces backbone_lr_mult when set.
    # 0.8 and 0.65 with a 1e-3 head lost to one LR in cross-validation (benchmarks.md).
    layer_decay: float | None = Field(None, gt=0, lt=1)


class ScheduleConfig(_Section):
    name: Schedule = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)  # linear warm-up before cosine decay
    min_lr_ratio: float = Field(0.01, ge=0, le=1)  # cosine floor as a share of lr
    plateau_factor: float = Field(0.3, gt=0, lt=1)
    plateau_patience: int = Field(2, ge=0)


class AugmentConfig(_Section):
    """Applied on the batch, after the cache; validation and test use none."""

    rotation_deg: float = Field(10.0, ge=0, le=45)  # small rotations, +-degrees
    hflip: bool = False  # off: a flip moves the heart to the wrong side
    scale_min: float = Field(0.9, gt=0, le=1)  # random resized crop: zoom range
    scale_max: float = Field(1.1, ge=1, le=2)
    translate: float = Field(0.05, ge=0, le=0.3)  # shift as a share of the image side
    brightness: float = Field(0.1, ge=0, le=1)  # +- additive, in normalised units
    contrast: float = Field(0.1, ge=0, le=1)  # +- multiplicative
    # mixup: each image blended with another of the batch (weight ~ Beta(a, a)), labels alike;
    # 0 = off
    mixup: float = Field(0.0, ge=0, le=10)


class TrainConfig(_Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    strategy: Strategy = "full"
    freeze_epochs: int = Field(2, ge=0)  # head-only epochs for freeze-then-unfreeze
    patience: int = Field(5, ge=1)  # early stopping on val macro AUROC (select=best only)
    # The weights best.ckpt keeps (and evaluate, analyze, explain, predict use): best = the
    # epoch with the highest val macro AUROC, with early stopping; last = the final epoch,
    # no early stopping (a small val split's AUROC is too noisy to pick an epoch by).
    select: Selection = "best"
    # An exponential moving average of the weights (timm's ModelEmaV3), updated every step:
    # validation and the checkpoints' inference weights are the average's.
    ema: bool = False
    ema_decay: float = Field(0.99, gt=0, lt=1)  # per optimiser step, warmed up from 0
    pos_weight: bool = False  # BCE pos_weight = neg/pos from train prevalence
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # training targets y(1-e) + e/2
    precision: Precision = "auto"  # auto: mixed on CUDA
    accelerator: Accelerator = "auto"
    devices: int | str = "auto"  # number of devices, or auto
    num_nodes: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)  # DataLoader workers; the memmap cache rarely needs any
    seed: int = 0
    deterministic: bool = True  # same seed -> same metrics on CPU
    limit_batches: float | int | None = None  # debugging: cap batches per epoch


#: Defaults for a network that starts from pretrained weights (`model.pretrained` or
#: `model.weights`), beneath whatever the config and flags give. Chosen by patient-grouped
#: 5-fold cross-validation on 1,108 real NIH images (bench/bench_cv.py, docs/benchmarks.md):
#: one lower LR for the whole network, no warm-up, a fixed 8-epoch cosine schedule and the
#: final weights, not an epoch picked on a noisy ~130-image val split. (Measured and not
#: kept: a 3x faster head with warm-up and a weight EMA, an EMA alone, TTA; and in two grids of
#: 30 recipes, other LRs, layer-wise decay, augmentation strength, 160-288 px, batch 16, dropout,
#: weight decay, pos_weight, 4 or 16 epochs, mixup, label smoothing, stochastic depth, a
#: head-first start, a 3x faster head and the other ten findings as extra outputs: none was
#: shown better.) From scratch the section defaults above apply.
TRANSFER_RECIPE: dict[str, dict[str, Any]] = {
    "optim": {"lr": 3e-4},
    "schedule": {"warmup_epochs": 0.0},
    "train": {"epochs": 8, "select": "last"},
}


class ExperimentConfig(_Section):
    """One model's training run: what `cxrlab train` resolves and saves as config.yaml.

    A pretrained start takes `TRANSFER_RECIPE` for every key the input leaves out.
    """

    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="before")
    @classmethod
    def _recipe(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not _starts_pretrained(data.get("model")):
            return data
        out = dict(data)
        for section, values in TRANSFER_RECIPE.items():
            given = data.get(section)
            if isinstance(given, BaseModel):  # a section object: the keys it was given win
                out[section] = type(given).model_validate(
                    {**values, **given.model_dump(exclude_unset=True)}
                )
            elif isinstance(given, dict) or given is None:
                out[section] = {**values, **(given or {})}
        return out

    @property
    def transfer(self) -> bool:
        """Whether the network starts from pretrained weights (the transfer recipe)."""
        return bool(self.model.pretrained or self.model.weights)


def _starts_pretrained(model: Any) -> bool:
    if isinstance(model, BaseModel):
        model = model.model_dump()
    return isinstance(model, dict) and bool(model.get("pretrained") or model.get("weights"))


def recipe_default(dotted: str, *, transfer: bool) -> Any:
    """The default of a dotted `ExperimentConfig` key from scratch or with a pretrained start."""
    section, _, key = dotted.partition(".")
    if transfer and key in TRANSFER_RECIPE.get(section, {}):
        return TRANSFER_RECIPE[section][key]
    return experiment_default(dotted)


#: The flat option names of `cxrlab train` (its flags) and `cxrlab.train` (its keyword
#: arguments), each with the `ExperimentConfig` key it sets. One table, so the two agree.
TRAIN_OPTIONS: dict[str, str] = {
    "model": "model.name",
    "pretrained": "model.pretrained",
    "weights": "model.weights",
    "strategy": "train.strategy",
    "freeze_epochs": "train.freeze_epochs",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "optimizer": "optim.name",
    "schedule": "schedule.name",
    "patience": "train.patience",
    "select": "train.select",
    "ema": "train.ema",
    "backbone_lr_mult": "optim.backbone_lr_mult",
    "pos_weight": "train.pos_weight",
    "seed": "train.seed",
    "precision": "train.precision",
    "accelerator": "train.accelerator",
    "devices": "train.devices",
    "num_nodes": "train.num_nodes",
    "num_workers": "train.num_workers",
    "hflip": "augment.hflip",
    "rotation": "augment.rotation_deg",
}


def experiment_default(dotted: str) -> Any:
    """The `ExperimentConfig` default of a dotted key (`"optim.lr"` -> 1e-3)."""
    section, _, key = dotted.partition(".")
    return getattr(getattr(ExperimentConfig(), section), key)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def build(schema: type[BaseModel], data: dict[str, Any], *, source: str = "config"):
    """Validate `data` against `schema`, turning pydantic errors into one ConfigError."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(schema, exc, source)) from None


def _describe(schema: type[BaseModel], exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        where = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            valid = ", ".join(_fields_at(schema, loc[:-1]))
            lines.append(f"unknown key {where!r} in {source}; valid keys here: {valid}")
        else:
            lines.append(f"{where} in {source}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def _fields_at(schema: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = schema
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            break
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}))


def section_from(
    schema: type[_S], values: dict[str, Any], source: str, exclude: tuple[str, ...] = ()
) -> _S:
    """`schema` built from those of `values` named like its fields (others ignored): what
    the CLI commands and the Python API do with their arguments. Tuples become lists."""
    names = set(schema.model_fields) - set(exclude)
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if k in names}
    return build(schema, fields, source=source)


def with_overrides(section: _S, overrides: dict[str, Any]) -> _S:
    """`section` with some fields replaced, validated (a wrong name or value: ConfigError)."""
    if not overrides:
        return section
    data = {**section.model_dump(), **overrides}
    return build(type(section), data, source=f"{type(section).__name__} options")


def merge_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply dotted overrides (`{"optim.lr": 3e-4}`) from CLI flags onto a config mapping.

    None values mean "flag not given" and leave the file's value in place.
    """
    out = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        out[section][key] = value
    return out


def to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# --- The whole study: what `cxrlab run CONFIG` reads ---------------------------------------


class SyntheticConfig(_Section):
    """Built-in synthetic NIH-layout data, used when `data.data_root` is not given."""

    patients: int = Field(300, ge=10)  # ~2.5 images per patient
    seed: int = 0
    image_size: int = Field(256, ge=64, le=1024)  # PNG side; the cache resizes it


class DownloadConfig(_Section):
    """`cxrlab download nih`: which files, from where, and how patiently."""

    base_url: str | None = None  # a mirror with the NIH file names; None: links in nih.yaml
    sources: str | None = None  # a sources file like the bundled nih.yaml (e.g. filled in)
    parts: str | None = None  # archives by number, e.g. "1-3" or "1,4"; None: all of them
    images: int | None = Field(None, ge=1)  # the fewest leading archives holding N images
    keep_archives: bool = False  # False deletes each .tar.gz once extracted and checked
    retries: int = Field(5, ge=0)  # failed tries in a row per file before giving up
    retry_wait: float = Field(2.0, ge=0)  # seconds before the first retry; doubles after
    timeout: float = Field(60.0, gt=0)  # seconds without data before a try has failed
    workers: int = Field(2, ge=1)  # threads decoding every extracted PNG to check it


class EvaluateConfig(_Section):
    """`cxrlab evaluate` and the study's evaluate stage."""

    split: EvalSplit = "test"  # val evaluates on the images its thresholds were chosen on
    threshold: ThresholdRule = "max_f1"  # chosen on val
    target_sensitivity: float = Field(0.90, gt=0, le=1)  # for fixed_sensitivity
    # Resamples over patients for every CI and paired test. 2000: on the demo, every
    # Holm-adjusted verdict was the same over 30 bootstrap seeds (at 300 four of six flipped),
    # and the smallest p it can show, 2/(B+1) ~ 0.001, stays below Holm's alpha/K for K <= 50.
    bootstrap: int = Field(2000, ge=10)
    seed: int = 0
    temperature: bool = False  # temperature scaling fitted on val
    # Test-time augmentation: val, test and external probabilities are the mean over five
    # small zooms/shifts (models/inference.TTA_VIEWS, never a flip); thresholds.json stays
    # on single-view outputs, which explain, predict and serve compute.
    tta: bool = False
    drop_missing: bool = False  # external sets: leave out listed-but-missing images
    figures: bool = True
    age_edges: list[int] = [40, 60, 80]  # subgroup age bands
    device: Device = "auto"
    batch_size: int = Field(64, ge=1)  # images per forward pass


class CrossvalConfig(_Section):
    """`cxrlab crossval`: patient-grouped k-fold cross-validation of one training config."""

    folds: int = Field(5, ge=2, le=20)  # every image is tested once, by a model not trained on it
    val: float = Field(0.15, gt=0, lt=1)  # share of each training fold's patients for val
    seed: int = 0  # fold assignment and val carving (not the training seed)
    bootstrap: int = Field(2000, ge=10)  # patient resamples for the pooled CIs and pairs
    device: Device = "auto"  # where each fold's test images are predicted
    batch_size: int = Field(64, ge=1)
    # False: each fold's checkpoints are deleted once its test images are predicted (its
    # config, metrics and predictions stay); True keeps them (tens of MB a fold)
    keep_models: bool = True


class AnalyzeConfig(_Section):
    """`cxrlab analyze` and the study's analyze stage."""

    enabled: bool = True
    model: str | None = None  # which trained model; None = the last one listed
    layers: list[str] = ["penultimate"]  # see `cxrlab analyze --list-layers`
    split: Split = "test"
    scaling: Scaling = "none"  # before PCA; see docs
    k: int | None = Field(None, ge=2)  # None: chosen over k_min..k_max by silhouette
    k_min: int = Field(2, ge=2)
    k_max: int = Field(8, ge=2)
    n_components: int = Field(50, ge=2)  # PCA components K-Means runs on
    seed: int | None = None  # K-Means and subsampling; None: the data seed (CLI: 0)
    device: Device = "auto"
    batch_size: int = Field(64, ge=1)


class ExplainConfig(_Section):
    """`cxrlab explain` and the study's explain stage."""

    enabled: bool = True
    models: list[str] | None = None  # None = every trained model
    split: Split = "test"
    per_group: int = Field(4, ge=0)  # gallery images per pathology and TP/FP/FN
    tolerance: float = Field(0.0, ge=0)  # pointing game: grow each box by this many px
    cam_threshold: float = Field(0.5, ge=0, le=1)  # IoU: map region >= this share of peak
    # Deletion/insertion curves (explain.faithfulness) of the maps of this many true positives
    # per target, beside random maps: does the map show what drives the call? 4 per target
    # gave the demo's verdict over all targets ~14 patients a model; each pair costs 32 forward
    # images (~0.15 s at 112 px on 2 CPU cores). 0 skips them.
    faithfulness: int = Field(4, ge=0)
    method: CamMethod = "gradcam"  # with the reference and layer: by bench/bench_explain.py
    layer: str = "auto"  # auto: deepest stages >= 14x14 and >= 7x7, fused; or names joined by +
    # Maps of the change from a reference film, the layer's mean activation over the training
    # images without any target finding, not from zero: the default CAM met the localization
    # targets on two demo trainings where the plain ones did not (docs/benchmarks.md, issue
    # 16). Only for gradcam, hirescam and layercam; other methods run without it, with a note.
    reference: bool = True
    device: Device = "auto"
    batch_size: int = Field(16, ge=1)  # images per Grad-CAM forward/backward pass


class PredictConfig(_Section):
    """`cxrlab predict` and the model that `cxrlab serve` runs."""

    out: str = "cxrlab_predictions.csv"  # the CSV predict writes (one row per input)
    runtime: Runtime = "torch"
    device: Device = "auto"
    batch_size: int = Field(16, ge=1)  # images per forward pass
    threads: int | None = Field(None, ge=1)  # CPU threads per forward pass; None: library default
    default_thresholds: bool = False  # no validation thresholds: call findings at 0.5 (recorded)


class ServeConfig(_Section):
    """`cxrlab serve`: where it listens and how much it accepts before saying no."""

    host: str = "127.0.0.1"  # loopback only unless asked: the service has no TLS
    port: int = Field(8000, ge=1, le=65535)
    max_upload_bytes: int = Field(32 * 2**20, ge=1)  # whole request body; larger: 413
    max_files: int = Field(16, ge=1)  # images per request
    workers: int = Field(1, ge=1)  # inference threads
    queue: int = Field(8, ge=0)  # requests waiting for a worker; past that: 503 + Retry-After
    retry_after: int = Field(1, ge=1)  # seconds, sent in the 503's Retry-After header


class ModelEntry(ExperimentConfig):
    """One model of a study: an experiment config (merged over `defaults`) plus its name."""

    name: str | None = None  # folder under models/; default: model.name


class StudyConfig(_Section):
    """`cxrlab run CONFIG`: prepare → train each model → evaluate → compare → analyze →
    explain → report, in one run directory."""

    data: DataConfig = DataConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    defaults: dict[str, Any] = {}  # experiment settings shared by every model entry
    models: list[dict[str, Any]] = [{"model": {"name": "simple_cnn"}}]
    evaluate: EvaluateConfig = EvaluateConfig()
    analyze: AnalyzeConfig = AnalyzeConfig()
    explain: ExplainConfig = ExplainConfig()

    def model_entries(self) -> list[ModelEntry]:
        """Each model entry merged over `defaults` and validated (names unique)."""
        entries, seen = [], set()
        for i, raw in enumerate(self.models):
            merged = deep_merge(self.defaults, raw)
            entry = build(ModelEntry, merged, source=f"models[{i}]")
            entry.name = entry.name or entry.model.name
            if entry.name in seen:
                raise ConfigError(f"models[{i}]: name {entry.name!r} is used twice; set `name:`")
            seen.add(entry.name)
            entries.append(entry)
        if not entries:
            raise ConfigError("the study lists no models; add at least one under `models:`")
        return entries


def stage_key_fields(section: BaseModel) -> dict[str, Any]:
    """A section's values that decide its results (machine settings left out)."""
    return section.model_dump(mode="json", exclude=set(MACHINE_KEYS))


def experiment_of(entry: ModelEntry) -> ExperimentConfig:
    return ExperimentConfig.model_validate(entry.model_dump(exclude={"name"}))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, recursing into mappings (lists and scalars replace)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read a study YAML; `overrides` (dotted keys) come from CLI flags.

    An empty file is refused: it would silently launch the whole default study."""
    raw = load_yaml(path)
    if not raw:
        raise ConfigError(
            f"{path} is empty (no sections); a study names at least its models or data, "
            "e.g. start from src/cxrlab/configs/demo.yaml"
        )
    data = merge_overrides(raw, overrides or {})
    return build(StudyConfig, data, source=str(path))

"""The model card: everything a prediction needs besides the weights, and what the model is for.

One pydantic model serves three readers: `model.json` in an export folder, the response of
`GET /v1/model`, and the predictor that applies the thresholds. A card is built from a run
directory (`card_from_run`) or read back from `model.json` (`read_card`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cxrlab.errors import ModelError
from cxrlab.evaluate.thresholds import FALLBACK, load_thresholds
from cxrlab.rundir import ModelDir, RunDir
from cxrlab.runinfo import read_json

FORMAT_VERSION = 1

INTENDED_USE = (
    "Research use only; not for clinical use. This model is for methods research on "
    "multi-label chest X-ray classification. It is not a medical device, has not been "
    "validated prospectively, and must not be used to diagnose, triage or treat patients. "
    "At most it could support, never replace, a radiologist's reading."
)

#: `threshold_rule` of a card whose findings are called at 0.5 because no validation
#: thresholds exist (only with an explicit flag; predictions record it).
DEFAULT_RULE = "default_0.5"

PREPROCESSING = (
    "decode to one grey channel (8-bit values kept; wider sources min-max scaled; DICOM after "
    "modality LUT, VOI LUT/window and MONOCHROME1 inversion), pad to a centred square with "
    "black, area (box) resize to image_size, x / 255, then (x - mean) / std"
)


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Threshold(_Card):
    """One class's decision threshold: positive when probability >= threshold."""

    threshold: float = Field(ge=0, le=1)
    method: str  # max_f1 | youden | fixed_sensitivity | default_0.5
    val_value: float | None = None  # the rule's criterion on validation (F1, J, sensitivity)
    target_sensitivity: float | None = None
    note: str | None = None


class Provenance(_Card):
    """Where the model's training data came from."""

    dataset: str  # "NIH ChestX-ray14", "synthetic" or "unknown"
    data_root: str | None = None
    split_hash: str | None = None
    n_images: dict[str, int] = {}  # per split: train / val / test
    seed: int | None = None


class ModelCard(_Card):
    """`model.json`: the trained model's contract with whoever runs it."""

    format_version: int = FORMAT_VERSION
    name: str
    version: str = Field(description="first 16 hex digits of the weights' SHA-256")
    architecture: str
    config: dict[str, Any] = Field(description="resolved experiment config (rebuilds the net)")
    targets: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    preprocessing: str = PREPROCESSING
    thresholds: dict[str, Threshold]
    threshold_rule: str
    thresholds_from: Literal["validation", "default"]
    temperature: float | None = Field(None, description="fitted on validation; None if not")
    test_metrics: dict[str, Any] | None = Field(
        None, description="test-split metrics with patient-bootstrap 95% CIs (cxrlab evaluate)"
    )
    provenance: Provenance
    versions: dict[str, str] = {}
    epoch: int | None = None
    intended_use: str = INTENDED_USE


def weights_version(weights_bytes: bytes) -> str:
    """The card's `version`: a hash of the serialised weights (same for run and export)."""
    return hashlib.sha256(weights_bytes).hexdigest()[:16]


def card_from_run(
    folder: ModelDir, info: dict[str, Any], version: str, *, default_thresholds: bool = False
) -> ModelCard:
    """The card of RUN_DIR/models/NAME, from its checkpoint `info` and the run's files."""
    run = RunDir(folder.path.parent.parent)
    thresholds, rule, source = _thresholds(folder, run, list(info["targets"]), default_thresholds)
    test = _test_metrics(run, folder.name)
    return ModelCard(
        name=folder.name,
        version=version,
        architecture=info["config"]["model"]["name"],
        config=info["config"],
        targets=list(info["targets"]),
        image_size=int(info["image_size"]),
        mean=[float(v) for v in info["mean"]],
        std=[float(v) for v in info["std"]],
        thresholds=thresholds,
        threshold_rule=rule,
        thresholds_from=source,
        temperature=(test or {}).pop("temperature", None),
        test_metrics=test,
        provenance=_provenance(run, info),
        versions={k: str(v) for k, v in (info.get("versions") or {}).items()},
        epoch=info.get("epoch"),
    )


def _thresholds(folder: ModelDir, run: RunDir, targets: list[str], default: bool):
    if folder.thresholds.is_file():
        chosen = load_thresholds(folder.thresholds, targets)
        rules = sorted({entry["method"] for entry in chosen.values()})
        return {t: Threshold(**chosen[t]) for t in targets}, "+".join(rules), "validation"
    if not default:
        raise ModelError(
            f"model {folder.name!r} has no validation thresholds ({folder.thresholds} is "
            f"missing); run `cxrlab evaluate {run.root} --model {folder.name}` first, or pass "
            f"--default-thresholds to call findings at {FALLBACK} (the output then says so)"
        )
    fixed = Threshold(threshold=FALLBACK, method=DEFAULT_RULE, note="no validation thresholds")
    return {t: fixed for t in targets}, DEFAULT_RULE, "default"


def _test_metrics(run: RunDir, name: str) -> dict[str, Any] | None:
    """Headline test metrics with CIs from reports/NAME/test/metrics.json, if evaluated."""
    path = run.evaluation(name, "test").metrics
    if not path.is_file():
        return None
    result = read_json(path)
    ci, metrics = result.get("ci") or {}, result.get("metrics") or {}
    per_class = {
        target: {
            "prevalence": (metrics.get("per_class") or {}).get(target, {}).get("prevalence"),
            **{k: _estimate(v) for k, v in values.items()},
        }
        for target, values in (ci.get("per_class") or {}).items()
    }
    return {
        "split": "test",
        "n_images": result.get("n_images"),
        "n_patients": result.get("n_patients"),
        "ci_level": ci.get("level"),
        "ci_unit": ci.get("unit"),
        "per_class": per_class,
        "macro": {k: _estimate(v) for k, v in (ci.get("macro") or {}).items()},
        "temperature": result.get("temperature"),
    }


def _estimate(entry: dict) -> dict:
    return {k: entry.get(k) for k in ("estimate", "low", "high")}


def _provenance(run: RunDir, info: dict[str, Any]) -> Provenance:
    import yaml

    from cxrlab.report.card import data_kind

    prepare = read_json(run.prepare_json) if run.prepare_json.is_file() else {}
    study = yaml.safe_load(run.study_yaml.read_text()) if run.study_yaml.is_file() else None
    kind = data_kind({"provenance": {"study": study}, "cohort": {"prepare": prepare}})
    counts: dict[str, int] = {}
    if run.cohort.is_file():
        split = pd.read_csv(run.cohort, usecols=["split"])["split"]
        counts = {str(k): int(v) for k, v in split.value_counts().sort_index().items()}
    return Provenance(
        dataset=kind,
        data_root=prepare.get("data_root"),
        split_hash=info.get("split_hash"),
        n_images=counts,
        seed=info.get("seed"),
    )


def read_card(path: Path) -> ModelCard:
    """`model.json` as a ModelCard; errors name the file and the field."""
    try:
        return ModelCard.model_validate(read_json(path))
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            fields = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5]
            )
            raise ModelError(f"{path} is not a valid cxrlab model card: {fields}") from None
        raise ModelError(f"cannot read model card {path}: {exc}") from None

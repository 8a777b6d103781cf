"""The run directory: every path under RUN_DIR is named here and nowhere else.

A run directory is the contract between stages (docs/ARCHITECTURE.md):

    RUN_DIR/
      data/        cohort.csv, split_summary.json, prepare.json, boxes.csv, cache/
      models/<name>/   best.ckpt, last.ckpt, config.yaml, run.json, metrics.csv, thresholds.json,
                       cam_reference.safetensors
      reports/<name>/<split>/   predictions.csv/.json, metrics.json, tables, figures/
      reports/<name>/explain/   Grad-CAM overlays, localization.json
      reports/compare/<split>/  comparison.json, figures/
      analysis/<name>/          analysis.json, summary.md, features, figures/
      figures/  study.yaml  stages.json  versions.json  report.html  synthetic-data/

This module only names paths and finds trained models; it reads nothing but directory
listings, so every layer (data, models, workflows, report, CLI) may import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cxrlab.errors import ConfigError, DataError, ModelError

# File names, each typed once. Other modules use the RunDir / ModelDir / SplitDir properties.
COHORT_FILE = "cohort.csv"
SUMMARY_FILE = "split_summary.json"
PREPARE_FILE = "prepare.json"
BOXES_FILE = "boxes.csv"
BEST_CKPT = "best.ckpt"
LAST_CKPT = "last.ckpt"
CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
METRICS_CSV = "metrics.csv"
THRESHOLDS_FILE = "thresholds.json"
CAM_REFERENCE_FILE = "cam_reference.safetensors"  # models/<name>/ and export folders
PREDICTIONS_FILE = "predictions.csv"
PREDICTIONS_META = "predictions.json"
METRICS_FILE = "metrics.json"
LOCK_FILE = ".cxrlab.lock"  # held by the process writing the folder (cxrlab.locking)
COMPARISON_FILE = "comparison.json"  # reports/compare/<split>/
ANALYSIS_FILE = "analysis.json"  # analysis/<name>/
ANALYSIS_SUMMARY = "summary.md"  # analysis/<name>/
EXPLAIN_INDEX = "explain.json"  # reports/<name>/explain/
LOCALIZATION_FILE = "localization.json"  # reports/<name>/explain/
COMPARE = "compare"  # reports/compare/<split>: the model comparison, not a model
EXPLAIN = "explain"  # reports/<name>/explain: Grad-CAM, not a split
CROSSVAL_FILE = "crossval.json"  # crossval/<name>/
PAIRED_PREFIX = "paired_"  # crossval/<name>/paired_<other>.json: name - other
OOF_FILE = "oof_predictions.csv"  # crossval/<name>/: every image's out-of-fold probabilities


def check_folder_name(name: str) -> str:
    """`name` if it can be a folder under models/ (no separators, not '.' or '..')."""
    if not name or name in (".", "..") or any(c in name for c in "/\\") or name == COMPARE:
        raise ConfigError(
            f"model name {name!r} must be a plain folder name (no '/', not '.', not {COMPARE!r})"
        )
    return name


@dataclass(frozen=True)
class SplitDir:
    """RUN_DIR/reports/<name>/<split> (or an external set's folder): one evaluation."""

    path: Path

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS_FILE

    @property
    def predictions_meta(self) -> Path:
        return self.path / PREDICTIONS_META

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def cache(self) -> Path:
        """Image cache of an external set (reports/<name>/external-<dir>/cache)."""
        return self.path / "cache"


@dataclass(frozen=True)
class ModelDir:
    """RUN_DIR/models/<name>: one trained model's files."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def best_ckpt(self) -> Path:
        return self.path / BEST_CKPT

    @property
    def last_ckpt(self) -> Path:
        return self.path / LAST_CKPT

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def run_json(self) -> Path:
        return self.path / RUN_FILE

    @property
    def metrics_csv(self) -> Path:
        return self.path / METRICS_CSV

    @property
    def thresholds(self) -> Path:
        return self.path / THRESHOLDS_FILE

    @property
    def cam_reference(self) -> Path:
        """The CAM's reference film (cxrlab.explain.reference), made on first use."""
        return self.path / CAM_REFERENCE_FILE

    @property
    def lock(self) -> Path:
        """models/.<name>.cxrlab.lock, held by the `train` writing this folder. Beside the
        folder, not in it: Lightning warns about a non-empty checkpoint folder."""
        return self.path.parent / f".{self.path.name}{LOCK_FILE}"

    #: Files whose presence means the folder has something to resume (config.yaml, run.json
    #: and metrics.csv are written when fitting starts, before the first checkpoint).
    TRAINED = (BEST_CKPT, LAST_CKPT)
    #: Everything a training run owns (thresholds from an older run are stale).
    ARTIFACTS = (*TRAINED, METRICS_CSV, CONFIG_FILE, RUN_FILE, THRESHOLDS_FILE)

    def is_trained(self) -> bool:
        return self.best_ckpt.is_file()


class RunDir:
    """Paths of one run directory. Cheap to build; touches the disk only when asked."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    # ---- data/ (written by prepare) ---------------------------------------------------
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def cohort(self) -> Path:
        return self.data / COHORT_FILE

    @property
    def split_summary(self) -> Path:
        return self.data / SUMMARY_FILE

    @property
    def prepare_json(self) -> Path:
        return self.data / PREPARE_FILE

    @property
    def boxes(self) -> Path:
        return self.data / BOXES_FILE

    @property
    def cache(self) -> Path:
        return self.data / "cache"

    @property
    def data_lock(self) -> Path:
        """Held by the `prepare` writing data/."""
        return self.data / LOCK_FILE

    @property
    def lock(self) -> Path:
        """Held by the `cxrlab run` working in this directory."""
        return self.root / LOCK_FILE

    def require_prepared(self) -> None:
        """`DataError` with the command to run unless data/cohort.csv exists."""
        if not self.root.is_dir():
            raise DataError(f"run directory {self.root} does not exist")
        if not self.cohort.is_file():
            raise DataError(
                f"{self.cohort} not found; run `cxrlab prepare --data-root DIR --out "
                f"{self.root}` first"
            )

    # ---- models/ (written by train) ---------------------------------------------------
    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, name: str) -> ModelDir:
        return ModelDir(self.models / check_folder_name(name))

    def trained_models(self) -> list[str]:
        """Names of the model folders that hold a best checkpoint, sorted."""
        if not self.models.is_dir():
            return []
        return sorted(p.name for p in self.models.iterdir() if ModelDir(p).is_trained())

    def model_locks(self) -> dict[str, Path]:
        """{model name: its lock file} for every model folder that was ever trained here."""
        if not self.models.is_dir():
            return {}
        suffix = LOCK_FILE
        return {
            p.name[1 : -len(suffix)]: p
            for p in sorted(self.models.glob(f".*{suffix}"))
            if p.is_file() and len(p.name) > len(suffix) + 1
        }

    def trained_model(self, name: str) -> ModelDir:
        """models/<name>, checked to hold best.ckpt; the error lists the trained models."""
        mdir = self.model(name)
        if mdir.is_trained():
            return mdir
        if not self.root.is_dir():
            raise ModelError(f"run directory {self.root} does not exist")
        found = ", ".join(self.trained_models()) or "none"
        raise ModelError(
            f"no trained model {name!r} in {self.models} (trained: {found});"
            f" run `cxrlab train {self.root} --model ... --name {name}` first"
        )

    # ---- reports/ (evaluate, compare, explain) ------------------------------------------
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def evaluation(self, name: str, split: str) -> SplitDir:
        return SplitDir(self.reports / check_folder_name(name) / split)

    def external(self, name: str, data_root: str | os.PathLike) -> SplitDir:
        folder = f"external-{Path(data_root).resolve().name}"
        return SplitDir(self.reports / check_folder_name(name) / folder)

    def evaluated_models(self) -> list[str]:
        if not self.reports.is_dir():
            return []
        return sorted(p.name for p in self.reports.iterdir() if p.is_dir() and p.name != COMPARE)

    def comparison(self, split: str) -> Path:
        return self.reports / COMPARE / split

    def explanation(self, name: str) -> Path:
        return self.reports / check_folder_name(name) / EXPLAIN

    # ---- crossval/ (written by crossval) ------------------------------------------------
    def crossval(self, name: str) -> Path:
        """crossval/<name>: fold<f>/ (a run directory each), fold<f>.npz, the summary."""
        return self.crossval_root / check_folder_name(name)

    @property
    def crossval_root(self) -> Path:
        return self.root / "crossval"

    def crossval_paired(self, name: str, other: str) -> Path:
        """crossval/<name>/paired_<other>.json: `crossval --against`'s name - other."""
        return self.crossval(name) / f"{PAIRED_PREFIX}{check_folder_name(other)}.json"

    def crossval_pairs(self, name: str) -> list[Path]:
        """Every saved crossval_paired(name, other), sorted."""
        return sorted(self.crossval(name).glob(f"{PAIRED_PREFIX}*.json"))

    def crossval_lock(self, name: str) -> Path:
        """Held by the `crossval` writing crossval/<name> (beside it: --overwrite removes it)."""
        return self.crossval_root / f".{check_folder_name(name)}{LOCK_FILE}"

    # ---- analysis/, study files -------------------------------------------------------
    def analysis(self, name: str) -> Path:
        return self.root / "analysis" / check_folder_name(name)

    @property
    def analysis_root(self) -> Path:
        return self.root / "analysis"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def study_yaml(self) -> Path:
        return self.root / "study.yaml"

    @property
    def stages(self) -> Path:
        return self.root / "stages.json"

    @property
    def versions(self) -> Path:
        return self.root / "versions.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def synthetic_data(self) -> Path:
        return self.root / "synthetic-data"


def as_run_dir(run: str | os.PathLike | RunDir) -> RunDir:
    return run if isinstance(run, RunDir) else RunDir(run)

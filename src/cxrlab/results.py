"""What the API's stage functions return: small objects that read a stage's files back.

`Run` (a prepared run directory: cohort, split summary, the leakage check), `Training`,
`Evaluation`, `Comparison`, `CrossValidation`, `Analysis`, `Explanation`. Each holds paths
and reads lazily; tables come back as DataFrames and figures as matplotlib Figures of the
PNGs the stages drew.
Public through `cxrlab` (see `cxrlab.api`); importing this module loads no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cxrlab.config import EvalSplit, EvaluateConfig
from cxrlab.rundir import (
    ANALYSIS_FILE,
    ANALYSIS_SUMMARY,
    COMPARISON_FILE,
    CROSSVAL_FILE,
    LOCALIZATION_FILE,
    OOF_FILE,
    RunDir,
    SplitDir,
)

__all__ = [
    "Run", "Training", "Evaluation", "Comparison", "CrossValidation", "Analysis", "Explanation",
]  # fmt: skip

_EVAL = EvaluateConfig()  # the default split Run.evaluation / Run.comparison read


def _png_figures(folder: Path, pattern: str = "*.png") -> dict[str, Path]:
    """{stem: path} of the PNGs in `folder` (sorted; empty when it does not exist)."""
    return {p.stem: p for p in sorted(folder.glob(pattern))} if folder.is_dir() else {}


def _show_png(path: Path, width: float = 10.0):
    """A matplotlib Figure showing a PNG the stage wrote (no pyplot state is touched).

    A notebook displays it as that PNG, byte for byte (`_repr_png_`), without redrawing."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    class StageFigure(Figure):
        def _repr_png_(self) -> bytes:
            return png

    png = Path(path).read_bytes()
    image = imread(path)  # (H, W, 3|4)
    height, wide = image.shape[:2]
    fig = StageFigure(figsize=(width, width * height / wide))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image)
    ax.set_axis_off()
    return fig


class _Figures:
    """Mixin: `.figures` ({name: PNG path}) and `.figure(name)` (a matplotlib Figure)."""

    @property
    def figures(self) -> dict[str, Path]:
        raise NotImplementedError

    def figure(self, name: str):
        """The figure `name` (a key of `.figures`) as a matplotlib Figure."""
        from cxrlab.errors import CxrError

        found = self.figures
        if name not in found:
            raise CxrError(f"no figure {name!r} here; available: {', '.join(found) or 'none'}")
        return _show_png(found[name])


def _read_json(path: Path) -> dict:
    from cxrlab.runinfo import read_json

    return read_json(path)


@dataclass(frozen=True)
class Run:
    """A prepared run directory. Every stage after prepare takes one (or its path)."""

    path: Path

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    @property
    def paths(self) -> RunDir:
        """Every file of the run directory, by name (`cxrlab.rundir.RunDir`)."""
        return RunDir(self.path)

    @property
    def cohort(self):
        """data/cohort.csv: one row per image (id, patient, split, 0/1 per target, metadata)."""
        from cxrlab.data.rundata import read_cohort

        return read_cohort(self.paths.cohort)

    @property
    def summary(self) -> dict:
        """data/split_summary.json: counts and prevalence per split, patient overlap, hash."""
        return _read_json(self.paths.split_summary)

    @property
    def targets(self) -> list[str]:
        return list(self.summary["targets"])

    @property
    def patient_overlap(self) -> int:
        """Patients found in more than one split: the leakage check (prepare fails unless 0)."""
        return int(self.summary["patient_overlap"])

    @property
    def splits(self):
        """One row per split: images, patients and each target's prevalence (a DataFrame)."""
        import pandas as pd

        rows = {
            name: {"images": part["images"], "patients": part["patients"], **part["prevalence"]}
            for name, part in self.summary["splits"].items()
        }
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("split")

    @property
    def models(self) -> list[str]:
        """Names of the trained models (folders under models/ with a best checkpoint)."""
        return self.paths.trained_models()

    @property
    def stages(self):
        """stages.json of `run_study` as a DataFrame (key, status, seconds per stage)."""
        import pandas as pd

        ledger = _read_json(self.paths.stages) if self.paths.stages.is_file() else {}
        return pd.DataFrame.from_dict(ledger, orient="index").rename_axis("stage")

    def training(self, name: str) -> Training:
        return Training(self.paths.trained_model(name).path)

    def evaluation(self, name: str, split: EvalSplit = _EVAL.split) -> Evaluation:
        return Evaluation(self.paths.evaluation(name, split).path)

    def comparison(self, split: EvalSplit = _EVAL.split) -> Comparison:
        return Comparison(self.paths.comparison(split))

    def analysis(self, name: str) -> Analysis:
        return Analysis(self.paths.analysis(name))

    def explanation(self, name: str) -> Explanation:
        return Explanation(self.paths.explanation(name))


@dataclass(frozen=True)
class Training:
    """models/<name>: checkpoints, resolved config and one metrics row per epoch."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def info(self) -> dict:
        """run.json: best epoch and val macro AUROC, versions, seed, trainer settings."""
        from cxrlab.rundir import ModelDir

        return _read_json(ModelDir(self.path).run_json)

    @property
    def best_epoch(self) -> int | None:
        return self.info.get("best_epoch")

    @property
    def best_val_auroc(self) -> float | None:
        return self.info.get("best_val_auroc_macro")

    @property
    def history(self):
        """metrics.csv: losses, val AUROC per class and macro, lr, seconds, per epoch."""
        import pandas as pd

        from cxrlab.rundir import ModelDir

        return pd.read_csv(ModelDir(self.path).metrics_csv)

    def figure(self, name: str = "training"):
        """The training curves (losses, val AUROC per epoch), drawn as the report draws them."""
        import tempfile

        from cxrlab.errors import CxrError
        from cxrlab.evaluate.figures import plot_training_curves
        from cxrlab.rundir import ModelDir

        if name != "training":
            raise CxrError(f"no figure {name!r} here; available: training")
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_training_curves(ModelDir(self.path).metrics_csv, tmp)[0]
            return _show_png(png)


@dataclass(frozen=True)
class Evaluation(_Figures):
    """reports/<name>/<split>: predictions, metrics with CIs, tables and figures."""

    path: Path

    @cached_property
    def result(self) -> dict:
        """metrics.json: metrics, patient-bootstrap CIs, thresholds, calibration, subgroups."""
        return _read_json(SplitDir(self.path).metrics)

    @property
    def metrics(self) -> dict:
        return self.result["metrics"]

    @property
    def table(self):
        """Per class, then macro and micro: AUROC, AP (beside prevalence), F1, ... with CIs."""
        from cxrlab.evaluate.tables import per_class_table

        return per_class_table(self.metrics, self.result["ci"])

    @property
    def baseline(self):
        """Hamming and exact-match accuracy beside the all-negative predictor's."""
        from cxrlab.evaluate.tables import multilabel_table

        return multilabel_table(self.metrics, self.result["ci"])

    @property
    def predictions(self):
        """predictions.csv: one row per image, true labels and probabilities."""
        import pandas as pd

        return pd.read_csv(SplitDir(self.path).predictions, dtype={"Image Index": str})

    @property
    def figures(self) -> dict[str, Path]:
        """roc, pr, confusion, reliability, training."""
        return _png_figures(SplitDir(self.path).figures)


@dataclass(frozen=True)
class Comparison(_Figures):
    """reports/compare/<split>: every evaluated model side by side, paired tests."""

    path: Path

    @cached_property
    def summary(self) -> dict:
        return _read_json(self.path / COMPARISON_FILE)

    @property
    def table(self):
        """AUROC [95% CI] per model (rows) and class (columns, then macro)."""
        import pandas as pd

        from cxrlab.evaluate.tables import format_ci

        rows = {
            name: {k: format_ci(v["estimate"], v["low"], v["high"]) for k, v in row.items()}
            for name, row in self.summary["auroc"].items()
        }
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")

    @property
    def pairs(self) -> dict:
        """{"a vs b": paired bootstrap table of ΔAUROC per class and macro}."""
        from cxrlab.evaluate.tables import paired_table

        return {k: paired_table(v["paired_bootstrap"]) for k, v in self.summary["pairs"].items()}

    @property
    def figures(self) -> dict[str, Path]:
        """roc, pr, reliability and auroc_bars, every model on one axes per class."""
        return _png_figures(SplitDir(self.path).figures)


@dataclass(frozen=True)
class CrossValidation:
    """crossval/<name>: pooled out-of-fold AUROC with CIs, each fold's macro AUROC, every
    image's out-of-fold probabilities, and paired differences against other configs."""

    path: Path

    @cached_property
    def summary(self) -> dict:
        """crossval.json: options, config, pooled AUROC with CIs, fold sizes and scores."""
        return _read_json(self.path / CROSSVAL_FILE)

    @property
    def paired(self) -> dict:
        """{other: paired patient-bootstrap difference name - other}, as `--against` saved it."""
        paths = RunDir(self.path.parent.parent)
        saved = [_read_json(p) for p in paths.crossval_pairs(self.path.name)]
        return {pair["b"]: pair for pair in saved}

    @property
    def table(self):
        """Pooled out-of-fold AUROC [95% CI] per class, then macro."""
        import pandas as pd

        from cxrlab.evaluate.tables import format_ci

        pooled = self.summary["pooled"]
        rows = {**pooled["per_class"], "macro": pooled["macro"]}
        cells = {k: format_ci(v["estimate"], v["low"], v["high"]) for k, v in rows.items()}
        return pd.Series(cells, name="AUROC [95% CI]").rename_axis("class").to_frame()

    @property
    def folds(self):
        """One row per fold: its images and its macro AUROC."""
        import pandas as pd

        return pd.DataFrame(
            {"images": self.summary["fold_sizes"], "macro AUROC": self.summary["fold_macro"]}
        ).rename_axis("fold")

    @property
    def predictions(self):
        """oof_predictions.csv: one row per image, its fold, true labels and probabilities."""
        import pandas as pd

        return pd.read_csv(self.path / OOF_FILE, dtype={"Image Index": str, "Patient ID": str})

    @property
    def against(self) -> dict:
        """{"name - other": paired table of ΔAUROC per class and macro}."""
        from cxrlab.evaluate.tables import paired_table

        name = self.summary["name"]
        return {f"{name} - {other}": paired_table(v) for other, v in self.paired.items()}


@dataclass(frozen=True)
class Analysis(_Figures):
    """analysis/<name>: PCA, K-Means and whether clusters follow pathology or metadata."""

    path: Path

    @cached_property
    def result(self) -> dict:
        return _read_json(self.path / ANALYSIS_FILE)

    @property
    def summary(self) -> str:
        """summary.md: the answer in words, every claim with its number."""
        return (self.path / ANALYSIS_SUMMARY).read_text()

    def _repr_markdown_(self) -> str:  # a notebook shows the summary
        return self.summary

    @property
    def strongest(self) -> dict:
        """The attribute (a pathology or a metadata field) that best explains the clusters."""
        return self.result["strongest_explanation"]

    @property
    def confounds(self):
        """Clusters against pathology (label set, each target) and metadata (view, sex, age
        band, follow-up): Cramér's V, ARI, NMI per attribute, strongest first."""
        import pandas as pd

        return pd.DataFrame(self.result["confounds"])

    @property
    def probe(self):
        """Cross-validated linear probe AUROC per layer and pathology."""
        import pandas as pd

        return pd.DataFrame(self.result["probe"])

    @property
    def figures(self) -> dict[str, Path]:
        """pca_variance, pca_scatter, pca_3d, k_selection, enrichment_heatmap, confounds."""
        return _png_figures(SplitDir(self.path).figures)


@dataclass(frozen=True)
class Explanation(_Figures):
    """reports/<name>/explain: Grad-CAM overlays and localization against the boxes."""

    path: Path

    @cached_property
    def result(self) -> dict:
        return _read_json(self.path / LOCALIZATION_FILE)

    @property
    def localization(self):
        """Per pathology: n, pointing-game hit rate beside random and centre points, IoU."""
        import pandas as pd

        per = self.result["per_pathology"]
        return pd.DataFrame.from_dict(per, orient="index").rename_axis("pathology")

    @property
    def faithfulness(self):
        """Per pathology and over all targets: deletion and insertion AUC of the maps beside
        random maps, each gain with its CI (`deletion_gain_low`, ...) and verdict; no rows
        when the stage ran with faithfulness=0."""
        import pandas as pd

        per = (self.result.get("faithfulness") or {}).get("per_pathology") or {}
        table = pd.json_normalize(list(per.values()), sep="_")
        return table.set_axis(list(per), axis=0).rename_axis("pathology")

    @property
    def notes(self) -> list[str]:
        return list(self.result.get("notes", []))

    @property
    def figures(self) -> dict[str, Path]:
        """{pathology: contact sheet of its true/false positives and missed positives}."""
        return {
            stem.removesuffix("_gallery"): path
            for stem, path in _png_figures(self.path, "*_gallery.png").items()
        }


# ---- the stages -------------------------------------------------------------------------------

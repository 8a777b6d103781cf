"""Read a run directory's artifacts into plain dicts, one collector per report section.

Every collector returns `None` when its stage has not run (its files are absent), so a
report builds for partial runs; a file that exists but cannot be parsed raises `DataError`
naming the file. Nothing here imports training code or draws anything: the report is made
from what the stages wrote (docs/ARCHITECTURE.md, "Run directory").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from cxrlab.errors import DataError
from cxrlab.labels import IMAGE_INDEX, PATIENT_ID
from cxrlab.rundir import (
    ANALYSIS_FILE,
    ANALYSIS_SUMMARY,
    COMPARISON_FILE,
    CROSSVAL_FILE,
    EXPLAIN_INDEX,
    LOCALIZATION_FILE,
    RunDir,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EVAL_FIGURES = ("roc", "pr", "confusion", "reliability")
COMPARE_FIGURES = ("auroc_bars", "roc", "pr", "reliability")
#: Analysis figures in reading order; any other PNG in the folder follows these.
ANALYSIS_FIGURES = (
    "pca_variance",
    "pca_scatter",
    "pca_3d",
    "k_selection",
    "enrichment_heatmap",
    "confounds",
)
#: explain.json's gallery groups and the short names the report shows.
EXPLAIN_GROUPS = {"true_positive": "TP", "false_positive": "FP", "false_negative": "FN"}


# ---- readers: None when absent, DataError when present but unreadable --------------------


def read_json(path: Path) -> Any | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc}); re-run the stage that wrote it"
        ) from exc


def read_mapping(path: Path) -> dict | None:
    """A JSON file that must hold an object."""
    data = read_json(path)
    if data is not None and not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def read_yaml(path: Path) -> dict | None:
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path} is not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a mapping, found {type(data).__name__}")
    return data


def read_csv(path: Path, **kwargs) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, **kwargs)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # pandas' ParserError is one
        raise DataError(f"{path} is not a readable CSV file ({exc})") from exc


def read_text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def pngs(folder: Path, order: Iterable[str] = ()) -> dict[str, Path]:
    """`{stem: path}` of the PNGs in `folder`: the stems in `order` first, then the rest."""
    if not folder.is_dir():
        return {}
    found = {p.stem: p for p in sorted(folder.glob("*.png")) if p.is_file()}
    ordered = {s: found.pop(s) for s in order if s in found}
    return {**ordered, **found}


# ---- the run -----------------------------------------------------------------------------


def model_names(run_dir: Path) -> list[str]:
    """Models with a folder under `models/` or an evaluation under `reports/`, sorted."""
    paths = RunDir(run_dir)
    names = {p.name for p in paths.models.glob("*") if p.is_dir()}
    return sorted(names | set(paths.evaluated_models()))


def collect_run(run_dir: str | Path, split: str = "test") -> dict:
    """Everything the report shows, section by section (a section is None when not run)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} does not exist")
    names = model_names(run_dir)
    return {
        "run_dir": run_dir,
        "split": split,
        "models": names,
        "cohort": collect_cohort(run_dir),
        "training": collect_training(run_dir, names, split),
        "metrics": collect_metrics(run_dir, names, split),
        "comparison": collect_comparison(run_dir, split),
        "crossval": collect_crossval(run_dir),
        "analysis": collect_analysis(run_dir),
        "explain": collect_explain(run_dir, names),
        "provenance": collect_provenance(run_dir),
    }


# ---- sections ----------------------------------------------------------------------------


def collect_cohort(run_dir: Path) -> dict | None:
    """split_summary.json (required), prepare.json, co-occurrence and metadata from cohort.csv,
    and radiologist box counts from boxes.csv."""
    paths = RunDir(run_dir)
    summary = read_mapping(paths.split_summary)
    if summary is None:
        return None
    targets = list(summary.get("targets") or [])
    cohort = read_csv(paths.cohort, dtype={IMAGE_INDEX: str, PATIENT_ID: str})
    boxes = read_csv(paths.boxes)
    out = {
        "summary": summary,
        "targets": targets,
        "prepare": read_mapping(paths.prepare_json),
        "cooccurrence": None,
        "demographics": None,
        "boxes": None if boxes is None else _box_counts(boxes),
    }
    if cohort is not None:
        _check_columns(cohort, [*targets, "split"], paths.cohort)
        y = cohort[targets].to_numpy(dtype="int64")  # (N, K) 0/1
        out["cooccurrence"] = pd.DataFrame(y.T @ y, index=targets, columns=targets)
        out["demographics"] = _demographics(cohort)
    return out


def _check_columns(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; it has {list(frame.columns)}")


def _box_counts(boxes: pd.DataFrame) -> dict:
    if boxes.empty or "label" not in boxes.columns:
        return {"n": int(len(boxes)), "images": 0, "per_label": {}}
    return {
        "n": int(len(boxes)),
        "images": int(boxes[IMAGE_INDEX].nunique()),
        "per_label": {str(k): int(v) for k, v in boxes["label"].value_counts().items()},
    }


def _demographics(cohort: pd.DataFrame) -> pd.DataFrame:
    """Per split: median age [IQR], share female, share of PA views."""
    rows = {}
    for split, part in cohort.groupby("split", sort=False):
        row = {"images": len(part)}
        if "age" in part:
            age = pd.to_numeric(part["age"], errors="coerce").dropna()
            if len(age):
                q1, q2, q3 = age.quantile([0.25, 0.5, 0.75])
                row["age, median [IQR]"] = f"{q2:.0f} [{q1:.0f}-{q3:.0f}]"
        if "sex" in part:
            row["female"] = f"{(part['sex'].astype(str).str.upper() == 'F').mean():.1%}"
        if "view" in part:
            counts = part["view"].astype(str).value_counts()
            row["views"] = ", ".join(f"{k} {v}" for k, v in counts.items())
        rows[split] = row
    order = [s for s in SPLITS if s in rows] + [s for s in rows if s not in SPLITS]
    frame = pd.DataFrame.from_dict({s: rows[s] for s in order}, orient="index")
    frame.index.name = "split"
    return frame


def collect_training(run_dir: Path, names: list[str], split: str) -> dict | None:
    """Per model: metrics.csv, config.yaml, run.json, thresholds.json, training curve PNG."""
    models = {}
    for name in names:
        mdir = RunDir(run_dir).model(name)
        if not mdir.path.is_dir():
            continue
        curve = read_csv(mdir.metrics_csv)
        models[name] = {
            "curve": curve,
            "config": read_yaml(mdir.config),
            "run": read_mapping(mdir.run_json),
            "thresholds": read_mapping(mdir.thresholds),
            "figure": _training_figure(run_dir, name, split),
        }
    return models or None


def _training_figure(run_dir: Path, name: str, split: str) -> Path | None:
    """`evaluate` draws training.png beside each split's figures; prefer the report's split."""
    paths = RunDir(run_dir)
    reports = paths.evaluation(name, split).path.parent
    preferred = paths.evaluation(name, split).figures / "training.png"
    for path in [preferred, *reports.glob("*/figures/*.png")]:
        if path.is_file() and path.stem == "training":
            return path
    return None


def collect_metrics(run_dir: Path, names: list[str], split: str) -> dict | None:
    """Per model: `reports/<name>/<split>/metrics.json` and its figures."""
    models = {}
    for name in names:
        evaluation = RunDir(run_dir).evaluation(name, split)
        folder = evaluation.path
        metrics = read_mapping(evaluation.metrics)
        if metrics is None:
            continue
        for key in ("metrics", "ci"):
            if key not in metrics:
                raise DataError(f"{evaluation.metrics} lacks {key!r}; re-run `cxrlab evaluate`")
        figures = pngs(evaluation.figures, EVAL_FIGURES)
        figures.pop("training", None)  # shown in the training section
        models[name] = {"result": metrics, "figures": figures, "dir": folder}
    return models or None


def collect_comparison(run_dir: Path, split: str) -> dict | None:
    folder = RunDir(run_dir).comparison(split)
    summary = read_mapping(folder / COMPARISON_FILE)
    if summary is None:
        return None
    for key in ("models", "targets", "auroc", "pairs"):
        if key not in summary:
            raise DataError(f"{folder / 'comparison.json'} lacks {key!r}; re-run `cxrlab compare`")
    return {"summary": summary, "figures": pngs(folder / "figures", COMPARE_FIGURES)}


def collect_crossval(run_dir: Path) -> list[dict] | None:
    """Every finished `cxrlab crossval` (crossval/<name>/crossval.json), with the paired
    comparisons `--against` saved beside it."""
    paths = RunDir(run_dir)
    root = paths.crossval_root
    blocks = []
    for path in sorted(root.glob(f"*/{CROSSVAL_FILE}")) if root.is_dir() else []:
        summary = read_mapping(path)
        for key in ("name", "targets", "pooled", "fold_macro", "fold_mean", "fold_sd"):
            if key not in summary:
                raise DataError(f"{path} lacks {key!r}; re-run `cxrlab crossval`")
        pairs = [read_mapping(p) for p in paths.crossval_pairs(path.parent.name)]
        blocks.append({"summary": summary, "pairs": pairs})
    return blocks or None


def collect_analysis(run_dir: Path) -> list[dict] | None:
    """Every `analysis.json` under `analysis/` (one per model, or per model and layer)."""
    root = RunDir(run_dir).analysis_root
    blocks = []
    for path in sorted(root.rglob(ANALYSIS_FILE)) if root.is_dir() else []:
        folder = path.parent
        result = read_mapping(path)
        blocks.append(
            {
                "name": str(folder.relative_to(root)),
                "result": result,
                "summary_md": read_text(folder / ANALYSIS_SUMMARY),
                "figures": {**pngs(folder / "figures", ANALYSIS_FIGURES), **pngs(folder)},
                "interactive": sorted(p.relative_to(run_dir) for p in folder.rglob("*.html")),
                "dir": folder,
            }
        )
    return blocks or None


def collect_explain(run_dir: Path, names: list[str]) -> dict | None:
    """Per model: `reports/<name>/explain/` localization scores and gallery index."""
    models = {}
    for name in names:
        folder = RunDir(run_dir).explanation(name)
        index = read_json(folder / EXPLAIN_INDEX)
        localization = read_json(folder / LOCALIZATION_FILE)
        if index is None and localization is None:
            continue
        models[name] = {
            "index": index,
            "localization": localization,
            "gallery": gallery_entries(index, run_dir, folder),
            "dir": folder,
        }
    return models or None


def gallery_entries(index: Any, run_dir: Path, folder: Path) -> list[dict]:
    """explain.json's `entries`, each with `png_path`: its overlay (`png`, relative to RUN_DIR)
    when the file exists, else None (the page then says the overlay is missing)."""
    if index is None:
        return []
    rows = index.get("entries") if isinstance(index, dict) else None
    if not isinstance(rows, list):
        raise DataError(f"{folder / 'explain.json'} needs an 'entries' list; re-run explain")
    out = []
    for row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{folder / 'explain.json'}: entry {row!r} is not an object")
        path = run_dir / row["png"] if row.get("png") else None
        out.append({**row, "png_path": path if path is not None and path.is_file() else None})
    return out


def collect_provenance(run_dir: Path) -> dict:
    """study.yaml and stages.json of `cxrlab run` (None each when stages ran by hand)."""
    return {
        "study": read_yaml(RunDir(run_dir).study_yaml),
        "stages": read_json(RunDir(run_dir).stages),
    }

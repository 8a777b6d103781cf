"""`cxrlab compare`: every evaluated model of a run, on the same images, side by side.

For each pair of models: a paired bootstrap over patients of ΔAUROC per class and macro,
which decides the verdicts (Holm across classes), and DeLong's test per class beside it,
labelled with its assumption (images independent; several images per patient break it).
Figures put all models on one axes per class, with one colour per model throughout
(`figures.model_colors`).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np

from cxrlab.errors import EvaluationError
from cxrlab.evaluate.bootstrap import paired_bootstrap
from cxrlab.evaluate.delong import compare_delong
from cxrlab.evaluate.figures import (
    plot_auroc_comparison,
    plot_pr_curves,
    plot_reliability,
    plot_roc_curves,
)
from cxrlab.evaluate.metrics import Predictions, check_same_run, read_predictions
from cxrlab.evaluate.tables import DELONG_COLUMN, format_ci, paired_table, save_table
from cxrlab.rundir import COMPARISON_FILE, RunDir, SplitDir
from cxrlab.runinfo import read_json, write_json

log = logging.getLogger(__name__)


def evaluated_models(run_dir: str | Path, split: str = "test") -> list[str]:
    """Models with `reports/<name>/<split>/metrics.json`, sorted by name."""
    paths = RunDir(run_dir)
    return [n for n in paths.evaluated_models() if paths.evaluation(n, split).metrics.is_file()]


def compare_models(
    run_dir: str | Path,
    split: str = "test",
    models: list[str] | None = None,
    *,
    n_boot: int | None = None,
    seed: int = 0,
) -> dict:
    """Compare evaluated models; writes `reports/compare/<split>/` and returns its summary.

    `n_boot` defaults to `EvaluateConfig().bootstrap`."""
    from cxrlab.config import EvaluateConfig

    n_boot = EvaluateConfig().bootstrap if n_boot is None else n_boot
    paths = RunDir(run_dir)
    names = models or evaluated_models(paths, split)
    if len(names) < 1:
        raise EvaluationError(
            f"no evaluated model in {paths.reports} (split {split!r});"
            " run `cxrlab evaluate` for each model first"
        )
    _check_evaluated(paths, names, split)
    preds = {name: _read(paths, name, split) for name in names}
    y, patient_ids, targets = _common(preds)
    out_dir = paths.comparison(split)
    pairs = {}
    for a, b in itertools.combinations(names, 2):
        pairs[f"{a} vs {b}"] = {
            "a": a,
            "b": b,
            "delong": compare_delong(y, preds[a].p, preds[b].p, targets),
            "paired_bootstrap": paired_bootstrap(
                y, preds[a].p, preds[b].p, patient_ids, n_boot=n_boot, seed=seed, targets=targets
            ),
        }
    metrics = {name: read_json(paths.evaluation(name, split).metrics) for name in names}
    summary = {
        "split": split,
        "models": names,
        "targets": targets,
        "n_images": int(y.shape[0]),
        "pairs": pairs,
        "auroc": {name: _auroc_row(m, targets) for name, m in metrics.items()},
        "best": _best(metrics, targets),
    }
    write_json(out_dir / COMPARISON_FILE, summary)
    _write_tables(summary, metrics, targets, out_dir)
    probs = {name: preds[name].p for name in names}
    fig_dir = SplitDir(out_dir).figures
    plot_roc_curves(y, probs, targets, fig_dir)
    plot_pr_curves(y, probs, targets, fig_dir)
    plot_reliability(y, probs, targets, fig_dir)
    plot_auroc_comparison({n: m["ci"] for n, m in metrics.items()}, targets, fig_dir)
    return summary


def _check_evaluated(paths: RunDir, names: list[str], split: str) -> None:
    missing = [n for n in names if not paths.evaluation(n, split).metrics.is_file()]
    if missing:
        have = ", ".join(evaluated_models(paths, split)) or "none"
        raise EvaluationError(
            f"model(s) {', '.join(missing)} have no {split} evaluation in {paths.reports} "
            f"(evaluated: {have}); run `cxrlab evaluate {paths.root} --model NAME` first"
        )


def _read(paths: RunDir, name: str, split: str) -> Predictions:
    """One model's predictions, refused when its sidecar names another run's split."""
    folder = paths.evaluation(name, split)
    if folder.predictions_meta.is_file() and paths.split_summary.is_file():
        check_same_run(folder.predictions_meta, read_json(paths.split_summary)["split_hash"])
    return read_predictions(folder.predictions)


def _common(preds: dict[str, Predictions]):
    """The labels all models share; refuse files that cover different images or targets."""
    first_name, first = next(iter(preds.items()))
    for name, other in preds.items():
        if other.targets != first.targets:
            raise EvaluationError(
                f"{name} predicts {list(other.targets)} but {first_name} {list(first.targets)}"
            )
        if len(other.ids) != len(first.ids) or not np.array_equal(other.ids, first.ids):
            raise EvaluationError(
                f"{name} and {first_name} were evaluated on different images;"
                " re-evaluate both on the same run and split"
            )
    return first.y, first.patient_ids, list(first.targets)


def _auroc_row(metrics: dict, targets: list[str]) -> dict:
    ci = metrics["ci"]
    row = {t: ci["per_class"][t]["auroc"] for t in targets}
    row["macro"] = ci["macro"]["auroc"]
    return row


def _best(metrics: dict[str, dict], targets: list[str]) -> dict:
    """Per class (and macro): the model with the highest AUROC point estimate."""
    best = {}
    for key in [*targets, "macro"]:
        scored = []
        for name, m in metrics.items():
            entry = (
                m["ci"]["macro"]["auroc"] if key == "macro" else m["ci"]["per_class"][key]["auroc"]
            )
            if entry.get("estimate") is not None:
                scored.append((entry["estimate"], name, entry))
        if scored:
            estimate, name, entry = max(scored, key=lambda s: s[0])
            best[key] = {
                "model": name,
                "auroc": estimate,
                "low": entry["low"],
                "high": entry["high"],
            }
    return best


def _write_tables(summary: dict, metrics: dict, targets: list[str], out_dir: Path) -> None:
    import pandas as pd

    rows = []
    for name, row in summary["auroc"].items():
        cells = {k: format_ci(v["estimate"], v["low"], v["high"]) for k, v in row.items()}
        rows.append({"model": name, **cells})
    save_table(pd.DataFrame(rows).set_index("model"), out_dir, "auroc")
    for label, pair in summary["pairs"].items():
        stem = "paired_" + label.replace(" vs ", "_vs_")
        table = paired_table(pair["paired_bootstrap"])
        delong_p = {t: pair["delong"][t].get("p_value") for t in targets}
        table[DELONG_COLUMN] = [
            "—" if delong_p.get(c) is None else f"{delong_p[c]:.3g}" for c in table.index
        ]
        save_table(table, out_dir, stem)

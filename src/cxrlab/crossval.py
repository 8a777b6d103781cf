"""`cxrlab crossval RUN --name NAME`: patient-grouped k-fold cross-validation of one config.

One test split of a small study cannot tell two recipes apart: 166 test images of the 1,108
real dev images give macro-AUROC intervals about +-0.07 wide. Here the run's whole cohort
(train, val and test alike) is split into k folds by patient, stratified on the patients'
labels (iterative stratification; a patient is positive for a target when any of their
images is). For each fold a model with the given config is trained on the other folds, less
a validation part carved by patient (curves, early stopping), and predicts the fold. Every
image is then predicted once, by a model that never saw its patient: the pooled out-of-fold
AUROC gets a patient-bootstrap CI, and two configs cross-validated on the same folds are
compared pairwise (`compare_crossval`).

    RUN/crossval/NAME/
        config.yaml          the training config every fold used
        fold<f>/             a run directory per fold: its cohort.csv holds the fold's split,
                             its cache links to RUN's; models/NAME/ is the fold's training
        fold<f>.npz          the fold's test probabilities, written when the fold is done
        oof_predictions.csv  Image Index, Patient ID, fold, labels, p_<target> per image
        crossval.json        options, fold sizes, pooled and per-fold AUROC, versions

A killed run resumes: finished folds are kept, an unfinished fold continues from its last
saved epoch.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cxrlab.config import CrossvalConfig, ExperimentConfig, build, load_yaml
from cxrlab.data.rundata import RunData, load_run_data
from cxrlab.data.split import split_summary
from cxrlab.errors import ConfigError, DataError
from cxrlab.labels import IMAGE_INDEX, PATIENT_ID
from cxrlab.locking import exclusive
from cxrlab.rundir import CONFIG_FILE, CROSSVAL_FILE, OOF_FILE, RunDir
from cxrlab.runinfo import atomic_file, package_versions, read_json, write_atomic, write_json

log = logging.getLogger(__name__)


@dataclass
class CrossvalResult:
    folder: Path  # RUN/crossval/NAME
    summary: dict[str, Any]  # what crossval.json holds


# ---- folds ------------------------------------------------------------------------------------
def patient_labels(cohort: pd.DataFrame, targets: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(patients (P,), labels (P, K)): a patient is positive if any of their images is."""
    grouped = cohort.groupby(PATIENT_ID, sort=True)[targets].max()
    return grouped.index.to_numpy(), grouped.to_numpy()


def assign_folds(cohort: pd.DataFrame, targets: list[str], k: int, seed: int) -> np.ndarray:
    """(N,) fold of each image: whole patients per fold, stratified on patient labels."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    patients, labels = patient_labels(cohort, targets)
    if len(patients) < k:
        raise DataError(f"{len(patients)} patients cannot fill folds={k}; use fewer folds")
    fold_of = {}
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, test) in enumerate(splitter.split(np.zeros(len(patients)), labels)):
        fold_of.update(dict.fromkeys(patients[test], f))
    return cohort[PATIENT_ID].map(fold_of).to_numpy()


def carve_val(cohort: pd.DataFrame, targets: list[str], share: float, seed: int) -> np.ndarray:
    """(n,) bool: the validation images, `share` of the patients, stratified."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    patients, labels = patient_labels(cohort, targets)
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=share, random_state=seed)
    _, val = next(splitter.split(np.zeros(len(patients)), labels))
    return cohort[PATIENT_ID].isin(set(patients[val])).to_numpy()


def fold_run(base: RunData, fold: np.ndarray, f: int, val_share: float, root: Path) -> Path:
    """root/fold<f>: a run directory whose cohort is the base one with the fold's split
    (test = fold f, val carved from the rest by patient) and whose cache is the base's."""
    paths = RunDir(root / f"fold{f}")
    cohort = base.cohort.copy()
    split = np.where(fold == f, "test", "train").astype(object)
    rest = fold != f
    val = carve_val(cohort[rest], base.targets, val_share, seed=f)
    split[np.flatnonzero(rest)[val]] = "val"
    cohort["split"] = split
    paths.data.mkdir(parents=True, exist_ok=True)
    write_atomic(paths.cohort, cohort.to_csv(index=False))
    write_json(paths.split_summary, {**split_summary(cohort, base.targets), "fold": f})
    if not paths.cache.exists():
        paths.cache.symlink_to(base.cache.cache_dir.resolve(), target_is_directory=True)
    return paths.root


# ---- one config over every fold ---------------------------------------------------------------
def crossval(
    run_dir: str | Path,
    config: ExperimentConfig,
    name: str,
    options: CrossvalConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    on_fold: Callable[[int, int, str], None] | None = None,
) -> CrossvalResult:
    """Train `config` on each fold of RUN's cohort and pool the out-of-fold predictions.

    `on_fold(f, k, what)` is called as fold f of k starts: what is "saved" (kept from an
    earlier run), "predicting" (trained earlier), "training" or "resuming" (the CLI prints
    it)."""
    options = options or CrossvalConfig()
    base = load_run_data(run_dir)
    paths = RunDir(run_dir)
    folder = paths.crossval(name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(paths.crossval_lock(name), f"crossval {name!r} of {run_dir}"):
        _claim(folder, config, options, overwrite)
        fold = assign_folds(base.cohort, base.targets, options.folds, options.seed)
        oof = np.full(base.labels.shape, np.nan)
        for f in range(options.folds):
            probs = _fold_probs(base, fold, f, folder, config, name, options, progress, on_fold)
            oof[fold == f] = probs
        summary = _summarize(base, fold, oof, name, config, options)
        _write_oof(folder / OOF_FILE, base, fold, oof)
        write_json(folder / CROSSVAL_FILE, summary)
    return CrossvalResult(folder, summary)


def _claim(folder: Path, config: ExperimentConfig, options: CrossvalConfig, overwrite: bool):
    """Refuse to mix folds of another config or fold assignment into `folder`."""
    saved = folder / CONFIG_FILE
    wanted = {"experiment": config.model_dump(mode="json"), "folds": _fold_key(options)}
    if saved.is_file() and not overwrite:
        before = load_yaml(saved)
        if before != wanted:
            raise ConfigError(
                f"{folder} holds folds of another config or fold assignment (see {saved}); "
                "cross-validate under another --name, or pass --overwrite to start again"
            )
        return
    if folder.exists() and overwrite:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(saved, yaml.safe_dump(wanted, sort_keys=False))


def _fold_key(options: CrossvalConfig) -> dict[str, Any]:
    """What decides the folds and val parts (not the bootstrap or the device)."""
    return {"folds": options.folds, "val": options.val, "seed": options.seed}


def _fold_probs(
    base: RunData,
    fold: np.ndarray,
    f: int,
    folder: Path,
    config: ExperimentConfig,
    name: str,
    options: CrossvalConfig,
    progress: bool,
    on_fold: Callable[[int, int, str], None] | None,
) -> np.ndarray:
    """Fold f's test probabilities (n_f, K): saved ones, or train (resume) and predict."""
    report = on_fold or (lambda f, k, what: None)
    saved = folder / f"fold{f}.npz"
    if saved.is_file():
        report(f, options.folds, "saved")
        return np.load(saved)["probs"]
    from cxrlab.models.checkpoint import is_readable, load_trained
    from cxrlab.models.inference import predict_images
    from cxrlab.train.engine import train_model

    run = fold_run(base, fold, f, options.val, folder)
    model_dir = RunDir(run).model(name)
    done = model_dir.run_json.is_file() and read_json(model_dir.run_json).get("finished")
    if done:
        report(f, options.folds, "predicting")
    else:
        resume = is_readable(model_dir.last_ckpt)
        report(f, options.folds, "resuming" if resume else "training")
        log.info("crossval %s: fold %d of %d%s", name, f + 1, options.folds,
                 " (resuming)" if resume else "")  # fmt: skip
        train_model(run, config, name, resume=resume, overwrite=not resume, progress_bar=progress)
    data = load_run_data(run)
    trained = load_trained(data, name, options.device)
    probs = predict_images(
        trained.model, data.images, data.rows("test"), trained.mean, trained.std,
        batch_size=options.batch_size,
    )  # fmt: skip
    with atomic_file(saved, "wb") as handle:
        np.savez(handle, probs=probs)
    if not options.keep_models:  # predictions saved first: a kill here loses nothing needed
        for checkpoint in model_dir.path.glob("*.ckpt"):
            checkpoint.unlink()
    return probs


def _summarize(
    base: RunData,
    fold: np.ndarray,
    oof: np.ndarray,
    name: str,
    config: ExperimentConfig,
    options: CrossvalConfig,
) -> dict[str, Any]:
    return {
        "name": name,
        "targets": base.targets,
        "options": options.model_dump(mode="json"),
        "config": config.model_dump(mode="json"),
        "n_images": int(len(base.labels)),
        "n_patients": int(len(set(base.patient_ids))),
        "fold_sizes": np.bincount(fold, minlength=options.folds).tolist(),
        "base_split_hash": base.split_hash,
        **score_folds(base, fold, oof, options.bootstrap, options.seed),
        "versions": package_versions(),
    }


def score_folds(
    base: RunData, fold: np.ndarray, oof: np.ndarray, n_boot: int, seed: int = 0
) -> dict[str, Any]:
    """Pooled AUROC of out-of-fold probabilities `oof` (N, K) with a patient-bootstrap CI,
    and the macro AUROC of each fold (classes with both labels in the fold), mean and sd."""
    from sklearn.metrics import roc_auc_score

    from cxrlab.evaluate.bootstrap import bootstrap_auroc

    y = base.labels
    pooled = bootstrap_auroc(
        y, oof, base.patient_ids, targets=base.targets, n_boot=n_boot, seed=seed
    )
    per_fold = []
    for f in np.unique(fold):
        rows = fold == f
        aucs = [roc_auc_score(y[rows, k], oof[rows, k]) for k in range(y.shape[1])
                if 0 < y[rows, k].sum() < rows.sum()]  # fmt: skip
        per_fold.append(float(np.mean(aucs)) if aucs else float("nan"))
    return {
        "pooled": pooled,
        "fold_macro": per_fold,
        "fold_mean": float(np.nanmean(per_fold)),
        "fold_sd": float(np.nanstd(per_fold, ddof=1)) if len(per_fold) > 1 else 0.0,
    }


def _write_oof(path: Path, base: RunData, fold: np.ndarray, oof: np.ndarray) -> None:
    frame = pd.DataFrame({IMAGE_INDEX: base.ids, PATIENT_ID: base.patient_ids, "fold": fold})
    for k, target in enumerate(base.targets):
        frame[target] = base.labels[:, k]
    for k, target in enumerate(base.targets):
        frame[f"p_{target}"] = oof[:, k]
    write_atomic(path, frame.to_csv(index=False))


# ---- two configs on the same folds -----------------------------------------------------------
def read_oof(run_dir: str | Path, name: str) -> pd.DataFrame:
    """crossval/NAME/oof_predictions.csv, or a DataError with the command that writes it."""
    path = RunDir(run_dir).crossval(name) / OOF_FILE
    if not path.is_file():
        raise DataError(
            f"{path} not found: cross-validate first with `cxrlab crossval {run_dir} --name {name}`"
        )
    return pd.read_csv(path, dtype={IMAGE_INDEX: str, PATIENT_ID: str})


def compare_crossval(
    run_dir: str | Path, a: str, b: str, options: CrossvalConfig | None = None
) -> dict[str, Any]:
    """Paired patient-bootstrap difference A - B of pooled out-of-fold AUROC (per class and
    macro), for two configs cross-validated on the same images and folds; also written to
    crossval/A/paired_B.json (the report shows it)."""
    from cxrlab.evaluate.bootstrap import paired_bootstrap

    options = options or CrossvalConfig()
    first, second = read_oof(run_dir, a), read_oof(run_dir, b)
    same = [IMAGE_INDEX, "fold"]
    if len(first) != len(second) or not first[same].equals(second[same]):
        raise ConfigError(
            f"crossval {a!r} and {b!r} were not run on the same images and folds; "
            "cross-validate both with the same --folds, --val and --seed"
        )
    targets = [c[2:] for c in first.columns if c.startswith("p_")]
    paired = paired_bootstrap(
        first[targets].to_numpy(), first[[f"p_{t}" for t in targets]].to_numpy(),
        second[[f"p_{t}" for t in targets]].to_numpy(), first[PATIENT_ID].to_numpy(),
        n_boot=options.bootstrap, seed=options.seed, targets=targets,
    )  # fmt: skip
    write_json(RunDir(run_dir).crossval_paired(a, b), {"a": a, "b": b, **paired})
    return paired


def config_of(run_dir: str | Path, name: str, config_file: str | Path | None) -> ExperimentConfig:
    """The training config to cross-validate: `config_file`, else trained model NAME's."""
    if config_file is not None:
        return build(ExperimentConfig, load_yaml(config_file), source=str(config_file))
    saved = RunDir(run_dir).model(name).config
    if not saved.is_file():
        trained = ", ".join(RunDir(run_dir).trained_models()) or "none"
        raise ConfigError(
            f"no model {name!r} in {RunDir(run_dir).models} to take the config from (trained: "
            f"{trained}); train it first, or pass --config FILE"
        )
    return build(ExperimentConfig, load_yaml(saved), source=str(saved))

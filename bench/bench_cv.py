"""Benchmark: training recipes compared by patient-grouped k-fold cross-validation.

One 166-image test split cannot tell recipes apart (CIs +-0.07). Here every image of the
real dev set (`../shared/data/nih-cxr14-dev`: 1,108 NIH images, 891 patients, four targets)
is tested exactly once:

1. patients are assigned to k folds, stratified on their labels (a patient is positive for
   a target when any of their images is; iterative-stratification's multilabel k-fold);
2. for fold f: test = fold f; within the other folds a validation part (--val share of
   their patients, stratified the same way) is carved for early stopping and thresholds;
   train = the rest. Each fold is a run directory whose cache is the shared one;
3. each recipe trains once per fold; its test-fold probabilities (from `best.ckpt`, or
   `last.ckpt` for recipes without early stopping) are pooled out of fold.

Reported per recipe: pooled out-of-fold macro and per-class AUROC with a patient-bootstrap
95% CI, mean +- sd of the per-fold macro AUROC, and for each pair of recipes the paired
patient-bootstrap difference of pooled macro AUROC (same images, same folds).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_cv.py --work /tmp/cv --image-size 224 \\
        --recipes plain,default,probe [--folds 5] [--markdown out.md]

Fold results are saved as they finish (WORK/<recipe>/fold<f>.npz): a rerun skips them, so
a killed benchmark resumes. Recipes are config overrides on cxrlab's defaults (RECIPES;
PLAIN_VARIANTS: one change each to the plain fine-tune). Scoring saved folds needs no
training, so folds trained elsewhere (bench/gpu_cv.sh on a GPU) are scored here:

    bench_cv.py --work W --recipes plain,plain_s1,posw --against plain \
        --ensemble plain_x2=plain+plain_s1 --extra plain@256=W256/plain
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from cxrlab.config import DataConfig, ExperimentConfig, build, deep_merge
from cxrlab.crossval import assign_folds, fold_run, score_folds  # `cxrlab crossval`'s
from cxrlab.data.rundata import RunData, load_run_data
from cxrlab.evaluate.bootstrap import paired_bootstrap
from cxrlab.rundir import RunDir
from cxrlab.runinfo import write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "nih-cxr14-dev"
LITE0 = {"name": "efficientnet_lite0", "pretrained": True}  # bundled weights, no download
NO_EARLY_STOP = 1000  # patience longer than any run

#: name -> (config overrides on cxrlab's defaults, checkpoint the fold is scored with).
RECIPES: dict[str, tuple[dict[str, Any], str]] = {
    # `cxrlab train R --model efficientnet_lite0 --pretrained`, every other default (today:
    # config.TRANSFER_RECIPE; best.ckpt holds the final epoch's EMA weights)
    "default": ({"model": LITE0}, "best"),
    # the defaults before TRANSFER_RECIPE: one LR (1e-3) for the whole network, up to 30
    # epochs, early stopping (patience 5) and the epoch with the best val macro AUROC
    "previous": (
        {
            "model": LITE0,
            "optim": {"lr": 1e-3, "backbone_lr_mult": 1.0},
            "schedule": {"warmup_epochs": 1.0},
            "train": {"epochs": 30, "select": "best", "ema": False},
        },
        "best",
    ),
    # the 30-line reference: fixed LR for the whole network, cosine, 8 epochs, no
    # early stopping, the final weights
    "plain": (
        {
            "model": LITE0,
            "optim": {"lr": 3e-4, "backbone_lr_mult": 1.0},
            "schedule": {"name": "cosine", "warmup_epochs": 0},
            "train": {"epochs": 8, "patience": NO_EARLY_STOP, "select": "last", "ema": False},
        },
        "last",
    ),
    # cxrlab's own linear-probe strategy (frozen backbone, a linear head trained by SGD)
    "probe_head": (
        {
            "model": LITE0,
            "optim": {"lr": 3e-3},
            "train": {
                "strategy": "linear-probe",
                "epochs": 15,
                "patience": NO_EARLY_STOP,
                "select": "last",
                "ema": False,
            },
        },
        "last",
    ),
    "simple_cnn": ({"model": {"name": "simple_cnn"}}, "best"),
}


# the plain fine-tune, validated and kept through a weight EMA (its final EMA weights)
RECIPES["plain_ema"] = (deep_merge(RECIPES["plain"][0], {"train": {"ema": True}}), "best")

#: One change each to the plain fine-tune (the grid of issue 12's recipe work).
NO_AUG = {"rotation_deg": 0, "scale_min": 1, "scale_max": 1, "translate": 0,
          "brightness": 0, "contrast": 0}  # fmt: skip
STRONG_AUG = {"rotation_deg": 15, "scale_min": 0.8, "scale_max": 1.2, "translate": 0.1,
              "brightness": 0.2, "contrast": 0.2}  # fmt: skip
PLAIN_VARIANTS: dict[str, dict[str, Any]] = {
    "plain_s1": {"train": {"seed": 1}},  # seeds: the noise of one recipe, and an ensemble
    "plain_s2": {"train": {"seed": 2}},
    "plain_s3": {"train": {"seed": 3}},
    "plain_s4": {"train": {"seed": 4}},
    "lr1e-4": {"optim": {"lr": 1e-4}},
    "lr1e-3": {"optim": {"lr": 1e-3}},
    "ep4": {"train": {"epochs": 4}},
    "ep16": {"train": {"epochs": 16}},
    "ld0.8": {"optim": {"lr": 1e-3, "layer_decay": 0.8}},  # timm layer-wise LR decay
    "ld0.65": {"optim": {"lr": 1e-3, "layer_decay": 0.65}},
    "noaug": {"augment": NO_AUG},
    "strongaug": {"augment": STRONG_AUG},
    "bs16": {"train": {"batch_size": 16}},
    "drop0.5": {"model": {"drop_rate": 0.5}},
    "posw": {"train": {"pos_weight": True}},
    "posw_s1": {"train": {"pos_weight": True, "seed": 1}},
    "wd0.05": {"optim": {"weight_decay": 0.05}},
    "mixup0.2": {"augment": {"mixup": 0.2}},
    "mixup1": {"augment": {"mixup": 1.0}},
    "ls0.1": {"train": {"label_smoothing": 0.1}},
    "dpr0.2": {"model": {"kwargs": {"drop_path_rate": 0.2}}},  # timm stochastic depth
    "lpft": {"train": {"strategy": "freeze-then-unfreeze", "freeze_epochs": 2, "epochs": 10}},
    "blr0.3": {"optim": {"lr": 1e-3, "backbone_lr_mult": 0.3}},
}
for _name, _change in PLAIN_VARIANTS.items():
    RECIPES[_name] = (deep_merge(RECIPES["plain"][0], _change), "last")
SEEDED = re.compile(r"(?P<recipe>.+)_s(?P<seed>[0-9]+)$")  # NAME_s3: recipe NAME, seed 3


def recipe_of(name: str) -> tuple[dict[str, Any], str]:
    """RECIPES[name], or for NAME_s<k> recipe NAME trained with seed k."""
    if name in RECIPES:
        return RECIPES[name]
    seeded = SEEDED.fullmatch(name)
    if seeded is None or seeded["recipe"] not in RECIPES:
        raise KeyError(name)
    overrides, checkpoint = RECIPES[seeded["recipe"]]
    return deep_merge(overrides, {"train": {"seed": int(seeded["seed"])}}), checkpoint


def known(name: str) -> bool:
    try:
        recipe_of(name)
    except KeyError:
        return name == PROBE
    return True


#: The issue's probe reference: logistic regression on frozen ImageNet Lite0 features
#: (global-pooled), C chosen on the fold's val part. Not a cxrlab training run.
PROBE = "probe"
PROBE_C = (1e-3, 1e-2, 1e-1, 1.0)


# ---- training and scoring -------------------------------------------------------------------
def recipe_config(name: str, epochs: int | None, precision: str | None = None):
    overrides = recipe_of(name)[0]
    if epochs is not None:
        overrides = deep_merge(overrides, {"train": {"epochs": epochs}})
    if precision is not None:  # how to run, not what: e.g. "32" on a GPU to match the CPU
        overrides = deep_merge(overrides, {"train": {"precision": precision}})
    return build(ExperimentConfig, overrides, source=f"recipe {name}")


def run_fold(run_dir: Path, recipe: str, args) -> dict:
    """Train `recipe` on one fold; facts about the run."""
    from cxrlab.train.engine import train_model

    start = time.perf_counter()
    config = recipe_config(recipe, args.epochs, args.precision)
    result = train_model(run_dir, config, name=recipe, overwrite=True, progress_bar=False)
    return {
        "train_s": time.perf_counter() - start,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
    }


def fold_probs(run_dir: Path, recipe: str, tta: bool, device: str = "cpu") -> np.ndarray:
    """Test-row probabilities (n, K) of the fold's trained `recipe` (with TTA or not)."""
    from cxrlab.models.checkpoint import check_compatible, load_model_from_checkpoint
    from cxrlab.models.inference import predict_images

    data = load_run_data(run_dir)
    folder = data.paths.model(recipe)
    ckpt = folder.best_ckpt if recipe_of(recipe)[1] == "best" else folder.last_ckpt
    model, info = load_model_from_checkpoint(ckpt)
    check_compatible(info, data, ckpt)
    model = model.to(device)
    rows = data.rows("test")
    return predict_images(
        model, data.images, rows, info["mean"], info["std"], batch_size=64, tta=tta
    )


def probe_features(base: RunData, work: Path) -> np.ndarray:
    """(N, D) pooled ImageNet Lite0 features of every base image (computed once, saved)."""
    saved = work / "probe_features.npy"
    if saved.is_file():
        return np.load(saved)
    from cxrlab.models import resolve_normalization
    from cxrlab.models.factory import create_model
    from cxrlab.models.inference import to_model_input

    model = create_model(LITE0["name"], len(base.targets), pretrained=True).eval()
    mean, std = resolve_normalization(model)
    out = []
    with torch.inference_mode():
        for start in range(0, len(base.ids), 64):
            x = to_model_input(base.images[start : start + 64], mean, std)
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
    features = np.concatenate(out)
    np.save(saved, features)
    return features


def probe_fold(features: np.ndarray, y: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Test-row probabilities of per-class logistic regressions, C chosen on val AUROC,
    then refitted on train + val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(c: float, rows: np.ndarray, k: int):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        return clf.fit(features[rows], y[rows, k])

    train, val, test = (split == s for s in ("train", "val", "test"))
    probs = np.zeros((test.sum(), y.shape[1]))
    for k in range(y.shape[1]):
        scores = {c: roc_auc_score(y[val, k], fit(c, train, k).predict_proba(features[val])[:, 1])
                  for c in PROBE_C}  # fmt: skip
        best = max(scores, key=scores.get)
        probs[:, k] = fit(best, train | val, k).predict_proba(features[test])[:, 1]
    return probs


def cross_validate(base: RunData, fold: np.ndarray, recipe: str, args) -> dict[str, np.ndarray]:
    """{recipe: (N, K) out-of-fold probabilities[, recipe+tta: the same with TTA]}; folds
    already saved are reused (TTA is added to a saved fold from its checkpoint)."""
    names = [recipe, f"{recipe}+tta"] if args.tta and recipe != PROBE else [recipe]
    out = {name: np.full(base.labels.shape, np.nan) for name in names}
    n_scored = len(base.targets)  # with --fold-targets, the model's extra outputs are dropped
    for f in range(args.score_folds or args.folds):
        saved = args.work / recipe / f"fold{f}.npz"
        run_dir = args.work / f"fold{f}"
        if saved.is_file():
            stored = dict(np.load(saved, allow_pickle=True))  # older folds: object ids
        elif recipe == PROBE:
            split = load_run_data(fold_run(base, fold, f, args.val, args.work)).cohort["split"]
            probs = probe_fold(probe_features(base, args.work), base.labels, split.to_numpy())
            stored = {"probs": probs, "facts": json.dumps({"recipe": "logistic probe"})}
        else:
            run_dir = fold_run(base, fold, f, args.val, args.work)
            facts = run_fold(run_dir, recipe, args)
            probs = fold_probs(run_dir, recipe, tta=False, device=args.device)[:, :n_scored]
            stored = {
                "probs": probs,
                "facts": json.dumps(facts),
                "ids": base.ids[fold == f].astype(str),
            }
            print(f"  {recipe} fold {f}: {facts}", flush=True)
        if args.tta and recipe != PROBE and "probs_tta" not in stored:
            tta = fold_probs(run_dir, recipe, tta=True, device=args.device)
            stored["probs_tta"] = tta[:, :n_scored]
        saved.parent.mkdir(parents=True, exist_ok=True)
        np.savez(saved, **stored)
        out[recipe][fold == f] = stored["probs"]
        if len(names) > 1:
            out[names[1]][fold == f] = stored["probs_tta"]
    return out


def scored_part(base: RunData, rows: np.ndarray) -> SimpleNamespace:
    """What scoring needs of `base` (labels, patients, targets, ids), for `rows` only."""
    return SimpleNamespace(
        labels=base.labels[rows],
        patient_ids=np.asarray(base.patient_ids)[rows],
        targets=base.targets,
        ids=np.asarray(base.ids)[rows],
    )


def pairs(
    base: RunData, oof: dict[str, np.ndarray], n_boot: int, against: str | None = None
) -> dict[str, dict]:
    """Paired differences of every two results, or of each against `against` only."""
    out = {}
    if against is None:
        todo = list(itertools.combinations(oof, 2))
    else:
        todo = [(a, against) for a in oof if a != against]
    for a, b in todo:
        paired = paired_bootstrap(
            base.labels, oof[a], oof[b], base.patient_ids, n_boot=n_boot, targets=base.targets
        )
        out[f"{a} - {b}"] = paired["macro"]
    return out


def _ci(e: dict) -> str:
    if e.get("estimate") is None:
        return "undefined"
    return f"{e['estimate']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def markdown(base: RunData, results: dict, deltas: dict, args) -> str:
    targets = base.targets
    lines = [
        "| recipe | " + " | ".join(targets) + " | pooled macro | fold mean ± sd |",
        "|---" * (len(targets) + 3) + "|",
    ]
    for name, r in results.items():
        cells = [_ci(r["pooled"]["per_class"][t]) for t in targets]
        macro = _ci(r["pooled"]["macro"])
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | **{macro}** | {r['fold_mean']:.3f} ± {r['fold_sd']:.3f} |")  # fmt: skip
    lines += ["", "| paired difference (pooled macro AUROC) | Δ [95% CI] | p |", "|---|---|---|"]
    for label, d in deltas.items():
        p = d.get("p_value")
        delta = _ci({**d, "estimate": d["delta"]})
        lines.append(f"| {label} | {delta} | {p if p is None else f'{p:.3g}'} |")
    lines.append("")
    lines.append(
        f"{args.folds}-fold patient-grouped CV{_partial(args)}, {len(base.ids)} images, "
        f"{len(set(base.patient_ids))} patients, {args.image_size} px; "
        f"bootstrap {args.bootstrap} resamples over patients."
    )
    return "\n".join(lines)


def _partial(args) -> str:
    n = args.score_folds
    return f" (folds 0-{n - 1} scored)" if n and n < args.folds else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, required=True, help="work folder (resumable)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--val", type=float, default=0.15, help="val share of training patients")
    parser.add_argument("--recipes", default="plain,default,probe")
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's")
    parser.add_argument(
        "--score-folds",
        type=int,
        default=None,
        help="train and score only the first N folds (of --folds), for a partial run",
    )
    parser.add_argument("--tta", action="store_true", help="also score each recipe with TTA")
    parser.add_argument("--n-images", type=int, default=None, help="subset (smoke tests)")
    parser.add_argument(
        "--pathologies",
        default=None,
        help="comma-separated targets to prepare and train on (default: cxrlab's four)",
    )
    parser.add_argument(
        "--fold-targets",
        type=int,
        default=None,
        help="folds, val parts and scores use only the first N of --pathologies; the rest "
        "are auxiliary training targets (same folds as a run of those N alone)",
    )
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--device", default="cpu", help="where test folds are predicted")
    parser.add_argument("--precision", default=None, help="train.precision for every recipe")
    parser.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="NAME=A+B",
        help="also score the mean probabilities of recipes A, B, ... (repeatable)",
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="also score saved folds (FOLDER/fold<f>.npz) of another work folder with the "
        "same images and folds, e.g. another --image-size (repeatable)",
    )
    parser.add_argument(
        "--against",
        default=None,
        help="paired differences against this result only (default: all pairs)",
    )
    args = parser.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = sorted(r for r in recipes if not known(r))
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; known: {', '.join([*RECIPES, PROBE])}")
    base = prepare_base(args)
    if args.fold_targets:
        base = scored_targets(base, args.fold_targets)
    fold = assign_folds(base.cohort, base.targets, args.folds, args.seed)
    print(f"{len(base.ids)} images in {args.folds} folds: {np.bincount(fold).tolist()}; "
          f"{platform.node()}, {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    oof = {k: v for r in recipes for k, v in cross_validate(base, fold, r, args).items()}
    oof.update(saved_folds(spec, fold, base.ids, args) for spec in args.extra)
    oof.update(ensemble(spec, oof) for spec in args.ensemble)
    scored = fold < (args.score_folds or args.folds)  # all images, or the first folds' only
    oof = {name: probs[scored] for name, probs in oof.items()}
    base, fold = scored_part(base, scored), fold[scored]
    results = {r: score_folds(base, fold, p, args.bootstrap) for r, p in oof.items()}
    deltas = pairs(base, oof, args.bootstrap, args.against)
    text = markdown(base, results, deltas, args)
    print(text)
    write_json(args.work / "bench_cv.json", {"results": results, "pairs": deltas,
                                             "args": vars(args)})  # fmt: skip
    if args.markdown:
        args.markdown.write_text(text + "\n")


def saved_folds(spec: str, fold: np.ndarray, ids: np.ndarray, args) -> tuple[str, np.ndarray]:
    """(NAME, out-of-fold probabilities) read from FOLDER/fold<f>.npz of `NAME=FOLDER`.

    Folds saved with their image ids are placed by id (another work folder may order its
    cohort differently), and must hold exactly this work's fold; older ones by position."""
    name, _, folder = spec.partition("=")
    stored = [np.load(Path(folder) / f"fold{f}.npz", allow_pickle=True)  # older: object ids
              for f in range(args.score_folds or args.folds)]  # fmt: skip
    probs = np.full((len(fold), stored[0]["probs"].shape[1]), np.nan)
    row_of = {image: row for row, image in enumerate(ids)}
    for f, part in enumerate(stored):
        rows = np.flatnonzero(fold == f)
        if "ids" in part:
            rows = np.array([row_of.get(image, -1) for image in part["ids"]])
            if sorted(rows) != sorted(np.flatnonzero(fold == f)):
                raise SystemExit(f"--extra {spec}: fold {f} holds other images than this work's")
        probs[rows] = part["probs"]
    return name, probs


def ensemble(spec: str, oof: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """(NAME, mean probabilities of the recipes) for `NAME=A+B+...`."""
    name, _, members = spec.partition("=")
    missing = [m for m in members.split("+") if m not in oof]
    if missing:
        raise SystemExit(f"--ensemble {spec}: no results for {missing}; have {sorted(oof)}")
    return name, np.mean([oof[m] for m in members.split("+")], axis=0)


def prepare_base(args) -> RunData:
    """The whole dev set, prepared once at --image-size (its own split is not used)."""
    from cxrlab.data.prepare import prepare

    base = args.work / "base"
    if not RunDir(base).cohort.is_file():
        chosen = {"pathologies": args.pathologies.split(",")} if args.pathologies else {}
        options = DataConfig(
            data_root=str(args.data_root),
            image_size=args.image_size,
            n_images=args.n_images,
            **chosen,
        )
        prepare(options, base, progress=False)
    return load_run_data(base)


def scored_targets(base: RunData, n: int) -> RunData:
    """`base` seen through its first `n` targets: its cohort (and so every fold run's training
    targets) keeps them all, its folds, val parts and scores use these `n`."""
    return dataclasses.replace(base, targets=base.targets[:n], labels=base.labels[:, :n])


if __name__ == "__main__":
    main()

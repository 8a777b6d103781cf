"""Benchmark: real-data test AUROC of SimpleCNN, fine-tuned EfficientNet-Lite0 and a linear probe.

On the real dev set (`../shared/data/nih-cxr14-dev`: 1,108 NIH images, 891 patients), four
targets, a patient-wise split with seed 0, every model trained within a wall-time budget on
this machine's CPUs:

1. `simple_cnn` from scratch;
2. `efficientnet_lite0` from the bundled ImageNet weights, fine-tuned with each strategy in
   --finetune (`lite0_full`, `lite0_ftu` = freeze-then-unfreeze); the one with the best
   *validation* macro AUROC is "the fine-tuned model" (the test split never chooses);
3. `lite0_probe`: the same pretrained network with `strategy: linear-probe` (frozen features).

Each model's epochs are planned from a measured seconds/epoch (the fastest of a few timed
steps through the real module and loader) so that its cosine schedule completes inside
--minutes, and a `TimeBudget` callback stops at an epoch end if the next epoch would overrun
(the machine is shared: epochs can run several times slower while other work runs).
Then every model is evaluated on the test split with
`evaluate_model` (patient-bootstrap 95% CIs), the fine-tuned model is compared with the probe
by a paired patient bootstrap of the macro AUROC difference, and the targets are checked:
fine-tuned macro > probe macro, and SimpleCNN's macro CI lower bound > 0.5.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_accuracy.py --run-dir /tmp/acc [--minutes 20]

Results are printed, written to RUN_DIR/bench_accuracy.json, and (with --markdown FILE) as a
markdown section. --reuse skips training models whose folder already holds a finished run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch

from cxrlab.config import DataConfig, EvaluateConfig, ExperimentConfig, build, deep_merge
from cxrlab.data.rundata import RunData, load_run_data
from cxrlab.evaluate.bootstrap import paired_bootstrap
from cxrlab.evaluate.metrics import read_predictions
from cxrlab.evaluate.workflow import evaluate_model
from cxrlab.runinfo import read_json, write_json
from cxrlab.train.augment import normalize
from cxrlab.train.data import make_loader
from cxrlab.train.engine import train_model
from cxrlab.train.module import ChestXrayClassifier

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "nih-cxr14-dev"

#: Settings every model shares (those of configs/nih-4class.yaml).
COMMON: dict[str, Any] = {
    "train": {"batch_size": 32, "patience": 5, "seed": 0, "epochs": 30},
    "optim": {"name": "adamw", "weight_decay": 1e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
}
LITE0 = {"name": "efficientnet_lite0", "pretrained": True}  # bundled weights, no download
#: The models, as config overrides on COMMON. SimpleCNN: one conv per stage, width 16, five
#: stages (16..256 channels): ~4x cheaper per step than the 32-wide, two-conv default, so it
#: gets several times more epochs in the budget on two CPU cores.
MODELS: dict[str, dict[str, Any]] = {
    "simple_cnn": {
        "model": {
            "name": "simple_cnn",
            "kwargs": {"base_width": 16, "depth": 5, "convs_per_block": 1},
        },
        "optim": {"lr": 1e-3},
    },
    "lite0_full": {"model": LITE0, "optim": {"lr": 3e-4}, "train": {"strategy": "full"}},
    # head at lr, backbone at lr * backbone_lr_mult (0.1) once unfrozen after 2 epochs
    "lite0_ftu": {
        "model": LITE0,
        "optim": {"lr": 1e-3},
        "train": {"strategy": "freeze-then-unfreeze", "freeze_epochs": 2},
    },
    # a higher lr than fine-tuning: only the 1280x4 head learns, so it can move faster
    "lite0_probe": {"model": LITE0, "optim": {"lr": 3e-3}, "train": {"strategy": "linear-probe"}},
}
FINETUNE = {"full": "lite0_full", "freeze-then-unfreeze": "lite0_ftu"}
PROBE = "lite0_probe"


class TimeBudget(L.Callback):
    """Stop at an epoch end when one more epoch (as long as the longest so far) would take
    training past `seconds`.

    Lightning's `Timer` stops only once the time is already spent, so a run overshoots by up
    to an epoch; looking one epoch ahead keeps each model inside its budget.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.stopped = False
        self._start = self._last = 0.0
        self._longest = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        self._longest = max(self._longest, now - self._last)
        self._last = now
        if now - self._start + self._longest > self.seconds and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped = True


def prepare_run(run_dir: Path, data_root: Path, image_size: int, seed: int) -> None:
    """`cxrlab prepare` with the default 4 targets and 0.15/0.15 split, unless already done."""
    from cxrlab.data.prepare import prepare

    if (run_dir / "data" / "cache" / "meta.json").is_file():
        print(f"run dir {run_dir} already prepared; reusing it")
        return
    options = build(
        DataConfig,
        {"data_root": str(data_root), "image_size": image_size, "seed": seed, "workers": 1},
    )
    prepare(options, run_dir, progress=False)


def experiment(name: str, epochs: int | None = None) -> ExperimentConfig:
    config = deep_merge(COMMON, MODELS[name])
    if epochs is not None:
        config = deep_merge(config, {"train": {"epochs": epochs}})
    return build(ExperimentConfig, config, source=f"bench model {name}")


def _timed(fn, repeats: int) -> float:
    """Fastest of `repeats` timed calls of `fn`, after one untimed warm-up call.

    The fastest, not the mean: on a shared machine a burst of other work can make the mean
    several times too slow, and under-planned epochs waste the budget; when the load does
    stay high, `TimeBudget` stops the run in time instead.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def estimate_epoch_seconds(data: RunData, config: ExperimentConfig, steps: int) -> float:
    """Seconds per epoch (train + validation) from `steps` timed steps of the real module:
    augmentation, forward, BCE, backward and AdamW on the parameters the strategy trains."""
    module = ChestXrayClassifier(config.model_dump(mode="json"), data.targets, data.image_size)
    module.train()
    # freeze-then-unfreeze is timed unfrozen: its later, slower epochs set the pace
    module.set_backbone_frozen(config.train.strategy == "linear-probe")
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.optim.lr)
    bs = config.train.batch_size
    train_loader = make_loader(data, "train", bs, train=True, rank=0, world_size=1)
    val_loader = make_loader(data, "val", bs, train=False, rank=0, world_size=1)
    x, y, _ = next(iter(train_loader))
    gen = torch.Generator().manual_seed(0)

    def train_step() -> None:
        loss = module.loss(module(module.augment(x, gen)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    xv = next(iter(val_loader))[0]

    def val_step() -> None:
        with torch.no_grad():
            module.eval()(normalize(xv, module.mean, module.std))

    train_s = _timed(train_step, steps)
    val_s = _timed(val_step, max(1, steps // 2))
    return len(train_loader) * train_s + len(val_loader) * val_s


def train_within_budget(
    run_dir: Path,
    name: str,
    budget_s: float,
    steps: int,
    max_epochs: int,
    fixed_epochs: int | None = None,
) -> dict[str, Any]:
    """Plan epochs from a timed estimate (or take `fixed_epochs`), train under `TimeBudget`,
    and return the record."""
    data = load_run_data(run_dir)
    start = time.perf_counter()
    epoch_s = estimate_epoch_seconds(data, experiment(name), steps)
    estimate_s = time.perf_counter() - start
    left = budget_s - estimate_s
    # 0.9: head-room for a shared machine; the callback is the hard stop
    epochs = fixed_epochs or int(min(max_epochs, max(1, math.floor(0.9 * left / epoch_s))))
    print(f"[{name}] estimated {epoch_s:.0f} s/epoch ({estimate_s:.0f} s to measure) -> "
          f"{epochs} epochs planned in {left / 60:.1f} min", flush=True)  # fmt: skip
    budget = TimeBudget(left)
    result = train_model(
        run_dir,
        experiment(name, epochs),
        name=name,
        overwrite=True,
        callbacks=[budget],
        progress_bar=False,
    )
    seconds = time.perf_counter() - start
    epoch_seconds = pd.read_csv(result.model_dir / "metrics.csv")["seconds"]
    return {
        "estimated_epoch_s": epoch_s,
        "planned_epochs": epochs,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_auroc": result.best_val_auroc,
        "stopped_early": result.stopped_early,
        "stopped_by_budget": budget.stopped,
        "seconds": seconds,  # estimate + training, wall
        "budget_s": budget_s,
        "epoch_s_mean": float(epoch_seconds.mean()),  # measured, train + validation
    }


def evaluate(run_dir: Path, name: str, n_boot: int) -> dict[str, Any]:
    """Test per-class and macro AUROC with patient-bootstrap 95% CIs."""
    result = evaluate_model(run_dir, name, EvaluateConfig(bootstrap=n_boot), progress=False)
    ci = result["ci"]
    out = {t: ci["per_class"][t]["auroc"] for t in result["metrics"]["targets"]}
    out["macro"] = ci["macro"]["auroc"]
    return out


def paired_delta(run_dir: Path, a: str, b: str, n_boot: int) -> dict[str, Any]:
    """Macro test AUROC of `a` minus `b` on the same images, paired patient bootstrap."""
    pa = read_predictions(run_dir / "reports" / a / "test" / "predictions.csv")
    pb = read_predictions(run_dir / "reports" / b / "test" / "predictions.csv")
    if not np.array_equal(pa.y, pb.y):
        raise SystemExit(f"{a} and {b} were not evaluated on the same test images")
    return paired_bootstrap(pa.y, pa.p, pb.p, pa.patient_ids, n_boot=n_boot, targets=pa.targets)[
        "macro"
    ]


def _ci(entry: dict[str, Any]) -> str:
    if entry.get("estimate") is None:
        return "undefined"
    if entry.get("low") is None:
        return f"{entry['estimate']:.3f}"
    return f"{entry['estimate']:.3f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def results_table(results: dict[str, Any], targets: list[str], positives: dict[str, int]) -> str:
    """Markdown table: one row per model, per-class and macro test AUROC with 95% CIs."""
    head = [f"{t} (n+={positives[t]})" for t in targets]
    cols = ["model", *head, "macro", "epochs (best)", "train s", "s/epoch"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in results["models"].items():
        t = r["train"]
        best = "-" if t["best_epoch"] is None else t["best_epoch"] + 1
        cells = [name, *(_ci(r["test"][k]) for k in targets), _ci(r["test"]["macro"])]
        cells += [f"{t['epochs_run']}/{t['planned_epochs']} ({best})", f"{t['seconds']:.0f}"]
        cells.append(f"{t['epoch_s_mean']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: dict[str, Any]) -> list[str]:
    """The two targets, each with the numbers that decide it."""
    models, lines = results["models"], []
    ft = results.get("finetuned")
    if ft and PROBE in models:
        a, b = models[ft]["test"]["macro"]["estimate"], models[PROBE]["test"]["macro"]["estimate"]
        d = results["finetuned_vs_probe"]
        holds = "HOLDS" if a > b else "FAILS"
        lines.append(
            f"fine-tuned ({ft}) macro {a:.3f} > probe macro {b:.3f}: {holds}"
            f" (paired Δ {d['delta']:+.3f}, 95% CI [{d['low']:+.3f}, {d['high']:+.3f}],"
            f" p={d['p_value']:.3f})"
            + (" - within noise: the paired CI includes 0" if d["low"] <= 0 <= d["high"] else "")
        )
    if "simple_cnn" in models:
        m = models["simple_cnn"]["test"]["macro"]
        holds = "HOLDS" if (m["low"] or 0) > 0.5 else "FAILS"
        lines.append(f"SimpleCNN macro {_ci(m)}: CI lower bound > 0.5 {holds}")
    return lines


def choose_finetuned(results: dict[str, Any]) -> str | None:
    """The fine-tuning strategy with the best *validation* macro AUROC (never the test's)."""
    candidates = [n for n in FINETUNE.values() if n in results["models"]]
    scores = {n: results["models"][n]["train"]["best_val_auroc"] or -1.0 for n in candidates}
    return max(scores, key=scores.get) if scores else None


def machine() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{platform.platform()}, {os.cpu_count()} CPU cores (shared), torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads, load average {load}"
    )


def test_positives(run_dir: Path) -> tuple[list[str], dict[str, int], int]:
    data = load_run_data(run_dir)
    rows = data.rows("test")
    counts = data.labels[rows].sum(axis=0)
    return data.targets, {t: int(c) for t, c in zip(data.targets, counts, strict=True)}, len(rows)


def run_model(run_dir: Path, name: str, args: argparse.Namespace, previous: dict) -> dict:
    """Train (or reuse a finished run of) `name`, then evaluate it on the test split."""
    finished = (run_dir / "models" / name / "run.json").is_file() and read_json(
        run_dir / "models" / name / "run.json"
    ).get("finished")
    reuse = args.reuse and name not in args.retrain
    if reuse and finished and name in previous.get("models", {}):
        print(f"[{name}] reusing the finished run in {run_dir / 'models' / name}", flush=True)
        record = previous["models"][name]["train"]
    else:
        budget_s = args.minutes * 60
        record = train_within_budget(
            run_dir, name, budget_s, args.steps, args.max_epochs, args.epochs.get(name)
        )
    start = time.perf_counter()
    test = evaluate(run_dir, name, args.n_boot)
    print(f"[{name}] {record['epochs_run']} epochs in {record['seconds']:.0f} s; test macro AUROC"
          f" {_ci(test['macro'])} (evaluated in {time.perf_counter() - start:.0f} s)",
          flush=True)  # fmt: skip
    return {"train": record, "test": test}


def markdown(results: dict[str, Any], table: str, verdicts: list[str]) -> str:
    n_test, pos = results["n_test"], results["test_positives"]
    budget = max(r["train"]["budget_s"] for r in results["models"].values()) / 60
    return "\n".join(
        [
            "## Real-data accuracy (NIH dev set, 4 targets)",
            "",
            f"Command: `{results['command']}`  ",
            f"Machine: {results['machine']}  ",
            f"Date: {results['date']}; budget {budget:g} min wall per model (estimate included).",
            "",
            f"Test AUROC with patient-bootstrap 95% CIs ({results['n_boot']} resamples) on"
            f" {n_test} test images; n+ = positives per class. The test split is small"
            f" (Pneumothorax: {pos.get('Pneumothorax', '?')} positives), so the CIs are wide.",
            "",
            table,
            "",
            *[f"- {v}" for v in verdicts],
            "",
        ]
    )


def parse_epochs(items: list[str]) -> dict[str, int]:
    """`["lite0_probe=30"]` -> `{"lite0_probe": 30}`, checking names and counts."""
    out = {}
    for item in items:
        name, _, count = item.partition("=")
        if name not in MODELS or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--epochs {item!r}: expected NAME=N, N >= 1, NAME in {list(MODELS)}")
        out[name] = int(count)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="run dir (made if absent)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--minutes", type=float, default=20.0, help="wall budget per model")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--finetune", nargs="+", choices=sorted(FINETUNE), default=sorted(FINETUNE))
    parser.add_argument("--skip", nargs="*", default=[], help="model names not to run")
    parser.add_argument("--steps", type=int, default=3, help="timed steps for the estimate")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument(
        "--epochs",
        nargs="*",
        default=[],
        metavar="NAME=N",
        help="fixed epochs for a model instead of the plan (the budget still stops it)",
    )
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--reuse", action="store_true", help="keep finished model runs")
    parser.add_argument("--retrain", nargs="*", default=[], help="with --reuse: train these")
    parser.add_argument("--markdown", type=Path, help="also write the results section here")
    args = parser.parse_args()
    args.epochs = parse_epochs(args.epochs)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(os.cpu_count() or 1)
    if not args.data_root.is_dir() and not (args.run_dir / "data").is_dir():
        raise SystemExit(f"data root {args.data_root} not found (the real NIH dev set)")
    prepare_run(args.run_dir, args.data_root, args.image_size, args.seed)
    out = args.run_dir / "bench_accuracy.json"
    previous = read_json(out) if out.is_file() else {}
    targets, positives, n_test = test_positives(args.run_dir)
    names = ["simple_cnn", *(FINETUNE[s] for s in args.finetune), PROBE]
    print(
        f"machine: {machine()}\nmodels: {', '.join(names)}; {args.minutes:g} min each", flush=True
    )
    results: dict[str, Any] = {
        "command": "bench/bench_accuracy.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "minutes": args.minutes,
        "n_boot": args.n_boot,
        "n_test": n_test,
        "test_positives": positives,
        "models": {},
    }
    for name in (n for n in names if n not in args.skip):
        results["models"][name] = run_model(args.run_dir, name, args, previous)
        write_json(out, results)
    results["finetuned"] = choose_finetuned(results)
    if results["finetuned"] and PROBE in results["models"]:
        delta = paired_delta(args.run_dir, results["finetuned"], PROBE, args.n_boot)
        results["finetuned_vs_probe"] = delta
    results["machine_end"] = machine()
    write_json(out, results)
    table = results_table(results, targets, positives)
    verdicts = verdict(results)
    print(f"\ntest AUROC, 95% CI ({n_test} images; n+ = positives)\n{table}\n")
    print("\n".join(verdicts))
    if args.markdown:
        args.markdown.write_text(markdown(results, table, verdicts))


if __name__ == "__main__":
    main()

"""Benchmark: what the training data path costs, and seconds per epoch per model.

1. Data-path overhead, in one run (the machines are noisy, so read the ratio): training
   steps fed through the real path (cache memmap -> seeded batch sampler -> DataLoader ->
   batch augmentation) against the same model stepping on batches already in memory
   (augmented and normalised beforehand). ratio = in-memory time / data-path time; 1.0 means
   the data path is free, and it must stay >= 0.95. Rounds interleave the two feeds and
   each keeps its best round.
2. Seconds per epoch for each model on RUN_DIR: train steps through the data path plus a
   validation pass, timed over --steps batches and scaled to the split sizes (an estimate,
   labelled so), or measured by a real one-epoch `train_model` with --full-epoch.

    .venv/bin/python bench/bench_train.py [--run-dir RUN_DIR] [--size 224] [--batch-size 32]

Without --run-dir a synthetic run directory (tests/helpers_run.make_tiny_run) of --size
pixels is built in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from cxrlab.config import AugmentConfig
from cxrlab.data.rundata import RunData, load_run_data
from cxrlab.models import create_model, resolve_normalization
from cxrlab.train.augment import BatchAugment, normalize
from cxrlab.train.data import make_loader

REPO = Path(__file__).resolve().parents[1]
OVERHEAD_MODELS = ("simple_cnn", "resnet18")
EPOCH_MODELS = ("simple_cnn", "resnet18", "efficientnet_lite0", "efficientnet_b0", "densenet121")


def make_step(model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One optimiser step of BCE training, as the LightningModule does it."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def data_path(data: RunData, batch_size: int, augment: BatchAugment, epoch: int, steps: int):
    """Yield `steps` (x, y) training batches through the real path (epoch-seeded)."""
    loader = make_loader(data, "train", batch_size, train=True, seed=0, rank=0, world_size=1)
    loader.sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(epoch)
    while True:
        for x, y, _ in loader:
            yield augment(x, gen), y
            steps -= 1
            if steps == 0:
                return


def timed(step: Callable, batches: Iterable) -> float:
    start = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return time.perf_counter() - start


def overhead(data: RunData, name: str, batch_size: int, steps: int, rounds: int) -> dict:
    """Best-of-`rounds` seconds for `steps` steps fed from memory and from the data path."""
    model = create_model(name, len(data.targets)).train()
    mean, std = resolve_normalization(model)
    augment = BatchAugment(AugmentConfig(), mean, std)
    step = make_step(model)
    memory = list(data_path(data, batch_size, augment, epoch=0, steps=steps))
    timed(step, memory[:2])  # warm-up: allocator, kernels
    best = {"memory": float("inf"), "data_path": float("inf"), "path_only": float("inf")}
    for r in range(rounds):
        best["memory"] = min(best["memory"], timed(step, memory))
        feed = data_path(data, batch_size, augment, epoch=r + 1, steps=steps)
        best["data_path"] = min(best["data_path"], timed(step, feed))
        feed = data_path(data, batch_size, augment, epoch=r + 1, steps=steps)
        best["path_only"] = min(best["path_only"], timed(lambda x, y: None, feed))
    return {**best, "ratio": best["memory"] / best["data_path"]}


def epoch_estimate(data: RunData, name: str, batch_size: int, steps: int) -> dict:
    """Seconds per epoch from `steps` timed train steps and validation batches."""
    model = create_model(name, len(data.targets)).train()
    mean, std = resolve_normalization(model)
    augment = BatchAugment(AugmentConfig(), mean, std)
    step = make_step(model)
    timed(step, data_path(data, batch_size, augment, epoch=0, steps=1))  # warm-up
    train_s = timed(step, data_path(data, batch_size, augment, epoch=1, steps=steps)) / steps
    val = make_loader(data, "val", batch_size, train=False, rank=0, world_size=1)
    model.eval()
    start, n = time.perf_counter(), 0
    with torch.no_grad():
        for x, _, _ in val:
            model(normalize(x, mean, std))
            n += 1
            if n == steps:
                break
    val_s = (time.perf_counter() - start) / n
    train_batches = len(make_loader(data, "train", batch_size, train=True, rank=0, world_size=1))
    return {
        "train_step_s": train_s,
        "val_step_s": val_s,
        "epoch_s": train_batches * train_s + len(val) * val_s,
    }


def full_epoch(run_dir: Path, name: str, batch_size: int) -> float:
    """Seconds of one real `train_model` epoch (train + validation), from metrics.csv."""
    import pandas as pd

    from cxrlab.train.engine import train_model

    config = {"model": {"name": name}, "train": {"epochs": 1, "batch_size": batch_size}}
    result = train_model(run_dir, config, name=f"bench_{name}", overwrite=True, progress_bar=False)
    return float(pd.read_csv(result.model_dir / "metrics.csv")["seconds"].iloc[0])


def synthetic_run(size: int, n: int) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers_run import make_tiny_run

    return make_tiny_run(tempfile.mkdtemp(prefix="bench_train_"), n=n, size=size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, help="prepared run dir (default: synthetic)")
    parser.add_argument("--size", type=int, default=224, help="synthetic image size")
    parser.add_argument("--n", type=int, default=400, help="synthetic images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overhead-models", nargs="*", default=list(OVERHEAD_MODELS))
    parser.add_argument("--epoch-models", nargs="*", default=list(EPOCH_MODELS))
    parser.add_argument("--full-epoch", action="store_true", help="time real epochs instead")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_dir = args.run_dir or synthetic_run(args.size, args.n)
    data = load_run_data(run_dir)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}")  # fmt: skip
    print(f"run dir: {run_dir} ({'given' if args.run_dir else 'synthetic'}), "
          f"{len(data.rows('train'))} train / {len(data.rows('val'))} val images at "
          f"{data.image_size} px, batch {args.batch_size}")  # fmt: skip
    print("\n1. data-path overhead (best of rounds; ratio = memory / data path, >= 0.95 wanted)")
    for name in args.overhead_models:
        r = overhead(data, name, args.batch_size, args.steps, args.rounds)
        per = 1000 / args.steps
        print(f"  {name:18s} memory {r['memory'] * per:8.1f} ms/step  data path "
              f"{r['data_path'] * per:8.1f} ms/step  (path alone {r['path_only'] * per:6.1f} "
              f"ms/batch)  ratio {r['ratio']:.3f}")  # fmt: skip
    print("\n2. seconds per epoch" + (" (measured)" if args.full_epoch else " (estimated)"))
    for name in args.epoch_models:
        if args.full_epoch:
            print(f"  {name:18s} {full_epoch(run_dir, name, args.batch_size):8.1f} s/epoch")
            continue
        r = epoch_estimate(data, name, args.batch_size, args.steps)
        train_ms, val_ms = r["train_step_s"] * 1000, r["val_step_s"] * 1000
        print(f"  {name:18s} train {train_ms:8.1f} ms/step  val {val_ms:7.1f} ms/batch"
              f"  -> {r['epoch_s']:8.1f} s/epoch")  # fmt: skip


if __name__ == "__main__":
    main()

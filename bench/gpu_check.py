"""GPU check: train, evaluate, analyze and explain on a CUDA GPU; print the figures.

Run through `bench/gpu_check.sh` (it exits 0 with one line on a machine without a GPU).
On synthetic NIH-layout data (no download), for EfficientNet-Lite0 (bundled ImageNet
weights) and DenseNet-121 (random init: no hub offline):

1. one training epoch with mixed precision (`train.precision`), train images/s;
2. evaluate, analyze and explain with `device=cuda`, each stage's seconds, and the
   inference images/s of `predict_images` (autocast on CUDA);
3. the data-path ratio: training steps fed from the memmap cache through the DataLoader,
   host-to-device copy and on-GPU batch augmentation, against the same steps on uint8
   batches already resident on the GPU. ratio = resident time / data-path time; target
   >= 0.9 (the cache and augmentation keep the GPU busy).

    bash bench/gpu_check.sh                 # on the GPU machine
    python bench/gpu_check.py --device cpu --patients 24 --size 64 --steps 2   # smoke test

Figures go to stdout and, as JSON, to --json (default: $OUT/gpu_check.json when $OUT is set).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cxrlab.config import (
    AnalyzeConfig,
    AugmentConfig,
    DataConfig,
    EvaluateConfig,
    ExplainConfig,
)
from cxrlab.data.prepare import prepare
from cxrlab.data.rundata import RunData, load_run_data
from cxrlab.models.checkpoint import load_trained
from cxrlab.models.inference import autocast, predict_images, resolve_device
from cxrlab.synth import write_synthetic_dataset
from cxrlab.train.augment import BatchAugment
from cxrlab.train.data import make_loader

MODELS = {"efficientnet_lite0": True, "densenet121": False}  # name -> bundled weights
TARGETS = ["Atelectasis", "Cardiomegaly", "Effusion", "Pneumothorax"]


def build_run(root: Path, patients: int, size: int, workers: int) -> RunData:
    data_root = root / "synthetic"
    write_synthetic_dataset(
        data_root, patients=patients, seed=0, image_size=256, workers=max(1, workers)
    )
    options = DataConfig(
        data_root=str(data_root), pathologies=TARGETS, image_size=size, workers=max(1, workers)
    )
    prepare(options, root / "run", progress=False)
    return load_run_data(root / "run")


def train_one(data: RunData, name: str, pretrained: bool, args) -> dict:
    from cxrlab.train.engine import train_model

    precision = "32" if args.device == "cpu" else args.precision
    config = {
        "model": {"name": name, "pretrained": pretrained},
        "train": {
            "epochs": 1,
            "batch_size": args.batch_size,
            "precision": precision,
            "accelerator": "cpu" if args.device == "cpu" else "gpu",
            "devices": 1,
            "num_workers": args.workers,
        },  # fmt: skip
    }
    start = time.perf_counter()
    train_model(data.run_dir, config, name=name, overwrite=True, progress_bar=False)
    seconds = time.perf_counter() - start
    n = len(data.rows("train")) + len(data.rows("val"))
    return {"train_s": seconds, "train_images_per_s": n / seconds}


def stages(data: RunData, name: str, args) -> dict:
    from cxrlab.analysis.workflow import analyze_model
    from cxrlab.evaluate.workflow import evaluate_model
    from cxrlab.explain.workflow import explain_model

    out = {}
    calls = {
        "evaluate_s": lambda: evaluate_model(
            data.run_dir, name, EvaluateConfig(device=args.device, bootstrap=200), progress=False
        ),
        "analyze_s": lambda: analyze_model(
            data.run_dir, name, AnalyzeConfig(device=args.device, n_components=10), progress=False
        ),
        "explain_s": lambda: explain_model(
            data.run_dir, name, ExplainConfig(device=args.device, per_group=2), progress=False
        ),
    }
    for key, call in calls.items():
        start = time.perf_counter()
        call()
        out[key] = time.perf_counter() - start
    return out


def inference_rate(data: RunData, name: str, args) -> float:
    trained = load_trained(data, name, args.device)
    rows = data.rows("test")
    predict = lambda: predict_images(  # noqa: E731
        trained.model, data.images, rows, trained.mean, trained.std, batch_size=256
    )
    predict()  # warm-up: cuDNN autotuning, allocator
    _sync(trained.device)
    start = time.perf_counter()
    predict()
    _sync(trained.device)
    return len(rows) / (time.perf_counter() - start)


def data_path_ratio(data: RunData, name: str, args) -> dict:
    """Best-of-3 seconds of `steps` steps: real data path vs uint8 batches on the GPU.
    Each round's loader is new, so its workers' start-up and first batch are left out of
    the timing (the H200 figure of 2026-12-04, ratio 0.67, still included them)."""
    device = resolve_device(args.device)
    trained = load_trained(data, name, args.device)
    model = trained.model.train()
    augment = BatchAugment(AugmentConfig(), trained.mean, trained.std)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step(x_u8: torch.Tensor, y: torch.Tensor) -> None:
        x = augment(x_u8.to(device, non_blocking=True), gen)
        with autocast(device):
            loss = F.binary_cross_entropy_with_logits(model(x).float(), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def real() -> list:
        loader = make_loader(
            data, "train", args.batch_size, train=True, seed=0, rank=0, world_size=1,
            num_workers=args.workers, pin_memory=device.type == "cuda",
        )  # fmt: skip
        return [(x, y) for x, y, _ in _take(loader, args.steps)]

    resident = [(x.to(device), y.to(device)) for x, y in real()]
    best = {"resident_s": float("inf"), "data_path_s": float("inf")}
    for _ in range(3):
        best["resident_s"] = min(best["resident_s"], _timed(step, resident, device))
        loader = make_loader(
            data, "train", args.batch_size, train=True, seed=0, rank=0, world_size=1,
            num_workers=args.workers, pin_memory=device.type == "cuda",
        )  # fmt: skip
        batches = _take(loader, args.steps + 1)
        next(batches)  # workers started and the first batch in: start-up is not throughput
        feed = ((x, y) for x, y, _ in batches)
        best["data_path_s"] = min(best["data_path_s"], _timed(step, feed, device))
    return {**best, "ratio": best["resident_s"] / best["data_path_s"]}


def _take(loader, steps: int):
    while True:
        for batch in loader:
            yield batch
            steps -= 1
            if steps == 0:
                return


def _timed(step, batches, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for x, y in batches:
        step(x, y)
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    parser.add_argument("--patients", type=int, default=400, help="synthetic patients")
    parser.add_argument("--size", type=int, default=224, help="cached image size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="16-mixed", help="training precision on CUDA")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--steps", type=int, default=20, help="steps per data-path round")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    for noisy in ("lightning.pytorch", "lightning.fabric"):  # hardware banner and tips
        logging.getLogger(noisy).setLevel(logging.WARNING)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"gpu_check on {name or device}, torch {torch.__version__}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    start = time.perf_counter()
    data = build_run(root, args.patients, args.size, args.workers)
    print(f"synthetic run: {len(data.ids)} images at {args.size} px "
          f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    figures: dict = {"device": name, "images": len(data.ids), "size": args.size}
    for model, pretrained in MODELS.items():
        row = train_one(data, model, pretrained, args)
        row |= stages(data, model, args)
        row["inference_images_per_s"] = inference_rate(data, model, args)
        figures[model] = row
        print(model, " ".join(f"{k}={v:.3g}" for k, v in row.items()), flush=True)
    ratio = data_path_ratio(data, "efficientnet_lite0", args)
    figures["data_path"] = ratio
    print("data path vs GPU-resident batches (efficientnet_lite0): "
          + " ".join(f"{k}={v:.3g}" for k, v in ratio.items()), flush=True)  # fmt: skip
    out = os.environ.get("OUT")
    target = args.json or (Path(out) / "gpu_check.json" if out else None)
    if target:
        target.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {target}")


if __name__ == "__main__":
    main()

"""Benchmark the analysis stage: feature extraction overhead, PCA and K-Means time.

1. Feature extraction (hooks on every `feature_info` layer + penultimate) against a plain
   `model(x)` loop over the same batches, in one run; prints the time ratio.
2. `ClusterAnalysis` (PCA to 50 components, K-Means for k = 2..10 with silhouette) on random
   (N, C) features, once with the library's default threads and once capped to one thread
   with threadpoolctl (`n_threads=1`): on a busy machine OpenMP's spinning threads in K-Means
   can be several times slower than one thread.

Usage: HF_HUB_OFFLINE=1 python bench/bench_analysis.py [--model resnet18] [--n 10000]
Results go into docs/benchmarks.md with the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import timm
import torch

from cxrlab.analysis.embedding import ClusterAnalysis
from cxrlab.analysis.features import extract_features, list_layers


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_extraction(
    model_name: str, n_batches: int, batch: int, size: int, device: str, repeats: int
) -> None:
    model = timm.create_model(model_name, pretrained=False, num_classes=4, in_chans=1)
    model = model.eval().to(device)
    gen = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(batch, 1, size, size, generator=gen).to(device) for _ in range(n_batches)
    ]
    layers = list_layers(model)

    def plain() -> None:
        with torch.inference_mode():
            for x in batches:
                model(x)

    def hooked() -> None:
        extract_features(model, batches, layers, device=device)

    plain(), hooked()  # warm-up: allocator, kernels
    runs = [(_timed(plain), _timed(hooked)) for _ in range(repeats)]  # interleaved: same load
    t_plain, t_hooked = min(r[0] for r in runs), min(r[1] for r in runs)
    n = n_batches * batch
    print(
        f"extraction  {model_name} on {device}, {n} images {size}px, {len(layers)} layers, "
        f"best of {repeats} interleaved runs (torch threads {torch.get_num_threads()})"
    )
    print(f"  plain model(x) loop   {t_plain:7.2f} s  ({n / t_plain:6.1f} img/s)")
    print(f"  extract_features      {t_hooked:7.2f} s  ({n / t_hooked:6.1f} img/s)")
    print(f"  ratio extract/plain   {t_hooked / t_plain:7.2f}")


def bench_clustering(n: int, channels: int, k_max: int) -> None:
    rng = np.random.default_rng(0)
    X = np.maximum(rng.normal(size=(n, channels)), 0).astype(np.float32)  # post-ReLU-like
    print(f"clustering  random {n} x {channels}, PCA 50, k = 2..{k_max}, n_init 10")
    for n_threads in (None, 1):
        ca = ClusterAnalysis(
            k_range=(2, k_max), n_components=50, random_state=0, n_threads=n_threads
        )
        t = _timed(lambda ca=ca: ca.fit(X))
        label = "default threads" if n_threads is None else f"n_threads={n_threads}"
        print(f"  ClusterAnalysis.fit ({label:15s}) {t:7.2f} s")
    from sklearn.decomposition import PCA

    t_pca = _timed(lambda: PCA(50, random_state=0).fit_transform(X))
    print(f"  of which PCA alone (default threads) {t_pca:7.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--k-max", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["extraction", "clustering"], default=None)
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine  {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load:.1f}"
    )
    if args.only in (None, "extraction"):
        bench_extraction(
            args.model, args.batches, args.batch_size, args.size, args.device, args.repeats
        )
    if args.only in (None, "clustering"):
        bench_clustering(args.n, args.channels, args.k_max)


if __name__ == "__main__":
    main()

"""Benchmark: how fast `build_cache` turns real 1024x1024 NIH PNGs into a 224 px cache.

Compares, in one run (the machines are noisy, so read the ratios): the PNG decode floor
(`Image.open(p).load()`), the plain PIL loop (`open -> convert("L") -> resize`), cxrlab's
per-image transform without any cache I/O, `build_cache` with 1 and 2 worker processes, and
an alternative design where workers return arrays to the parent, which writes them.

    .venv/bin/python bench/bench_cache.py [--images DIR] [--repeat 3] [--tile 5]

Each timing is the best of --repeat interleaved rounds. --tile lists the image folder that
many times (as distinct rows), so a worker pool's start-up is amortised as in a real build.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from cxrlab.data.cache import build_cache
from cxrlab.data.imaging import read_square_u8

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXRLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_IMAGES = SHARED / "nih-cxr14-dev" / "full_res"


def best_of(repeat: int, runs: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Fastest wall time (s) of each run over `repeat` rounds. Rounds interleave the runs,
    so a burst of load from elsewhere on the machine slows all of them, not one."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def decode_floor(paths: list[Path]) -> None:
    for path in paths:
        with Image.open(path) as image:
            image.load()


def pil_loop(paths: list[Path], size: int) -> None:
    for path in paths:
        Image.open(path).convert("L").resize((size, size))


def cxrlab_transform(paths: list[Path], size: int) -> None:
    for path in paths:
        read_square_u8(path, size)


def build(paths: list[Path], size: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        ids = [f"{i}:{p.name}" for i, p in enumerate(paths)]
        build_cache(paths, ids, folder, size, workers=workers, progress=False)


def _squares(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([read_square_u8(p, size) for p in paths])  # (chunk, S, S)


def build_returning_arrays(paths: list[Path], size: int, workers: int, chunk: int = 16) -> None:
    """The alternative design: workers send pixels back; the parent writes the memmap."""
    with tempfile.TemporaryDirectory() as folder:
        images = np.memmap(
            Path(folder) / "images.u8", np.uint8, "w+", shape=(len(paths), size, size)
        )
        starts = range(0, len(paths), chunk)
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            blocks = pool.map(
                _squares, [paths[s : s + chunk] for s in starts], [size] * len(starts)
            )
            for start, block in zip(starts, blocks, strict=True):
                images[start : start + len(block)] = block
        images.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of PNGs")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing; best is kept")
    parser.add_argument("--tile", type=int, default=5, help="list the folder this many times")
    parser.add_argument("--size", type=int, default=224, help="cache side S")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = sorted(args.images.glob("*.png"))
    if not files:
        print(f"no PNGs in {args.images}; pass --images DIR (see ../shared/data/README.md)")
        return 2
    paths = files * args.tile
    size, n = args.size, len(paths)
    print(
        f"{len(files)} PNGs x {args.tile} = {n} images from {args.images}, S={size}, "
        f"best of {args.repeat}; {platform.machine()} {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, Pillow {PIL.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    runs: dict[str, Callable[[], object]] = {
        "PNG decode only (floor)": lambda: decode_floor(paths),
        "plain PIL loop": lambda: pil_loop(paths, size),
        "read_square_u8 loop, no I/O": lambda: cxrlab_transform(paths, size),
        "build_cache workers=1": lambda: build(paths, size, 1),
        "build_cache workers=2": lambda: build(paths, size, 2),
        "workers=2, arrays to parent": lambda: build_returning_arrays(paths, size, 2),
    }
    best = best_of(args.repeat, runs)
    floor, baseline = best["PNG decode only (floor)"], best["plain PIL loop"]
    print(f"{'method':<30} {'s':>7} {'img/s':>8} {'vs PIL loop':>12} {'floor/time':>11}")
    for name, seconds in best.items():
        print(
            f"{name:<30} {seconds:7.3f} {n / seconds:8.1f} {baseline / seconds:11.2f}x "
            f"{floor / seconds:10.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

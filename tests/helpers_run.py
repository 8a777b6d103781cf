"""A tiny, valid, *learnable* run directory for training tests (no PNGs, no prepare).

Each target k has its own spot on the image; a positive image shows a bright blob there,
so even a small CNN learns the labels in a few epochs. The cache is written in the
`cxrlab.data.cache` format directly (images.u8, done.u8, meta.json with `complete: true`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.cache import FORMAT, ids_sha256
from cxrlab.runinfo import sha256_json

DEFAULT_TINY_TARGETS = ("Atelectasis", "Effusion")


def make_tiny_run(
    tmp_path: str | Path,
    n: int = 64,
    size: int = 32,
    targets: Sequence[str] = DEFAULT_TINY_TARGETS,
    *,
    seed: int = 0,
    no_val_positives: Sequence[str] = (),
    name: str = "run",
) -> Path:
    """Write `tmp_path/name` with data/cohort.csv, split_summary.json and data/cache.

    Splits: 60% train, 20% val, 20% test (row order), each with positives and negatives
    of every target, except targets in `no_val_positives`, which have none in val.
    """
    run_dir = Path(tmp_path) / name
    data_dir = run_dir / "data"
    (data_dir / "cache").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    targets = list(targets)
    split = np.array(["train"] * n, dtype=object)
    split[int(0.6 * n) : int(0.8 * n)] = "val"
    split[int(0.8 * n) :] = "test"
    labels = _labels(n, len(targets), rng)
    for name_ in no_val_positives:
        labels[split == "val", targets.index(name_)] = 0
    images = _images(labels, size, rng)
    ids = [f"{i + 1:08d}_000.png" for i in range(n)]
    cohort = _cohort(ids, split, labels, targets)
    cohort.to_csv(data_dir / "cohort.csv", index=False)
    summary = {"targets": targets, "n_images": n, "split_hash": sha256_json(cohort.values.tolist())}
    (data_dir / "split_summary.json").write_text(json.dumps(summary))
    _write_cache(data_dir / "cache", images, ids)
    return run_dir


def _labels(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n, k) uint8: every block of 4 consecutive rows holds both classes of every target."""
    labels = (rng.random((n, k)) < 0.4).astype(np.uint8)
    labels[0::4] = 1  # guaranteed positives and negatives in every split
    labels[1::4] = 0
    return labels


def _images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """(n, size, size) uint8: noisy grey background plus a blob per positive target."""
    n, k = labels.shape
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = rng.normal(60, 15, (n, size, size))
    for j in range(k):
        cx, cy = 0.25 + 0.5 * (j % 2), 0.25 + 0.5 * ((j // 2) % 2)
        blob = 150 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.08**2))
        images += labels[:, j, None, None] * blob[None]
    return np.clip(images, 0, 255).astype(np.uint8)


def _cohort(ids: list[str], split: np.ndarray, labels: np.ndarray, targets: list[str]):
    frame = pd.DataFrame({"Image Index": ids, "Patient ID": [i[:8] for i in ids], "split": split})
    for j, name in enumerate(targets):
        frame[name] = labels[:, j]
    findings = [
        "|".join(t for t, y in zip(targets, row, strict=True) if y) or "No Finding"
        for row in labels
    ]
    frame["Finding Labels"] = findings
    frame["age"] = 50
    frame["sex"] = "M"
    frame["view"] = "PA"
    frame["follow_up"] = 0
    return frame


def _write_cache(cache_dir: Path, images: np.ndarray, ids: list[str]) -> None:
    n, size, _ = images.shape
    images.tofile(cache_dir / "images.u8")
    np.ones(n, dtype=np.uint8).tofile(cache_dir / "done.u8")
    meta = {
        "format": FORMAT,
        "n": n,
        "size": size,
        "ids_sha256": ids_sha256(ids),
        "ids": ids,
        "complete": True,
    }
    (cache_dir / "meta.json").write_text(json.dumps(meta))

"""bench/gpu_check.sh stays runnable: one line and exit 0 without a GPU; the same flow end
to end on the CPU at toy size (so the script is ready the day a GPU machine is lent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the check would run")
def test_without_a_gpu_the_check_says_so_in_one_line_and_exits_0():
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU visible" in lines[0]


@pytest.mark.slow
def test_the_gpu_check_flow_runs_on_the_cpu_at_toy_size(tmp_path: Path):
    out = tmp_path / "figures.json"
    args = ["--device", "cpu", "--patients", "60", "--size", "64", "--steps", "2",
            "--batch-size", "8", "--workers", "0", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    for model in ("efficientnet_lite0", "densenet121"):
        row = figures[model]
        assert row["train_images_per_s"] > 0 and row["inference_images_per_s"] > 0
        assert {"evaluate_s", "analyze_s", "explain_s"} <= set(row)
    assert 0 < figures["data_path"]["ratio"] < 10


def test_the_gpu_recipe_grid_names_only_known_recipes():
    """bench/gpu_cv.sh is run once on a lent GPU: a misspelt recipe would waste the lease."""
    import re

    from helpers_bench import load_bench

    script = (REPO / "bench" / "gpu_cv.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_cv.sh")]).returncode == 0
    block = script[script.index("groups=(") : script.index(")", script.index("groups=("))]
    named = {r for group in re.findall(r'"([^"]+)"', block) for r in group.split(",")}
    assert len(named) >= 10
    bench = load_bench("bench_cv")
    assert all(bench.known(name) for name in named), sorted(n for n in named if not bench.known(n))

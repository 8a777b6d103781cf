"""Benchmark: `cxrlab demo` end to end — wall time per stage and in total.

Runs `cxrlab demo --out OUT` (or `cxrlab run CONFIG --out OUT` with --config) in a
subprocess with HF_HUB_OFFLINE=1, exactly as a user would, then reads the seconds each
stage recorded in OUT/stages.json. Printed per stage: seconds and share of the total wall
time (shares are the numbers to compare between machines, which are noisy); the rest of the
wall time is process start-up, imports and bookkeeping. Also printed: each model's test
macro AUROC with its bootstrap CI, so a slow-down can be weighed against what it bought.

    .venv/bin/python bench/bench_demo.py                 # fresh temporary run directory
    .venv/bin/python bench/bench_demo.py --out /tmp/demo-bench --keep
    .venv/bin/python bench/bench_demo.py --config my-small-study.yaml

The run directory must be new (or empty): a finished one would skip every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Run directory (new or empty); default: temp.")
    parser.add_argument("--config", type=Path, help="Study YAML for `cxrlab run` instead of demo.")
    parser.add_argument("--keep", action="store_true", help="Keep a temporary run directory.")
    parser.add_argument("--timeout", type=int, default=3600, help="Seconds before giving up.")
    return parser.parse_args(argv)


def command(out: Path, config: Path | None) -> list[str]:
    if config is None:
        return [sys.executable, "-m", "cxrlab", "demo", "--out", str(out)]
    return [sys.executable, "-m", "cxrlab", "run", str(config), "--out", str(out)]


def run_timed(cmd: list[str], log_path: Path, timeout: int) -> tuple[float, int]:
    """Run `cmd` with its output in `log_path`; return (wall seconds, exit code)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
    with log_path.open("w") as log:
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        return time.perf_counter() - start, proc.returncode


def stage_table(stages: dict, wall: float) -> list[str]:
    lines = [f"{'stage':<32} {'status':<8} {'seconds':>9} {'share':>7}"]
    for name, entry in stages.items():
        share = entry["seconds"] / wall if wall else 0.0
        lines.append(f"{name:<32} {entry['status']:<8} {entry['seconds']:>9.1f} {share:>7.1%}")
    staged = sum(e["seconds"] for e in stages.values())
    lines.append(f"{'(sum of stages)':<32} {'':<8} {staged:>9.1f} {staged / wall:>7.1%}")
    rest = wall - staged
    lines.append(
        f"{'(start-up, imports, bookkeeping)':<32} {'':<8} {rest:>9.1f} {rest / wall:>7.1%}"
    )
    lines.append(f"{'total wall time':<32} {'':<8} {wall:>9.1f} {1:>7.1%}")
    return lines


def group_totals(stages: dict) -> dict[str, float]:
    """Seconds per kind of stage (train, evaluate, ...), over all models."""
    totals: dict[str, float] = {}
    for name, entry in stages.items():
        kind = name.split(":", 1)[0]
        totals[kind] = totals.get(kind, 0.0) + entry["seconds"]
    return totals


def auroc_lines(run_dir: Path) -> list[str]:
    path = run_dir / "reports" / "compare" / "test" / "comparison.json"
    if not path.is_file():
        return ["(no comparison.json: compare did not run)"]
    auroc = json.loads(path.read_text())["auroc"]
    lines = []
    for model, row in auroc.items():
        macro = row["macro"]
        if macro.get("estimate") is None:
            lines.append(f"{model:<24} macro AUROC undefined")
        else:
            lines.append(
                f"{model:<24} macro AUROC {macro['estimate']:.3f}"
                f" [{macro['low']:.3f}, {macro['high']:.3f}]"
            )
    return lines


def machine() -> str:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"cuda={torch.cuda.is_available()}, load average at start {load[0]:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = args.out is None
    out = Path(tempfile.mkdtemp(prefix="cxrlab-demo-bench-")) / "run" if temporary else args.out
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; a finished run would skip every stage. Use a new --out.")
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"{out.name}.log"
    print(f"machine: {machine()}")
    cmd = command(out, args.config)
    print(f"running: {' '.join(cmd)}  (output in {log_path})")
    wall, code = run_timed(cmd, log_path, args.timeout)
    if code != 0:
        print(f"the command failed with exit code {code} after {wall:.1f} s; its last lines:")
        print("\n".join(log_path.read_text().splitlines()[-20:]))
        return 1
    stages = json.loads((out / "stages.json").read_text())
    print("\n".join(stage_table(stages, wall)))
    print("by kind: " + ", ".join(f"{k} {v:.1f} s" for k, v in group_totals(stages).items()))
    print("\n".join(auroc_lines(out)))
    if temporary and not args.keep:
        shutil.rmtree(out.parent, ignore_errors=True)
    else:
        print(f"run directory kept: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

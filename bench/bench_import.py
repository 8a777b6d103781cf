"""How long `import cxrlab` takes, beside `import torch` and an empty interpreter, in one run.

    python bench/bench_import.py --repeat 5

Each import runs in a fresh interpreter; medians of `--repeat` runs. Also prints whether torch
(or Lightning, timm, pandas, matplotlib) is loaded after `import cxrlab`: it must not be.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

HEAVY = ("torch", "lightning", "timm", "pandas", "matplotlib", "sklearn")
TIMED = "import sys, time; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"


def seconds(stmt: str, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        code = TIMED.format(stmt=stmt)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        out.check_returncode()
        runs.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    check = f"import sys, cxrlab; print([m for m in {HEAVY!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    cxrlab_s = seconds("import cxrlab", args.repeat)
    torch_s = seconds("import torch", args.repeat)
    print(f"import cxrlab: {cxrlab_s:.3f} s (median of {args.repeat})")
    print(f"import torch:  {torch_s:.3f} s")
    print(f"ratio cxrlab / torch: {cxrlab_s / torch_s:.2f}")
    print(f"heavy modules loaded by import cxrlab: {loaded.stdout.strip()}")


if __name__ == "__main__":
    main()

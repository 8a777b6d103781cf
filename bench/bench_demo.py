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
    .venv/bin/python bench/bench_demo.py --write-readme      # README's demo numbers, fresh
    .venv/bin/python bench/bench_demo.py --numbers-from RUN_DIR --write-readme

The run directory must be new (or empty): a finished one would skip every stage.

`--write-readme` writes the demo's numbers (`demo_numbers`) to docs/demo_numbers.json and
replaces the block between the `demo-numbers` markers in README.md with `readme_block` of
them: the README's demo figures are generated from a run, never typed by hand, and
tests/test_readme.py checks the README against the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
NUMBERS = REPO / "docs" / "demo_numbers.json"
BEGIN, END = "<!-- demo-numbers:begin -->", "<!-- demo-numbers:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Run directory (new or empty); default: temp.")
    parser.add_argument("--config", type=Path, help="Study YAML for `cxrlab run` instead of demo.")
    parser.add_argument("--keep", action="store_true", help="Keep a temporary run directory.")
    parser.add_argument("--timeout", type=int, default=3600, help="Seconds before giving up.")
    parser.add_argument("--numbers-from", type=Path, help="Read a finished run; run nothing.")
    parser.add_argument(
        "--write-readme", action="store_true", help="Write the run's numbers into README.md."
    )
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


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _ci(entry: dict) -> list:
    return [
        round(entry[k], 3) if entry.get(k) is not None else None
        for k in ("estimate", "low", "high")
    ]


def demo_numbers(run_dir: Path) -> dict:
    """The figures the README quotes, read from a finished demo run's files."""
    run_dir = Path(run_dir)
    out: dict = {"models": {}, "comparison": None, "analysis": None, "explain": {}}
    for metrics_path in sorted(run_dir.glob("reports/*/test/metrics.json")):
        result = json.loads(metrics_path.read_text())
        gains = result["ci"].get("vs_all_negative", {})
        row = {"macro_auroc": _ci(result["ci"]["macro"]["auroc"])}
        for key, g in gains.items():
            values = dict(zip(("estimate", "low", "high"), _ci(g), strict=True))
            row[f"{key}_vs_all_negative"] = {**values, "verdict": g.get("verdict")}
        out["models"][result["model"]] = row
    comparison = _json(run_dir / "reports" / "compare" / "test" / "comparison.json")
    if comparison and comparison["pairs"]:
        pair = next(iter(comparison["pairs"].values()))
        boot = pair["paired_bootstrap"]
        out["comparison"] = {
            "a": pair["a"],
            "b": pair["b"],
            "n_boot": boot["n_boot"],
            "macro_delta": _ci({"estimate": boot["macro"]["delta"], **boot["macro"]}),
            "macro_verdict": boot["macro"].get("verdict"),
            "per_class_verdicts": {t: e.get("verdict") for t, e in boot["per_class"].items()},
        }
    for path in sorted(run_dir.glob("analysis/*/analysis.json")):
        a = json.loads(path.read_text())
        e, best = a["embedding"], a["strongest_explanation"]
        probes = [p["auroc_mean"] for p in a["probe"] if p.get("auroc_mean") is not None]
        out["analysis"] = {
            "model": path.parent.name,
            "k": e["k"],
            "silhouette": round(e["silhouette"][e["k_values"].index(e["k"])], 3),
            "ari": round(a["single_label"]["agreement"]["ari"], 3),
            "pathology_v": round(best["best_pathology"]["cramers_v"], 3),
            "metadata_v": round(best["best_metadata"]["cramers_v"], 3),
            "metadata_attribute": best["best_metadata"]["attribute"],
            "probe_range": [round(min(probes), 3), round(max(probes), 3)] if probes else None,
        }
    for path in sorted(run_dir.glob("reports/*/explain/localization.json")):
        scores = json.loads(path.read_text())
        per = {
            t: e
            for t, e in (scores.get("per_pathology") or {}).items()
            if e.get("hit_rate") is not None
        }
        if per:
            out["explain"][path.parents[1].name] = {
                "cam": f"{scores.get('method')} at {scores.get('layer')}"
                + (" with the reference film" if scores.get("reference") else ""),
                "hit_rate": {t: round(e["hit_rate"], 2) for t, e in per.items()},
                "random_point": {t: round(e["random_point_hit_rate"], 2) for t, e in per.items()},
                "faithfulness": faithfulness_numbers(scores.get("faithfulness")),
            }
    return out


def _fmt_ci(values: list, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    est, low, high = values
    return f.format(est) if low is None else f"{f.format(est)} [{f.format(low)}, {f.format(high)}]"


def faithfulness_numbers(faith: dict | None) -> dict | None:
    """localization.json's deletion/insertion over all targets: the map, random, verdict."""
    every = ((faith or {}).get("per_pathology") or {}).get("all targets")
    if not every:
        return None
    return {
        "pairs": every["n"],
        **{
            curve: {
                "map": round(every[curve], 3),
                "random": round(every[f"{curve}_random"], 3),
                "verdict": every[f"{curve}_verdict"],
            }
            for curve in ("deletion", "insertion")
        },
    }


def readme_block(numbers: dict) -> str:
    """The README's demo figures, as Markdown, from `demo_numbers` output."""
    intro = (
        "Numbers from that run (written by `bench/bench_demo.py --write-readme`; 95% CIs from"
        " the bootstrap over patients):"
    )
    lines = [BEGIN, "", intro, ""]
    for name, m in numbers["models"].items():
        gains = []
        for key, label in (
            ("hamming_accuracy", "Hamming accuracy"),
            ("exact_match", "exact match"),
        ):
            g = m.get(f"{key}_vs_all_negative") or {}
            ci = _fmt_ci([g.get("estimate"), g.get("low"), g.get("high")], signed=True)
            gains.append(f"{label} {ci} (**{g.get('verdict')}**)")
        lines.append(
            f"- {name}: test macro AUROC {_fmt_ci(m['macro_auroc'])}; minus the all-negative "
            f"predictor's: {', '.join(gains)}."
        )
    c = numbers.get("comparison")
    if c:
        per_class = ", ".join(f"{t} {v}" for t, v in c["per_class_verdicts"].items())
        lines.append(
            f"- {c['a']} vs {c['b']} ({c['n_boot']} paired resamples): macro ΔAUROC "
            f"{_fmt_ci(c['macro_delta'], True)}, **{c['macro_verdict']}**; per class "
            f"(Holm-adjusted): {per_class}."
        )
    a = numbers.get("analysis")
    if a:
        probe = ""
        if a["probe_range"]:
            low, high = a["probe_range"]
            probe = (
                f"; a linear probe separates each finding with AUROC {low:.3f}–{high:.3f}"
                " (mean over repeated patient-grouped CV)"
            )
        lines.append(
            f"- analyze ({a['model']}): k = {a['k']} by silhouette ({a['silhouette']:.3f}), ARI "
            f"{a['ari']:.3f} against single-label images, Cramér's V {a['pathology_v']:.3f} for "
            f"pathology against at most {a['metadata_v']:.3f} for any metadata attribute "
            f"({a['metadata_attribute']}){probe}."
        )
    for name, e in numbers.get("explain", {}).items():
        rates = ", ".join(
            f"{t} {hit:.2f} ({e['random_point'][t]:.2f})" for t, hit in e["hit_rate"].items()
        )
        faith = e.get("faithfulness")
        verdicts = (
            ""
            if not faith
            else " Deletion / insertion AUC on "
            f"{faith['pairs']} true positives: {faith['deletion']['map']:.3f} / "
            f"{faith['insertion']['map']:.3f} (random map {faith['deletion']['random']:.3f} / "
            f"{faith['insertion']['random']:.3f}); against random, deletion "
            f"{faith['deletion']['verdict'] or 'no interval'}, insertion "
            f"{faith['insertion']['verdict'] or 'no interval'}."
        )
        lines.append(
            f"- explain ({name}, {e['cam']}): pointing-game hit rate per finding (a random "
            f"point's in brackets): {rates}.{verdicts}"
        )
    return "\n".join([*lines, "", END])


def numerics() -> dict:
    """What decides a CPU training's floating-point path, beyond cxrlab's own code: the same
    seed gives the same demo on the same torch, thread count and CPU instruction set, but
    another CPU (other SIMD kernels in oneDNN) trains to other, equally valid, numbers."""
    import torch

    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        flags = platform.processor() or platform.machine()
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
    }


def write_readme(numbers: dict, readme: Path = README, numbers_path: Path = NUMBERS) -> None:
    """Write `numbers` (with this machine's `numerics`) to docs/demo_numbers.json and their
    block into the README."""
    numbers = {**numbers, "numerics": numerics()}
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} block to replace")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(head + readme_block(numbers) + tail)
    numbers_path.write_text(json.dumps(numbers, indent=2, ensure_ascii=False) + "\n")


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
    if args.numbers_from is not None:
        numbers = demo_numbers(args.numbers_from)
        print(json.dumps(numbers, indent=2, ensure_ascii=False))
        if args.write_readme:
            write_readme(numbers)
            print(f"wrote {NUMBERS} and the demo block of {README}")
        return 0
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
    if args.write_readme:
        write_readme(demo_numbers(out))
        print(f"wrote {NUMBERS} and the demo block of {README}")
    if temporary and not args.keep:
        shutil.rmtree(out.parent, ignore_errors=True)
    else:
        print(f"run directory kept: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

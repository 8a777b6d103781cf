"""The model card: intended use is in the template; here the data description, the
commands that remake the run, package versions, seeds and stage status."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cxrlab.rundir import RunDir

SYNTHETIC_MARK = "SYNTHETIC"  # first word of the README.txt that `cxrlab synth` writes


def data_kind(data: dict) -> str:
    """`synthetic` when `cxrlab run` used built-in data or the data root is `cxrlab synth`
    output; `NIH ChestX-ray14` otherwise; `unknown` without prepare.json or study.yaml."""
    study = data["provenance"]["study"] or {}
    if study and (study.get("data") or {}).get("data_root") is None:
        return "synthetic"
    prepare = (data.get("cohort") or {}).get("prepare") or {}
    root = prepare.get("data_root")
    if root is None:
        return "unknown"
    readme = Path(root) / "README.txt"
    if readme.is_file() and readme.read_text(errors="replace").lstrip().startswith(SYNTHETIC_MARK):
        return "synthetic"
    return "NIH ChestX-ray14"


def card_view(data: dict) -> dict:
    run_dir = data["run_dir"]
    prepare = (data.get("cohort") or {}).get("prepare") or {}
    summary = (data.get("cohort") or {}).get("summary") or {}
    externals = sorted({p.parent.name for p in run_dir.glob("reports/*/external-*/metrics.json")})
    return {
        "data_kind": data_kind(data),
        "data_root": prepare.get("data_root"),
        "externals": externals,
        "commands": commands(data),
        "versions": versions_frame(data),
        "seeds": seeds(data),
        "split_hash": summary.get("split_hash"),
        "study": _yaml(data["provenance"]["study"]),
        "stages": _stages(data["provenance"]["stages"]),
        "configs": {n: _yaml(b["config"]) for n, b in (data.get("training") or {}).items()},
    }


def _yaml(mapping: Mapping | None) -> str | None:
    if not mapping:
        return None
    import yaml

    return yaml.safe_dump(dict(mapping), sort_keys=False)


def _resamples(options: dict) -> int:
    return options.get("bootstrap", options.get("n_boot", 1000))  # n_boot: before 0.2


def commands(data: dict) -> list[str]:
    """The commands that remake this run's artifacts, from the options each stage saved."""
    run = shlex.quote(str(data["run_dir"]))
    out = []
    if data["provenance"]["study"]:
        study = shlex.quote(str(RunDir(data["run_dir"]).study_yaml))
        out += ["# the whole study (a re-run skips stages whose inputs are unchanged):",
                f"cxrlab run {study} --out {run}", "# or stage by stage:"]  # fmt: skip
    prepare = (data.get("cohort") or {}).get("prepare")
    if prepare:
        o = prepare.get("options") or {}
        flags = [f"--data-root {shlex.quote(str(prepare.get('data_root')))}", f"--out {run}"]
        if o.get("pathologies"):
            flags.append(f"--pathologies {','.join(o['pathologies'])}")
        for key in ("n_images", "sampling", "min_positives", "age_min", "age_max", "split",
                    "val", "test", "image_size", "seed"):  # fmt: skip
            if key == "min_positives" and o.get("sampling") != "enriched":
                continue
            if key == "test" and o.get("split") == "official":
                continue
            if o.get(key) is not None:
                flags.append(f"--{key.replace('_', '-')} {o[key]}")
        if o.get("views"):
            flags.append(f"--views {','.join(o['views'])}")
        flags += [
            f"--{k.replace('_', '-')}" for k in ("one_per_patient", "drop_missing") if o.get(k)
        ]
        out.append("cxrlab prepare " + " ".join(flags))
    for name in data.get("training") or {}:
        config = shlex.quote(str(RunDir(data["run_dir"]).model(name).config))
        out.append(f"cxrlab train {run} --config {config} --name {name}")
    for name, block in (data.get("metrics") or {}).items():
        o = block["result"].get("options") or {}
        extra = " --temperature" if o.get("temperature") else ""
        out.append(
            f"cxrlab evaluate {run} --model {name} --split {data['split']} --threshold "
            f"{o.get('threshold', 'max_f1')} --bootstrap {_resamples(o)} "
            f"--seed {o.get('seed', 0)}{extra}"
        )
    comparison = (data.get("comparison") or {}).get("summary")
    if comparison:
        boot = next(iter(comparison["pairs"].values()), {}).get("paired_bootstrap", {})
        out.append(f"cxrlab compare {run} --split {data['split']} --bootstrap "
                   f"{boot.get('n_boot', 1000)} --seed {boot.get('seed', 0)}")  # fmt: skip
    for name in data.get("explain") or {}:
        out.append(f"cxrlab explain {run} --model {name} --split {data['split']}")
    out.append(f"cxrlab report {run}")
    return out


def versions_frame(data: dict) -> pd.DataFrame | None:
    """Package versions per stage that recorded them (prepare, then each model's training)."""
    columns = {}
    prepare = (data.get("cohort") or {}).get("prepare") or {}
    if prepare.get("versions"):
        columns["prepare"] = prepare["versions"]
    for name, block in (data.get("training") or {}).items():
        if (block["run"] or {}).get("versions"):
            columns[f"train {name}"] = block["run"]["versions"]
    if not columns:
        return None
    frame = pd.DataFrame(columns).fillna("—")
    frame.index.name = "package"
    return frame


def seeds(data: dict) -> list[tuple[str, Any]]:
    out = []
    prepare = (data.get("cohort") or {}).get("prepare") or {}
    if "seed" in (prepare.get("options") or {}):
        out.append(("cohort selection and split", prepare["options"]["seed"]))
    for name, block in (data.get("training") or {}).items():
        seed = ((block["config"] or {}).get("train") or {}).get("seed")
        out.append((f"training {name}", seed))
    for name, block in (data.get("metrics") or {}).items():
        out.append((f"bootstrap {name}", (block["result"].get("ci") or {}).get("seed")))
    for block in data.get("analysis") or []:
        state = (block["result"].get("embedding") or {}).get("random_state")
        out.append((f"analysis {block['name']} (K-Means, probes)", state))
    return out


def _stages(stages: Any) -> list[tuple[str, str]] | None:
    """stages.json (`{stage: {"status", "seconds", "finished", "error", "key"}}`, written by
    `cxrlab run`) as (stage, "done · 12.3 s · finished ...") rows."""
    if not isinstance(stages, Mapping):
        return None
    rows = []
    for name, entry in stages.items():
        if not isinstance(entry, Mapping):
            rows.append((str(name), str(entry)))
            continue
        parts = [str(entry.get("status", "?"))]
        if entry.get("seconds") is not None:
            parts.append(f"{entry['seconds']:.1f} s")
        if entry.get("finished"):
            parts.append(f"finished {entry['finished']}")
        if entry.get("error"):
            parts.append(f"error: {entry['error']}")
        rows.append((str(name), " · ".join(parts)))
    return rows

"""The `cxrlab` command line: help on every command, one-line errors, --debug, synth + prepare.

Errors are checked through the installed console script in a subprocess, since turning a
`CxrError` into `error: ...` and exit code 1 happens in `cli.main`, around the typer app.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

from cxrlab import __version__
from cxrlab.cli import app

COMMANDS = {
    "synth",
    "prepare",
    "train",
    "evaluate",
    "compare",
    "analyze",
    "explain",
    "report",
    "run",
    "demo",
}


def cxrlab(*args: str | Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run `python -m cxrlab ARGS` (the console script's entry point) and capture it."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "PYTHONIOENCODING": "utf-8",
    }
    env.pop("CXRLAB_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "cxrlab", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 1, no traceback, and exactly one `error:` line naming every fragment."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_version():
    proc = cxrlab("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"cxrlab {__version__}"


def test_help_on_every_command():
    commands = typer.main.get_command(app).commands
    assert COMMANDS <= set(commands)
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for name in sorted(commands):
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output and name in result.output


def test_missing_data_root_is_one_error_line(tmp_path: Path):
    proc = cxrlab("prepare", "--data-root", "/nonexistent", "--out", tmp_path / "run")
    assert_one_line_error(proc, "/nonexistent")
    assert not (tmp_path / "run" / "data" / "cohort.csv").exists()


def test_train_without_cohort_is_one_error_line(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cxrlab("train", empty, "--model", "simple_cnn", "--epochs", "1")
    assert_one_line_error(proc, "cohort.csv not found")


def test_unknown_pathology_names_it_and_the_valid_ones(tmp_path: Path):
    proc = cxrlab("prepare", "--data-root", tmp_path, "--out", tmp_path, "--pathologies", "Foo")
    assert_one_line_error(proc, "'Foo'", "Atelectasis", "Hernia")


def test_study_errors_are_one_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"epochs": 1}}))
    assert_one_line_error(cxrlab("run", bad, "--out", tmp_path / "r"), "unknown key 'train'")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"models": [{"model": {"name": "simple_cnn"}}]}))
    proc = cxrlab("run", good, "--out", tmp_path / "r", "--data-root", "/nonexistent")
    assert_one_line_error(proc, "stage 'prepare' failed", "/nonexistent")
    ledger = json.loads((tmp_path / "r" / "stages.json").read_text())
    assert ledger["prepare"]["status"] == "failed" and "synth" not in ledger  # data root given


def test_debug_shows_the_traceback(tmp_path: Path):
    proc = cxrlab("--debug", "prepare", "--data-root", "/nonexistent", "--out", tmp_path)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "DataError" in proc.stderr and "/nonexistent" in proc.stderr


def test_usage_errors_are_typers_short_message_not_a_traceback(tmp_path: Path):
    proc = cxrlab("prepare", "--out", tmp_path)  # --data-root is required
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Missing option '--data-root'" in proc.stderr
    bare = cxrlab()  # no command: the help, not a NoArgsIsHelpError traceback
    assert bare.returncode == 2 and "Traceback" not in bare.stderr
    assert "Usage" in bare.stdout + bare.stderr and "prepare" in bare.stdout + bare.stderr


def test_synth_then_prepare_prints_counts_and_leakage_line(tmp_path: Path):
    data, run = tmp_path / "nih", tmp_path / "run"
    proc = cxrlab("synth", data, "--patients", "15", "--image-size", "64", "--seed", "2")
    assert proc.returncode == 0, proc.stderr
    entry = pd.read_csv(data / "Data_Entry_2017.csv")
    assert f"{len(entry)} images of 15 patients" in proc.stdout
    targets = ["Atelectasis", "Effusion"]
    proc = cxrlab(
        "prepare",
        "--data-root",
        data,
        "--out",
        run,
        "--pathologies",
        ",".join(targets),
        "--image-size",
        "32",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    cohort = pd.read_csv(run / "data" / "cohort.csv")
    assert "Label counts (images)" in out
    for t in targets:  # the row of each target shows its image count from cohort.csv
        assert re.search(rf"{t}\W+{int(cohort[t].sum())}\W", out), (t, out)
    assert "patient overlap between splits: 0 (leakage check passed)" in out
    assert f"cache: {len(cohort)} images at 32x32 ({len(cohort)} decoded, 0 reused)" in out
    again = cxrlab(
        "prepare",
        "--data-root",
        data,
        "--out",
        run,
        "--pathologies",
        ",".join(targets),
        "--image-size",
        "32",
    )
    assert f"(0 decoded, {len(cohort)} reused)" in again.stdout


@pytest.mark.parametrize("flag", ["--split", "--sampling"])
def test_invalid_choice_is_a_config_error_line(tmp_path: Path, flag: str):
    proc = cxrlab("prepare", "--data-root", tmp_path, "--out", tmp_path, flag, "nonsense")
    assert_one_line_error(proc, "nonsense")


@pytest.mark.slow
def test_run_a_tiny_study_then_skip_it_all(tmp_path: Path):
    study = {
        "synthetic": {"patients": 16, "image_size": 64},
        "data": {"pathologies": ["Atelectasis", "Effusion"], "image_size": 32, "test": 0.3},
        "models": [
            {
                "name": "tiny",
                "model": {"name": "simple_cnn", "kwargs": {"base_width": 4, "depth": 2}},
                "train": {"epochs": 1, "batch_size": 8},
            }
        ],
        "evaluate": {"bootstrap": 10},
        "analyze": {"enabled": False},
        "explain": {"enabled": False},
    }
    config, run = tmp_path / "study.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(study))
    first = cxrlab("run", config, "--out", run, timeout=300)
    assert first.returncode == 0, first.stderr
    for stage in ("synth", "prepare", "train:tiny", "evaluate:tiny", "compare", "report"):
        assert f"✓ {stage} (" in first.stdout, stage
    assert "stages run: 6, skipped (unchanged): 0" in first.stdout
    assert f"report: {(run / 'report.html').resolve()}" in first.stdout
    second = cxrlab("run", config, "--out", run, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "stages run: 0, skipped (unchanged): 6" in second.stdout
    assert "- train:tiny: skipped (inputs unchanged)" in second.stdout

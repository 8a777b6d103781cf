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


def _commands(group, prefix=()):
    """(path, command) of every leaf command, walking into groups (`download nih`)."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def _choice_options() -> list[tuple[str, str, list[str]]]:
    """(command, --flag, choices) for every option of every command with fixed choices."""
    from typing import Literal, get_args, get_origin, get_type_hints

    found = []
    for path, command in _commands(typer.main.get_command(app)):
        hints = get_type_hints(command.callback)
        for param in command.params:
            hint = hints.get(param.name)
            if get_origin(hint) is Literal and param.opts[0].startswith("--"):
                found.append((" ".join(path), param.opts[0], [str(c) for c in get_args(hint)]))
    return found


def test_command_walk_reaches_grouped_commands():
    assert {" ".join(p) for p, _ in _commands(typer.main.get_command(app))} >= {
        "download nih",
        "evaluate",
    }


def test_choice_options_are_declared_in_config():
    """Choices come from the config's Literal aliases, so the CLI cannot drift from them."""
    from typing import get_args

    from cxrlab import config

    declared = {
        tuple(get_args(alias))
        for alias in vars(config).values()
        if getattr(alias, "__origin__", None) is not None and get_args(alias)
    }
    options = _choice_options()
    flags = {(command, flag) for command, flag, _ in options}
    for wanted in [("evaluate", "--threshold"), ("evaluate", "--device"), ("train", "--strategy"),
                   ("analyze", "--scaling"), ("explain", "--split"), ("prepare", "--sampling"),
                   ("compare", "--split"), ("train", "--precision")]:  # fmt: skip
        assert wanted in flags, wanted
    for command, flag, choices in options:
        assert tuple(choices) in declared, (command, flag, choices)


def test_every_fixed_choice_option_refuses_a_bad_value_before_any_work(tmp_path: Path):
    """`--threshold foo` and friends: a usage error listing the choices, from the parser."""
    runner = CliRunner()
    required = {
        "prepare": ["--data-root", str(tmp_path), "--out", str(tmp_path)],
        "evaluate": [str(tmp_path), "--model", "m"],
        "analyze": [str(tmp_path), "--model", "m"],
        "explain": [str(tmp_path), "--model", "m"],
        "train": [str(tmp_path)],
        "compare": [str(tmp_path)],
    }
    options = _choice_options()
    assert len(options) >= 15
    for command, flag, choices in options:
        args = [*command.split(), *required.get(command, []), flag, "foo"]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (command, flag, result.output)
        text = " ".join(result.output.split())
        assert "foo" in text and all(c in text for c in choices), (command, flag, text)


def test_bad_threshold_is_refused_by_the_parser_before_any_model_loads(tmp_path: Path):
    import time

    start = time.perf_counter()
    proc = cxrlab("evaluate", tmp_path, "--model", "m", "--threshold", "foo")
    assert proc.returncode == 2, proc.stderr
    assert "max_f1" in proc.stderr and "youden" in proc.stderr
    # the whole subprocess (interpreter start included) ends before any model is loaded
    assert time.perf_counter() - start < 10
    assert "Traceback" not in proc.stderr


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


def test_the_cli_hides_torchs_leafspec_deprecation_that_lightning_triggers():
    """Lightning <= 2.6 builds torch's deprecated LeafSpec every batch; only the CLI hides it
    (the library sets no warning filter), and only that warning."""
    code = (
        "import warnings; from torch.utils._pytree import LeafSpec; {}; LeafSpec(); "
        "warnings.warn('other', FutureWarning)"
    )
    for setup, shown in (("pass", True), ("from cxrlab.cli.app import quiet_lightning; "
                                          "quiet_lightning()", False)):  # fmt: skip
        out = subprocess.run([sys.executable, "-W", "default", "-c", code.format(setup)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert ("LeafSpec" in out.stderr) is shown and "other" in out.stderr

"""Helpers of the robustness tests: cxrlab in this process or a child, one-line errors,
tiny NIH-layout data roots of PNGs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlab.cli import main

TINY_YAML = """\
model: {name: simple_cnn, kwargs: {base_width: 8, depth: 3}}
train: {epochs: 3, batch_size: 16, patience: 10}
"""
ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"
)


def cli(capsys, *args) -> tuple[int, str]:
    """`cxrlab ARGS` in this process: (exit code, stderr). An exception that escapes `main`
    (a traceback for the user) fails the test by itself."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, capsys.readouterr().err


def one_error(code: int, err: str, *fragments: str, exit_code: int = 1) -> str:
    """The exit code, no traceback, exactly one `error:` line holding every fragment."""
    assert code == exit_code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250", "NO_COLOR": "1"}
    env.pop("CXRLAB_DEBUG", None)
    return env


def python(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
    )


def proc_error(proc: subprocess.CompletedProcess, *fragments: str, exit_code: int = 1) -> str:
    return one_error(proc.returncode, proc.stderr, *fragments, exit_code=exit_code)


def config_file(tmp_path: Path, epochs: int = 3) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML.replace("epochs: 3", f"epochs: {epochs}"))
    return path


def pngs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"{i:08d}_000.png" for i in range(n)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8)).save(path)
    return paths


def png_root(folder: Path, n: int) -> Path:
    """An NIH-layout data root of n PNGs, one patient each, labels in a cycle."""
    paths = pngs(folder / "images", n)
    labels = ["No Finding", "Effusion", "Atelectasis", "Effusion|Atelectasis"]
    rows = [f"{p.name},{labels[i % 4]},0,{i + 1},50,M,PA" for i, p in enumerate(paths)]
    (folder / "Data_Entry_2017.csv").write_text("\n".join([ENTRY_HEADER, *rows]) + "\n")
    return folder

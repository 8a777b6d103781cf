"""The commands in docs/scaling.md and the README parse against the CLI, and the links to the
walkthrough notebook point at a file that exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from cxrlab.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "docs" / "scaling.md", REPO / "README.md")


def _code_lines(path: Path) -> list[str]:
    """Lines of the ``` blocks, with backslash continuations joined."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.split(" #")[0].strip() for line in text.splitlines()]


def _cxrlab_argv(line: str) -> list[str] | None:
    """The arguments after `cxrlab` / `-m cxrlab` (under torchrun or srun), else None."""
    words = shlex.split(line)
    for i, word in enumerate(words):
        if word == "cxrlab" and (i == 0 or words[i - 1] in ("-m", "srun")):
            return words[i + 1 :]
    return None


def _commands(path: Path) -> list[list[str]]:
    found = [_cxrlab_argv(line) for line in _code_lines(path) if "cxrlab" in line]
    # a notebook's shell escape in the prose: `!cxrlab demo --out demo-run`
    found += [shlex.split(m) for m in re.findall(r"`!cxrlab ([^`]+)`", path.read_text())]
    return [argv for argv in found if argv]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_documented_command_parses(path: Path):
    group = typer.main.get_command(app)
    commands = _commands(path)
    assert len(commands) >= 5, f"found only {commands} in {path.name}"
    for argv in commands:
        command = group.commands.get(argv[0])
        assert command is not None, f"{path.name}: unknown command `cxrlab {argv[0]}`"
        command.make_context(argv[0], list(argv[1:]))  # raises on an unknown flag or bad value


def test_the_scaling_page_runs_the_gpu_check_and_the_distributed_launchers():
    text = (REPO / "docs" / "scaling.md").read_text()
    assert (REPO / "bench" / "gpu_check.sh").is_file() and "bash bench/gpu_check.sh" in text
    lines = _code_lines(REPO / "docs" / "scaling.md")
    train = [line for line in lines if " train " in f" {line} "]
    assert any(line.startswith("torchrun ") and "-m cxrlab train" in line for line in train)
    assert any(line.startswith("srun cxrlab train") and "--num-nodes" in line for line in train)
    assert any("--devices 4" in line and "--precision 16-mixed" in line for line in train)


def test_the_colab_link_and_the_notebook_install_the_same_repository():
    readme = (REPO / "README.md").read_text()
    colab = r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/[^/]+/(\S+?)\)"
    link = re.search(colab, readme)
    assert link, "no Open-in-Colab link in the README"
    repo, notebook = link.groups()
    assert (REPO / notebook).is_file(), notebook
    source = (REPO / "notebooks" / "walkthrough.py").read_text()
    assert f"github.com/{repo}.git" in source

"""Imports point one way (STYLE.md, "Layers"): cli/serve -> workflows -> models, data ->
small shared modules. Every `cxrlab` import in src/ (function-level ones included) is read
with `ast` and checked against the rank of its package."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrlab"

#: Rank of each top-level module or package: a module may import its own rank or lower.
RANK = {
    **dict.fromkeys(
        ["errors", "labels", "config", "rundir", "runinfo", "locking", "signals", "__version__"], 0
    ),
    **dict.fromkeys(["data", "synth"], 1),
    "models": 2,
    **dict.fromkeys(
        ["train", "evaluate", "analysis", "explain", "report", "download", "predict"], 3
    ),
    **dict.fromkeys(["pipeline", "crossval", "results", "serve"], 4),
    **dict.fromkeys(["api", "cli", "__init__", "__main__"], 5),
}
#: Within the workflow rank: the report reads artifacts from disk, never training code.
NEVER = {"report": {"train", "models", "analysis", "explain"}}


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cxrlab":
                out |= {alias.name for alias in node.names}
            elif node.module.startswith("cxrlab."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cxrlab.")}
    return out


def edges() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        source = _package(path)
        targets = _imported(ast.parse(path.read_text(), str(path))) - {source}
        out.setdefault(source, set()).update(targets)
    return out


def test_every_package_has_a_rank():
    assert set(edges()) <= set(RANK), sorted(set(edges()) - set(RANK))


def test_imports_point_down_the_layers():
    wrong = [
        f"{source} (rank {RANK[source]}) imports {target} (rank {RANK.get(target)})"
        for source, targets in sorted(edges().items())
        for target in sorted(targets)
        if RANK.get(target, 99) > RANK[source] or target in NEVER.get(source, ())
    ]
    assert not wrong, wrong


def test_the_checker_sees_a_function_level_import():
    tree = ast.parse("def f():\n    from cxrlab.download.workflow import download_nih\n")
    assert _imported(tree) == {"download"}  # function-level imports count

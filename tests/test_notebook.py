"""notebooks/walkthrough.ipynb: kept paired with its reviewable .py, stored without outputs,
and executed end to end (any cell that raises fails the suite)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="test extra: pip install -e '.[test]'")
jupytext = pytest.importorskip("jupytext", reason="test extra: pip install -e '.[test]'")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK, PAIRED = NOTEBOOKS / "walkthrough.ipynb", NOTEBOOKS / "walkthrough.py"


def _sources(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_the_notebook_is_the_paired_script_and_holds_no_outputs():
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert _sources(stored) == _sources(jupytext.read(PAIRED)), (
        "notebooks/walkthrough.ipynb and .py differ: run "
        "`make notebook` (jupytext --update keeps the cell ids) and commit both"
    )
    code = [cell for cell in stored.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), (
        "strip the outputs before committing: make notebook"
    )


@pytest.mark.slow
def test_the_walkthrough_runs_clean(tmp_path: Path):
    """About 3 minutes on 2 busy CPU cores (1 for the training cells)."""
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    print(f"walkthrough executed in {time.perf_counter() - start:.0f} s")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "patients in more than one split: 0 (leakage check passed)" in text
    kinds = [set(o.get("data", {})) for o in outputs]
    assert sum("image/png" in k for k in kinds) >= 6  # curves, ROC, confusion, bars, PCA, CAM
    assert any("text/markdown" in k for k in kinds)  # the analysis' answer in words
    assert (tmp_path / "walkthrough" / "run" / "report.html").is_file()

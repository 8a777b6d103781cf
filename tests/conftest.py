"""Shared fixtures. Tests need no network and no GPU.

Real NIH data lives in ../shared/data beside the checkout; tests that need it skip with a
reason where it is absent (as on a user's machine).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXRLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real NIH data not found at {path} (set CXRLAB_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def nih_dev() -> Path:
    """../shared/data/nih-cxr14-dev: 1,108 real images (256 px), NIH layout."""
    return _need(SHARED_DATA / "nih-cxr14-dev")


@pytest.fixture(scope="session")
def nih_metadata() -> Path:
    """../shared/data/nih-cxr14-metadata: the full 112,120-row metadata, no images."""
    return _need(SHARED_DATA / "nih-cxr14-metadata")


@pytest.fixture(scope="session")
def peer_dicom() -> Path:
    """../shared/data/peer-dicom: two real chest DICOMs (MONOCHROME2 and MONOCHROME1)."""
    return _need(SHARED_DATA / "peer-dicom")


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """A tiny trained + evaluated SimpleCNN on synthetic PNG files, and its ONNX export:
    (run_dir, data_root, export_dir). See tests/helpers_serve.py."""
    from cxrlab.predict.bundle import export_model
    from helpers_serve import make_served_run

    root = tmp_path_factory.mktemp("served")
    run_dir, data_root = make_served_run(root)
    export_dir = root / "export"
    export_model(run_dir, "m", export_dir, onnx=True)
    return run_dir, data_root, export_dir

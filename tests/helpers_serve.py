"""A small trained and evaluated model on real image files, for the predict/serve tests.

`make_served_run` writes a synthetic NIH-layout data set (PNG files), prepares it at 32 px,
trains a SimpleCNN for one epoch and evaluates it, so its thresholds.json, test metrics and
test predictions exist and every cached row has a file on disk.
"""

from __future__ import annotations

from pathlib import Path

from cxrlab.config import DataConfig, EvaluateConfig
from cxrlab.data.prepare import prepare
from cxrlab.evaluate.workflow import evaluate_model
from cxrlab.synth import write_synthetic_dataset
from cxrlab.train.engine import train_model

SERVED_TARGETS = ["Atelectasis", "Effusion", "Cardiomegaly"]
SERVED_SIZE = 32


def tiny_config(name: str = "simple_cnn", **train) -> dict:
    kwargs = {"base_width": 8, "depth": 3} if name == "simple_cnn" else {}
    return {
        "model": {"name": name, "kwargs": kwargs},
        "train": {"epochs": 1, "batch_size": 16, "patience": 10, **train},
    }


def make_served_run(root: Path, name: str = "m") -> tuple[Path, Path]:
    """(run_dir, data_root): one trained + evaluated model `name`."""
    data_root = root / "synthetic"
    write_synthetic_dataset(data_root, patients=40, seed=0, image_size=64)
    run_dir = root / "run"
    options = DataConfig(
        data_root=str(data_root), pathologies=SERVED_TARGETS, image_size=SERVED_SIZE, seed=0
    )
    prepare(options, run_dir, progress=False)
    train_model(run_dir, tiny_config(), name=name, progress_bar=False)
    evaluate_model(
        run_dir, name, EvaluateConfig(bootstrap=20, figures=False, device="cpu"), progress=False
    )
    return run_dir, data_root


#: Identifying tags that must never reach a response or a log line.
PHI = {
    "PatientName": "Doe^Janeunique",
    "PatientID": "PID-8472913",
    "PatientBirthDate": "19391224",
    "StudyDate": "20010911",
}

"""Training stage: `train_model(run_dir, config)` on PyTorch Lightning (`cxrlab train`).

Importing this package loads torch and Lightning; the CLI imports it inside its commands,
so `cxrlab --help` stays fast. A run's data is `cxrlab.data.rundata.load_run_data` and a
trained model comes back with `cxrlab.models.checkpoint.load_model_from_checkpoint`.
"""

from cxrlab.train.augment import BatchAugment
from cxrlab.train.engine import TrainResult, train_model
from cxrlab.train.module import ChestXrayClassifier

__all__ = ["BatchAugment", "ChestXrayClassifier", "TrainResult", "train_model"]

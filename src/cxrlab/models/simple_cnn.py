"""SimpleCNN: a small from-scratch baseline, registered with timm as "simple_cnn".

Written by hand because it is this project's own baseline (no library ships it). It mirrors
timm's interface (`forward_features`, `forward_head(x, pre_logits=...)`, `feature_info`,
`get_classifier`, `reset_classifier`, `pretrained_cfg`) so feature extraction and Grad-CAM
treat it exactly like a timm backbone. Importing this module registers the `simple_cnn`
entrypoint in timm's model registry (the one import side effect, as timm's own model
modules have), so `timm.create_model("simple_cnn", num_classes=K, base_width=16)` builds it
with timm's pretrained_cfg handling, and weight files load through timm's `load_pretrained`.

Layout (defaults: base_width=32, depth=4, convs_per_block=2, one input channel)::

    stages.i = [conv3x3 -> BN -> ReLU] x convs_per_block -> MaxPool2d(2)
    width of stage i = base_width * 2**i, spatial reduction after stage i = 2**(i+1)
    head = global average pool -> dropout -> fc
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from cxrlab.errors import ModelError

SIMPLE_CNN = "simple_cnn"

#: One grey channel scaled to [-1, 1]. Any affine normalisation is absorbed by the first
#: batch norm when training from scratch; 0.5/0.5 simply centres the inputs.
SIMPLE_CNN_MEAN = 0.5
SIMPLE_CNN_STD = 0.5

#: timm's pretrained_cfg for simple_cnn: the data config and layer names timm's utilities read
#: (`resolve_data_config`, `load_pretrained`). No url, hf_hub_id or file: there are no
#: pretrained weights, so pretrained=True is refused (see `hub.require_hub_weights`).
_DEFAULT_CFG: dict[str, Any] = {
    "num_classes": 1000,  # timm's default head size; only a bare timm.create_model uses it
    # Nominal size: the net is fully convolutional, any side >= 2**depth works.
    "input_size": (1, 224, 224),
    "mean": (SIMPLE_CNN_MEAN,),
    "std": (SIMPLE_CNN_STD,),
    "first_conv": "stages.0.conv1",
    "classifier": "fc",
}
# timm's register_model reads `default_cfgs` from the entrypoint's module.
default_cfgs = generate_default_cfgs({SIMPLE_CNN: _DEFAULT_CFG})


def _stage(in_chs: int, out_chs: int, convs: int) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(1, convs + 1):
        # bias=False: the batch norm that follows has its own shift.
        conv_in = in_chs if i == 1 else out_chs
        layers[f"conv{i}"] = nn.Conv2d(conv_in, out_chs, 3, padding=1, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(out_chs)
        layers[f"act{i}"] = nn.ReLU(inplace=True)
    layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class SimpleCNN(nn.Module):
    """Plain conv/BN/ReLU/pool network for multi-label chest X-ray classification.

    Args:
        num_classes: outputs K of the head; 0 makes `forward` return pooled features.
        in_chans: input channels (1 for grey X-rays).
        base_width: channels of the first stage; each later stage doubles it.
        depth: number of stages (3-4 is the intended range; any >= 1 builds).
        convs_per_block: conv/BN/ReLU repeats per stage before pooling.
        drop_rate: dropout probability before the classifier.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_chans: int = 1,
        base_width: int = 32,
        depth: int = 4,
        convs_per_block: int = 2,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        _check_args(num_classes, in_chans, base_width, depth, convs_per_block, drop_rate)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        widths = [base_width * 2**i for i in range(depth)]
        self.stages = nn.Sequential(
            *[
                _stage(in_chans if i == 0 else widths[i - 1], w, convs_per_block)
                for i, w in enumerate(widths)
            ]
        )
        self.num_features = widths[-1]
        self.feature_info = [
            {"num_chs": w, "reduction": 2 ** (i + 1), "module": f"stages.{i}"}
            for i, w in enumerate(widths)
        ]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = self._make_fc(num_classes)
        # Built directly (not through timm): the same data config, for these channels. As in
        # timm, it describes the data and layer names; `self.num_classes` is the live head.
        self.pretrained_cfg = {
            **_DEFAULT_CFG,
            "architecture": SIMPLE_CNN,
            "input_size": (in_chans, *_DEFAULT_CFG["input_size"][1:]),
            "mean": (SIMPLE_CNN_MEAN,) * in_chans,
            "std": (SIMPLE_CNN_STD,) * in_chans,
        }
        self._init_weights()

    def _make_fc(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        # He init suits ReLU; uses torch's current RNG, which the caller seeds (never here).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)  # (B, num_features, H / 2**depth, W / 2**depth)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)  # (B, num_features)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for `num_classes` outputs (timm's signature)."""
        if global_pool not in (None, "avg"):
            raise ModelError(f"SimpleCNN supports global_pool='avg' only, got {global_pool!r}")
        if num_classes < 0:
            raise ModelError(f"num_classes={num_classes} should be >= 0")
        self.num_classes = num_classes
        self.fc = self._make_fc(num_classes)


@register_model
def simple_cnn(pretrained: bool = False, **kwargs: Any) -> SimpleCNN:
    """timm entrypoint: SimpleCNN with timm's pretrained_cfg (0.5/0.5, first conv, head)."""
    try:
        # flatten_sequential: features_only finds the stages ("stages.0" -> "stages_0").
        return build_model_with_cfg(
            SimpleCNN, SIMPLE_CNN, pretrained, feature_cfg={"flatten_sequential": True}, **kwargs
        )
    except TypeError as exc:
        options = [p for p in inspect.signature(SimpleCNN).parameters if p != "num_classes"]
        raise ModelError(f"simple_cnn: {exc}; valid options: {', '.join(options)}") from exc


def _check_args(
    num_classes: int,
    in_chans: int,
    base_width: int,
    depth: int,
    convs_per_block: int,
    drop_rate: float,
) -> None:
    checks = [
        (num_classes >= 0, f"num_classes={num_classes} should be >= 0"),
        (in_chans >= 1, f"in_chans={in_chans} should be >= 1"),
        (base_width >= 1, f"base_width={base_width} should be >= 1 (e.g. 32)"),
        (depth >= 1, f"depth={depth} should be >= 1 (3-4 recommended)"),
        (convs_per_block >= 1, f"convs_per_block={convs_per_block} should be >= 1"),
        (0.0 <= drop_rate < 1.0, f"drop_rate={drop_rate} should be in [0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ModelError(f"SimpleCNN: {message}")

"""Feature extraction from named layers: timm models and a stand-in for SimpleCNN."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from cxrlab.analysis.features import (
    PENULTIMATE,
    extract_features,
    feature_path,
    list_layers,
    load_features,
    save_features,
    save_layer_features,
)
from cxrlab.errors import ConfigError, DataError


class MiniNet(nn.Module):
    """Stand-in for SimpleCNN: the timm head API on two conv stages."""

    def __init__(self, num_classes: int = 4, in_chans: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)
        self.num_features = 16
        self.feature_info = [
            {"module": "stem", "num_chs": 8, "reduction": 1},
            {"module": "stage1", "num_chs": 16, "reduction": 2},
        ]

    def forward_features(self, x):
        return self.stage1(self.stem(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _model(name: str) -> nn.Module:
    with torch.random.fork_rng():  # seeded weights without leaving the global RNG seeded
        torch.manual_seed(0)
        if name == "mini":
            return MiniNet()
        if name == "simple_cnn":  # the real from-scratch model, built through the factory
            from cxrlab.models import create_model

            return create_model("simple_cnn", 4, base_width=8, depth=3)
        return timm.create_model(name, pretrained=False, num_classes=4, in_chans=1)


def _batches(n_batches: int = 2, batch: int = 3, size: int = 64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 1, size, size, generator=gen) for _ in range(n_batches)]


def _no_hooks(model: nn.Module) -> bool:
    return all(len(m._forward_hooks) == 0 for m in model.modules())


EXPECTED_LAYERS = {
    "resnet18": ["act1", "layer1", "layer2", "layer3", "layer4"],
    "efficientnet_b0": ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    "densenet121": [
        "features.norm0",
        "features.denseblock1",
        "features.denseblock2",
        "features.denseblock3",
        "features.norm5",
    ],
    "mini": ["stem", "stage1"],
    "simple_cnn": ["stages.0", "stages.1", "stages.2"],
}


@pytest.mark.parametrize("name", list(EXPECTED_LAYERS))
def test_layers_and_shapes(name):
    model = _model(name)
    layers = list_layers(model)
    assert layers == EXPECTED_LAYERS[name] + [PENULTIMATE]
    model.train()
    feats = extract_features(model, _batches(), layers)
    assert list(feats) == layers
    for info in model.feature_info:
        arr = feats[info["module"]]
        assert arr.shape == (6, info["num_chs"]) and arr.dtype == np.float32
    assert feats[PENULTIMATE].shape == (6, model.num_features)
    assert _no_hooks(model)
    assert model.training  # the caller's mode is restored


@pytest.mark.parametrize("name", ["resnet18", "mini"])
def test_values_are_pooled_activations_in_image_order(name):
    model = _model(name).eval()
    batches = _batches()
    last = model.feature_info[-1]["module"]  # forward_features ends at this module here
    feats = extract_features(model, batches, [last, PENULTIMATE])
    x = torch.cat(batches)
    with torch.inference_mode():
        maps = model.forward_features(x)
        pre = model.forward_head(maps, pre_logits=True)
    np.testing.assert_allclose(feats[last], maps.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats[PENULTIMATE], pre.numpy(), rtol=1e-4, atol=1e-5)


def test_batch_formats_give_the_same_features():
    model = _model("mini")
    plain = extract_features(model, _batches(), ["stem"])["stem"]
    tuples = extract_features(model, [(b, torch.zeros(3)) for b in _batches()], ["stem"])
    dicts = extract_features(model, [{"image": b} for b in _batches()], ["stem"])
    np.testing.assert_array_equal(plain, tuples["stem"])
    np.testing.assert_array_equal(plain, dicts["stem"])
    with pytest.raises(DataError, match="cannot find images"):
        extract_features(model, [{"pixels": _batches()[0]}], ["stem"])


def test_unknown_layer_lists_valid_names():
    model = _model("mini")
    with pytest.raises(ConfigError, match=r"'layer9'.*valid layers: stem, stage1, penultimate"):
        extract_features(model, _batches(), ["stem", "layer9"])
    assert _no_hooks(model)


def test_hooks_removed_when_a_batch_fails():
    model = _model("mini")

    def failing():
        yield _batches()[0]
        yield torch.randn(2, 3, 16, 16)  # wrong channel count: the conv raises

    with pytest.raises(RuntimeError):
        extract_features(model, failing(), ["stem", "stage1"])
    assert _no_hooks(model)


def test_no_batches_is_an_error():
    with pytest.raises(DataError, match="no batches"):
        extract_features(_model("mini"), [], ["stem"])


def test_save_load_roundtrip(tmp_path):
    feats = np.arange(12, dtype=np.float64).reshape(3, 4)
    path = save_features(
        feature_path(tmp_path / "analysis" / "m", "blocks.6"), feats, ["a", "b", "c"]
    )
    assert path.name == "features_blocks.6.npz" and path.is_file()
    loaded, ids = load_features(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, feats.astype(np.float32))
    assert ids.tolist() == ["a", "b", "c"]


def test_save_layer_features_writes_one_file_per_layer(tmp_path):
    feats = extract_features(_model("mini"), _batches(), ["stem", PENULTIMATE])
    paths = save_layer_features(tmp_path, feats, [f"img{i}" for i in range(6)])
    assert sorted(p.name for p in paths.values()) == [
        "features_penultimate.npz",
        "features_stem.npz",
    ]
    loaded, _ = load_features(paths["stem"])
    np.testing.assert_array_equal(loaded, feats["stem"])


def test_save_rejects_mismatched_ids_and_load_missing_file(tmp_path):
    with pytest.raises(DataError, match="do not match 2 ids"):
        save_features(tmp_path / "f.npz", np.zeros((3, 4)), ["a", "b"])
    with pytest.raises(DataError, match="does not exist"):
        load_features(tmp_path / "nope.npz")
    with pytest.raises(ConfigError):
        feature_path(tmp_path, "a/b")

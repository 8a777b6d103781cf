"""The routers: predict, Grad-CAM and preview (uploads), the model card, health.

Uploaded bytes are decoded in memory (`decode_square_u8`; NIfTI through a temporary file
removed at once); an uploaded file name is a label in messages and results, never a path.
All CPU work runs in the bounded pool (`limits.InferencePool`).
"""

from __future__ import annotations

import hmac
import io
import time
import unicodedata
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cxrlab.data.imaging import decode_square_u8
from cxrlab.errors import ImageReadError
from cxrlab.predict.card import INTENDED_USE, ModelCard
from cxrlab.predict.predictor import Predictor
from cxrlab.serve.limits import Busy
from cxrlab.serve.schemas import (
    ErrorBody,
    Health,
    ImageResult,
    ModelRef,
    PathologyResult,
    PredictResponse,
    Ready,
    Timing,
)

#: Overlays and previews are enlarged (nearest neighbour) to at least this side.
PICTURE_MIN_SIDE = 256

_bearer = HTTPBearer(auto_error=False, description="--token / CXRLAB_TOKEN, when set")


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the service has no token or the request bears it."""
    token = request.app.state.token
    if not token:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


def get_predictor(request: Request) -> Predictor:
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is None:
        raise HTTPException(503, "the model is still loading", headers={"Retry-After": "1"})
    return predictor


PredictorDep = Annotated[Predictor, Depends(get_predictor)]
ERRORS = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "empty upload",
        401: "missing or wrong bearer token",
        413: "request body or file count over the limit",
        422: "a file is not a readable image (the message says why)",
        503: "busy (Retry-After) or still loading",
    }.items()
}

health = APIRouter(tags=["health"])
api = APIRouter(prefix="/v1", tags=["model"], dependencies=[Depends(require_token)])


@health.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process answers."""
    return Health(status="ok")


@health.get("/readyz", response_model=Ready, responses={503: {"model": ErrorBody}})
def readyz(predictor: PredictorDep) -> Ready:
    """The model is loaded and predictions can be served."""
    return Ready(status="ready", model=predictor.card.name)


@api.get("/model", response_model=ModelCard)
def model_card(predictor: PredictorDep) -> ModelCard:
    """The model card: targets, thresholds and their rule, test metrics, provenance, use."""
    return predictor.card


@api.post("/predict", response_model=PredictResponse, responses=ERRORS)
async def predict(
    request: Request,
    predictor: PredictorDep,
    files: Annotated[list[UploadFile], File(description="PNG, JPEG, DICOM or NIfTI images")],
) -> PredictResponse:
    """Probability, threshold and finding per pathology for each uploaded image."""
    start = time.perf_counter()
    settings = request.app.state.settings
    if len(files) > settings.max_files:
        raise HTTPException(413, f"{len(files)} files sent; at most {settings.max_files} a request")
    uploads = [(await f.read(), _label(f.filename)) for f in files]
    probs, called, decode_s, infer_s = await _in_pool(request, _predict_uploads, predictor, uploads)
    results = [
        _image_result(predictor, i, name, probs[i], called[i])
        for i, (_, name) in enumerate(uploads)
    ]
    total = time.perf_counter() - start
    return PredictResponse(
        model=_model_ref(predictor),
        results=results,
        timing=Timing(decode_ms=decode_s * 1e3, inference_ms=infer_s * 1e3, total_ms=total * 1e3),
        intended_use=INTENDED_USE,
    )


PNG = {200: {"content": {"image/png": {}}, "description": "a PNG picture"}, **ERRORS}


@api.post("/cam", response_class=Response, responses=PNG)
async def cam(
    request: Request,
    predictor: PredictorDep,
    file: Annotated[UploadFile, File(description="one image")],
    pathology: Annotated[str, Query(description="one of the model's targets")],
) -> Response:
    """Grad-CAM overlay (PNG) of one pathology on the image the model saw."""
    if pathology not in predictor.targets:
        raise HTTPException(
            422, f"pathology {pathology!r} is not a target; valid: {', '.join(predictor.targets)}"
        )
    data = (await file.read(), _label(file.filename))
    k = predictor.targets.index(pathology)
    png = await _in_pool(request, _cam_png, predictor, data, k)
    return Response(png, media_type="image/png")


@api.post("/preview", response_class=Response, responses=PNG)
async def preview(
    request: Request,
    predictor: PredictorDep,
    file: Annotated[UploadFile, File(description="one image")],
) -> Response:
    """The image as the model sees it (grey, padded to a square, resized), as PNG."""
    data = (await file.read(), _label(file.filename))
    png = await _in_pool(request, _preview_png, predictor, data)
    return Response(png, media_type="image/png")


async def _in_pool(request: Request, fn, *args):
    settings = request.app.state.settings
    try:
        return await request.app.state.pool.run(fn, *args)
    except Busy:
        raise HTTPException(
            503,
            "busy: every inference slot is taken; retry later",
            headers={"Retry-After": str(settings.retry_after)},
        ) from None
    except ImageReadError as exc:
        raise HTTPException(422, str(exc)) from None
    except _Empty as exc:
        raise HTTPException(400, str(exc)) from None


class _Empty(Exception):
    pass


def _decode(predictor: Predictor, upload: tuple[bytes, str | None], index: int | None = None):
    data, name = upload
    where = "" if index is None else f"file {index + 1}: "
    if not data:
        raise _Empty(f"{where}uploaded file {name or ''!r} is empty (0 bytes); expected an image")
    try:
        return decode_square_u8(data, predictor.image_size, name=name)
    except ImageReadError as exc:
        raise ImageReadError(f"{where}{exc}") from None


def _predict_uploads(predictor: Predictor, uploads: list[tuple[bytes, str | None]]):
    start = time.perf_counter()
    images = np.stack([_decode(predictor, u, i) for i, u in enumerate(uploads)])
    decoded = time.perf_counter()
    probs = predictor.predict_u8(images)
    called = predictor.findings(probs)
    return probs, called, decoded - start, time.perf_counter() - decoded


def _cam_png(predictor: Predictor, upload, k: int) -> bytes:
    from cxrlab.explain.gallery import enlarge, overlay

    image = _decode(predictor, upload)
    cam_map = predictor.cam(image, k)
    big, big_cam, _, _ = enlarge(image, cam_map, (), None, min_side=PICTURE_MIN_SIDE)
    return _png(overlay(big, big_cam))


def _preview_png(predictor: Predictor, upload) -> bytes:
    from cxrlab.explain.gallery import enlarge

    image = _decode(predictor, upload)
    big, _, _, _ = enlarge(image, image, (), None, min_side=PICTURE_MIN_SIDE)
    return _png(big)


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_result(predictor: Predictor, index: int, name, probs, called) -> ImageResult:
    rows = [
        PathologyResult(
            name=t,
            probability=float(probs[k]),
            threshold=float(predictor.thresholds[k]),
            finding=bool(called[k]),
        )
        for k, t in enumerate(predictor.targets)
    ]
    return ImageResult(
        index=index, filename=name, findings=[r.name for r in rows if r.finding], pathologies=rows
    )


def _model_ref(predictor: Predictor) -> ModelRef:
    card = predictor.card
    return ModelRef(
        name=card.name,
        version=card.version,
        architecture=card.architecture,
        runtime=predictor.runtime,
        threshold_rule=card.threshold_rule,
        thresholds_from=card.thresholds_from,
    )


def _label(filename: str | None) -> str | None:
    """The last component of an uploaded name, printable, at most 128 characters."""
    if not filename:
        return None
    last = filename.replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(c for c in last if unicodedata.category(c)[0] != "C")
    return clean[:128] or None

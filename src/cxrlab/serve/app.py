"""`create_app(model, settings, token=)`: the FastAPI application of `cxrlab serve`.

`model` is a `Predictor`, or a function that loads one: it is then called in the lifespan
handler (in a thread), and /readyz answers 503 until it returns. The interactive docs
(/docs, /redoc) use the Swagger UI and ReDoc files that the `fastapi-offline` package ships,
served from this process: FastAPI's defaults would load them from a CDN.

Authentication: with a token, every /v1 route needs `Authorization: Bearer TOKEN`. Health,
the page, its static files and the API description stay open: a browser cannot send a
bearer header when it opens a page, so the page asks for the token and sends it itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from cxrlab import __version__
from cxrlab.config import ServeConfig
from cxrlab.predict.card import INTENDED_USE
from cxrlab.predict.predictor import Predictor
from cxrlab.serve.limits import BodyLimitMiddleware, InferencePool
from cxrlab.serve.routes import api, health

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = "/assets/docs"


def docs_assets_folder() -> Path:
    """Where fastapi-offline keeps swagger-ui-bundle.js, swagger-ui.css and ReDoc."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def create_app(
    model: Predictor | Callable[[], Predictor],
    settings: ServeConfig | None = None,
    *,
    token: str | None = None,
) -> FastAPI:
    """The service for one model (see the module docstring)."""
    settings = settings or ServeConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.pool = InferencePool(settings.workers, settings.queue)
        try:
            if not isinstance(model, Predictor):
                app.state.predictor = await run_in_threadpool(model)
                log.info("model %s loaded", app.state.predictor.card.name)
            yield
        finally:
            app.state.pool.shutdown()

    app = FastAPI(
        title="cxrlab",
        version=__version__,
        summary="Multi-label chest X-ray classification (NIH ChestX-ray14 findings).",
        description=INTENDED_USE,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.token = token or None
    app.state.predictor = model if isinstance(model, Predictor) else None
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.include_router(health)
    app.include_router(api)
    _pages(app)
    return app


def _pages(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_folder()), name="docs-assets")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="cxrlab API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title="cxrlab API",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )

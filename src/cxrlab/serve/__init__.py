"""The serve stage: `cxrlab serve`, a FastAPI service around one `Predictor`.

- `app.py`: `create_app(model, settings, token=)`, the app factory (model loaded in the
  lifespan handler when given as a loader), docs from local assets, the reader's page.
- `routes.py`: the routers (predict, Grad-CAM, preview, model card, health).
- `schemas.py`: the pydantic response models, which are the API's documentation.
- `limits.py`: the request-body limit (413) and the bounded inference pool (503).
- `static/`: the page at `/` (HTML, JS, CSS; no external asset of any kind).
"""

"""The report stage: one self-contained HTML page from a run directory's artifacts.

`build_report(run_dir) -> Path` writes `RUN_DIR/report.html`. The stage only reads what the
other stages wrote (JSON, CSV, PNG); it never imports training code or torch.

Modules (imported on first use, so `import cxrlab.report` stays light):
- `collect`: artifacts -> plain dicts, one collector per section (None = stage not run)
- `summary`: best model per pathology, CI, runner-up and paired-test verdict
- `views`: colours, training highlights, analysis numbers, Grad-CAM rows, metric tables
- `card`: the model card's data description, reproduce commands, versions, seeds
- `build`: the jinja2 page (`templates/report.html`), figures embedded as data URIs
"""

from __future__ import annotations

import importlib

_EXPORTS = {"build_report": "build", "collect_run": "collect"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cxrlab.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cxrlab.report.{_EXPORTS[name]}"), name)

"""The report stage: one self-contained HTML page from a run directory's artifacts.

`build_report(run_dir) -> Path` writes `RUN_DIR/report.html`. The stage only reads what the
other stages wrote (JSON, CSV, PNG); it never imports training code or torch.

Modules:
- `collect`: artifacts -> plain dicts, one collector per section (None = stage not run)
- `summary`: best model per pathology, CI, runner-up and paired-test verdict
- `views`: colours, training highlights, analysis numbers, Grad-CAM rows, metric tables
- `card`: the model card's data description, reproduce commands, versions, seeds
- `build`: the jinja2 page (`templates/report.html`), figures embedded as data URIs
"""

from cxrlab.report.build import build_report
from cxrlab.report.collect import collect_run

__all__ = ["build_report", "collect_run"]

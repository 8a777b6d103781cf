"""cxrlab: multi-label thoracic pathology classification on chest X-rays.

The public API is `cxrlab.api`, re-exported here: `cxrlab.prepare(...)`, `cxrlab.train(...)`,
`cxrlab.evaluate(...)`, ... (see `__all__`). Everything else in the package is internal.
Importing cxrlab loads no torch; each stage imports what it needs when it is called.
"""

import sys
import types
from importlib.metadata import PackageNotFoundError, version

from cxrlab.api import (
    analyze,
    compare,
    crossval,
    evaluate,
    explain,
    export,
    list_layers,
    open_run,
    predict,
    prepare,
    report,
    run_study,
    synth,
    train,
)
from cxrlab.results import (
    Analysis,
    Comparison,
    CrossValidation,
    Evaluation,
    Explanation,
    Run,
    Training,
)

try:
    __version__ = version("cxrlab")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "synth",
    "prepare",
    "train",
    "evaluate",
    "compare",
    "crossval",
    "analyze",
    "list_layers",
    "explain",
    "report",
    "run_study",
    "export",
    "predict",
    "open_run",
    "Run",
    "Training",
    "Evaluation",
    "Comparison",
    "CrossValidation",
    "Analysis",
    "Explanation",
]


class _Package(types.ModuleType):
    """`cxrlab.train` (and evaluate, explain, report, synth) is a function and also the name
    of an internal subpackage. Python binds a subpackage onto its parent the first time it is
    imported, which would replace the function after its first call; this keeps the public
    function. The subpackages stay importable (`from cxrlab.train.engine import ...`, via
    sys.modules); only attribute chains through the name no longer resolve: the
    `import a.b.c as x` form and patch strings for modules under cxrlab.train (tests/test_api.py
    refuses both in the code)."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and callable(vars(self).get(name)):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

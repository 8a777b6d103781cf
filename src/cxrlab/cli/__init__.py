"""The `cxrlab` command line. Only this package prints to the console or exits the process.

Each stage has its own module here that registers its command on `app`; library errors
(`CxrError`) become one line on stderr and exit code 1 (a traceback only with `--debug`).
"""

from __future__ import annotations

from cxrlab.cli.app import app, main

# Importing the command modules registers their commands on `app`.
from cxrlab.cli import (  # noqa: F401,E402  isort: skip
    data_commands,
    download_command,
    train_command,
    crossval_command,
    eval_commands,
    analyze_command,
    explain_command,
    report_command,
    run_commands,
    predict_commands,
    serve_command,
)

__all__ = ["app", "main"]

"""The typer application, the global options and the one place errors become exit codes."""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console

from cxrlab import __version__
from cxrlab.errors import CxrError

app = typer.Typer(
    name="cxrlab",
    help="Multi-label chest X-ray classification (NIH ChestX-ray14): "
    "prepare -> train -> evaluate -> compare -> analyze -> explain -> report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

console = Console()
err_console = Console(stderr=True)

_DEBUG_ENV = "CXRLAB_DEBUG"  # CXRLAB_DEBUG=1 works like --debug
_debug = {"on": False}  # set by --debug for this invocation only


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"cxrlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    _debug["on"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else (logging.INFO if verbose else logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Lightning announces hardware and tips at INFO on every fit; keep them for --verbose.
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.INFO if verbose or debug else logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning CxrError into one line + exit 1.

    Typer's standalone mode handles everything else the way click users expect: usage errors
    (a short message, exit 2), `--help`, `typer.Exit` codes and Ctrl-C (exit 130). Typer
    vendors its own click, so its exceptions are not `click.ClickException`s; leaving them to
    typer keeps that detail out of this module.
    """
    _debug["on"] = False
    try:
        app(args=argv, standalone_mode=True)  # ends in SystemExit, with the command's code
    except CxrError as exc:
        if _debug["on"] or os.environ.get(_DEBUG_ENV):
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)

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
    "prepare -> train -> evaluate -> analyze -> explain -> report -> serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

console = Console()
err_console = Console(stderr=True)

_DEBUG_ENV = "CXRLAB_DEBUG"


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
    if debug:
        os.environ[_DEBUG_ENV] = "1"
    logging.basicConfig(
        level=logging.DEBUG if debug else (logging.INFO if verbose else logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning CxrError into one line + exit 1."""
    try:
        app(args=argv, standalone_mode=False)
    except CxrError as exc:
        if os.environ.get(_DEBUG_ENV):
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise

"""The typer application, the global options and the one place errors become exit codes."""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings

import typer
from rich.console import Console

from cxrlab import __version__
from cxrlab.errors import CxrError
from cxrlab.signals import StopRequested, stop_signal, stops_raise

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


_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
_quiet = {"on": True}  # no --verbose/--debug for this invocation


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
    _quiet["on"] = not (verbose or debug)
    _filter_handlers(None, _quiet["on"])


def quiet_lightning() -> None:
    """Keep Lightning's INFO lines (hardware, the "tip" banner) for --verbose.

    Call it once Lightning is about to run: its import adds its own console handler and
    resets its loggers to INFO, so the records came out twice, through that handler and the
    root one. Importing it in `_root` instead would cost every quick error seconds.
    """
    import lightning  # noqa: F401

    for name in _LIGHTNING_LOGGERS:
        _filter_handlers(name, _quiet["on"])
    # Lightning <= 2.6 builds torch's deprecated LeafSpec on every batch: torch >= 2.10 then
    # prints a FutureWarning in every training, which the user can do nothing about.
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)


def _filter_handlers(logger: str | None, quiet: bool) -> None:
    """A handler filter, not a logger level: Lightning resets its loggers' levels."""
    for handler in logging.getLogger(logger).handlers:
        for old in [f for f in handler.filters if isinstance(f, _QuietLightning)]:
            handler.removeFilter(old)
        if quiet:
            handler.addFilter(_QuietLightning())


#: torch's deprecation of LeafSpec, raised from Lightning's own code (see quiet_lightning)
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _QuietLightning(logging.Filter):
    """Drops Lightning's records below WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(
            ("lightning", "pytorch_lightning")
        )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app; the one place errors become exit codes.

    - `CxrError`: one `error:` line, exit 1 (or the error's `exit_code`: an interrupted
      training run says how to resume and exits 143/130).
    - `OSError` (a read-only folder, a full disk, a permission): one line naming the path.
    - SIGTERM / Ctrl-C (`cxrlab.signals`): one line, exit 143 / 130.

    Typer's standalone mode handles the rest the way click users expect: usage errors (a
    short message, exit 2), `--help` and `typer.Exit` codes. Typer vendors its own click, so
    its exceptions are not `click.ClickException`s; leaving them to typer keeps that detail
    out of this module.
    """
    _debug["on"] = False
    try:
        with stops_raise():
            app(args=argv, standalone_mode=True)  # ends in SystemExit, with the command's code
    except CxrError as exc:
        _fail(exc, str(exc), getattr(exc, "exit_code", 1))
    except OSError as exc:
        _fail(exc, os_error_message(exc), 1)
    except StopRequested as exc:
        message = (
            f"stopped by {exc.stop.name}; finished work is kept: run the same command again "
            "to continue (train: add --resume)"
        )
        _fail(exc, message, exc.stop.exit_code)


def _fail(exc: BaseException, message: str, code: int) -> None:
    if (_debug["on"] or os.environ.get(_DEBUG_ENV)) and stop_signal(exc) is None:
        raise exc
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


#: What to do about the OSErrors a user can fix.
_OS_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere; finished work is kept",
    errno.EDQUOT: "free some space or write elsewhere; finished work is kept",
    errno.EROFS: "use a writable run directory, or copy it somewhere writable",
    errno.EACCES: "use a folder you may write to",
    errno.EPERM: "use a folder you may write to",
}


def os_error_message(exc: OSError) -> str:
    """`PATH: strerror (what to do)` for an OSError, the path first so it is seen."""
    where = exc.filename if exc.filename is not None else "a file"
    hint = _OS_HINTS.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{where}: {text}" + (f" ({hint})" if hint else "")

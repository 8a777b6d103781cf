"""cxrlab's one signal policy: SIGTERM and Ctrl-C stop the work as an exception, never as a
silent exit 0 or a bare exit 1.

`stops_raise()` (installed by the CLI around every command) turns SIGTERM and SIGINT into
`StopRequested`, so `finally` blocks run, temp files and locks are released, and the CLI ends
with one line and exit 143 (128 + SIGTERM) or 130 (128 + SIGINT), as SLURM, `timeout`,
`docker stop` and shells expect. It is not KeyboardInterrupt on purpose: Lightning answers
that with `sys.exit(1)` and click with "Aborted!"; any other BaseException they re-raise.
`stop_signal(exc)` also recognises KeyboardInterrupt and Lightning's `SIGTERMException` (its
own handler, when cxrlab is used as a library), so the training engine can say which epoch
was reached and that `--resume` continues.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple


class StopSignal(NamedTuple):
    name: str  # "SIGTERM" or "Ctrl-C"
    exit_code: int  # 143 or 130


SIGTERM_STOP = StopSignal("SIGTERM", 128 + signal.SIGTERM)
CTRL_C_STOP = StopSignal("Ctrl-C", 128 + signal.SIGINT)
_BY_SIGNUM = {signal.SIGTERM: SIGTERM_STOP, signal.SIGINT: CTRL_C_STOP}


class StopRequested(BaseException):
    """SIGTERM or Ctrl-C arrived. A BaseException, like KeyboardInterrupt: `except Exception`
    (a stage marked failed, an error message) must not swallow a request to stop."""

    def __init__(self, stop: StopSignal) -> None:
        super().__init__(stop.name)
        self.stop = stop


def stop_signal(exc: BaseException | None) -> StopSignal | None:
    """Which stop request `exc` is, or None for an ordinary error."""
    if isinstance(exc, StopRequested):
        return exc.stop
    if isinstance(exc, KeyboardInterrupt):
        return CTRL_C_STOP
    # Lightning's SIGTERMException (a SystemExit); matched by name: no Lightning import here.
    if type(exc).__name__ == "SIGTERMException":
        return SIGTERM_STOP
    return None


def _raise_stop(signum, frame) -> None:
    raise StopRequested(_BY_SIGNUM[signum])


@contextmanager
def stops_raise() -> Iterator[None]:
    """For the block, SIGTERM and SIGINT raise `StopRequested` in the main thread; the old
    handlers come back after. Lightning's fit keeps them (it calls the handler it finds
    after its own SIGTERM notifier). Outside the main thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_stop) for signum in _BY_SIGNUM}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

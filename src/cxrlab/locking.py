"""One exclusive lock per run directory, data folder or model folder (`filelock`).

Two cxrlab processes that write the same files (two `train --name m`, two `prepare`, two
`run` on one `--out`) would silently overwrite each other's results. Each writer holds the
lock of what it writes for as long as it writes; a second one is refused at once with
`BusyError` naming the holder's pid. A process that reads what another writes holds its own
lock first, then checks the other's (`require_free`): of two that start together, at least
one sees the other. The kernel releases the lock when its holder dies
(even by SIGKILL), so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from cxrlab.errors import BusyError


@contextmanager
def exclusive(lock_file: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold `lock_file` for the block, or raise `BusyError` if another process holds it.

    `what` names the locked thing in the message ("model folder runs/r/models/cnn").
    The holder writes its pid into the file; filelock never truncates a held lock file.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BusyError(
            f"{what} is in use by pid {_holder(lock_file)} (lock {lock_file}); wait for that "
            "process to finish, or stop it"
        ) from None
    try:
        _write_pid(lock_file)
        yield
    finally:
        lock.release()


def require_free(lock_file: str | os.PathLike, what: str) -> None:
    """`BusyError` if another process holds `lock_file` now (e.g. `train` checks that no
    `prepare` is rewriting the data it is about to read). Creates nothing that is absent."""
    if Path(lock_file).is_file():
        with exclusive(lock_file, what):
            pass


def _write_pid(lock_file: Path) -> None:
    """Best effort: on a full disk the pid cannot be written, but the lock still holds (and
    the first real write names the full disk)."""
    try:
        fd = os.open(lock_file, os.O_WRONLY)
    except OSError:
        return
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    finally:
        os.close(fd)


def _holder(lock_file: Path) -> str:
    try:
        text = lock_file.read_text().strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"

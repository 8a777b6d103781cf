"""One file over HTTP(S), resumable: the bytes go to `NAME.part`, which is renamed to NAME
only when the server's length has arrived in full.

* Resume: an existing `.part` is continued with `Range: bytes=N-`. A server that answers
  200 instead of 206 does not support ranges: the file restarts from byte 0, with a warning.
* Retries: connection errors, timeouts, a body shorter than announced and HTTP 408/429/5xx
  are retried after 1, 2, 4, ... x `retry_wait` seconds (at most 60 s); a try that gained
  bytes resets the count, so a long transfer on a flaky line is not given up for old drops.
  Other HTTP statuses (403, 404, ...) stop at once, naming the URL.
* Proxies: urllib reads `https_proxy` / `http_proxy` / `no_proxy` from the environment.

Written by hand on the standard library (urllib) because resuming, restarting and counting
bytes is the whole point here and takes fewer lines than adapting a client library to it.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxrlab import __version__
from cxrlab.errors import DataError

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
CHUNK = 1 << 20  # bytes per read; also how often progress is reported
MAX_WAIT = 60.0  # seconds: the longest pause between two tries
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED = re.compile(r"bytes\s+\*/(\d+)")


@dataclass
class Fetched:
    """What one `fetch` did: bytes received in this call, the file's size, restarts."""

    path: Path
    received: int
    size: int
    restarted: bool = False


class Progress:
    """Callbacks for a progress display; this one shows nothing. `start` is called at each
    try with the bytes already held (0 after a restart), `advance` per block received."""

    def start(self, name: str, total: int | None, have: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def fetch(
    url: str,
    dest: str | Path,
    *,
    retries: int = 5,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Fetched:
    """Download `url` to `dest`, resuming `dest.part`; `dest` appears only when complete."""
    dest = Path(dest)
    part = part_path(dest)
    progress = progress or Progress()
    result = Fetched(dest, received=0, size=0)
    failures = 0
    while True:
        before = result.received
        try:
            if _attempt(url, part, timeout, progress, result):
                break
            continue  # the server refused the range of a stale .part: start again now
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_STATUS:
                raise DataError(
                    f"{url} answered HTTP {exc.code} {exc.reason}; check the link or the"
                    " mirror (--base-url), or fetch it by hand into the target folder"
                ) from exc
            error: Exception = exc
        except TRANSIENT as exc:
            error = exc
        failures = 1 if result.received > before else failures + 1
        if failures > retries:
            kept = part.stat().st_size if part.exists() else 0
            raise DataError(
                f"giving up on {url} after {failures} failed tries ({error}); {kept} bytes"
                f" are kept in {part}: run the same command again to resume"
            ) from error
        wait = min(MAX_WAIT, retry_wait * 2 ** (failures - 1))
        log.warning("%s: %s; retrying in %.0f s", dest.name, error, wait)
        sleep(wait)
    os.replace(part, dest)
    progress.finish()
    return result


def _attempt(url: str, part: Path, timeout: float, progress: Progress, result: Fetched) -> bool:
    """One request; True when `part` holds the whole file, False to retry at once."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"cxrlab/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:
            raise
        complete = _unsatisfiable(exc, part, have)
        result.size = have if complete else 0
        return complete
    with response:
        have, total = _start_offset(response, part, have, result)
        progress.start(part.name.removesuffix(PART_SUFFIX), total, have)
        with open(part, "ab" if have else "wb") as out:
            while block := response.read(CHUNK):
                out.write(block)
                result.received += len(block)
                progress.advance(len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        raise ConnectionError(f"the connection closed after {size} of {total} bytes")
    result.size = size
    return True


def _start_offset(response, part: Path, have: int, result: Fetched):
    """(offset to write at, total size or None) from the response's status and headers."""
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if have and response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match and int(match[1]) == have:
            total = int(match[3]) if match[3] != "*" else None
            return have, total
        log.warning("%s: the server sent another range than asked; restarting it", part.name)
    elif have:
        log.warning(
            "%s: the server does not support resuming (HTTP Range); restarting this file"
            " from the start (%d bytes already here are fetched again)",
            part.name.removesuffix(PART_SUFFIX),
            have,
        )
    if have:
        result.restarted = True
    return 0, length


def _unsatisfiable(exc, part: Path, have: int) -> bool:
    """HTTP 416 to `Range: bytes=have-`: complete when have == size, else start afresh."""
    match = _UNSATISFIED.match(exc.headers.get("Content-Range", "") if exc.headers else "")
    if match and int(match[1]) == have:
        return True
    log.warning("%s is longer than the file on the server; starting it again", part)
    part.unlink()
    return False


def remote_size(url: str, timeout: float = 30.0) -> int | None:
    """The size a HEAD request announces, or None when the server does not say (or fails)."""
    request = urllib.request.Request(
        url, method="HEAD", headers={"User-Agent": f"cxrlab/{__version__}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
    except TRANSIENT as exc:
        log.info("HEAD %s failed (%s); its size is unknown", url, exc)
        return None
    return int(length) if length and length.isdigit() else None

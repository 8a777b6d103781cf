"""Saying no early: a request-body limit (413) and a bounded inference pool (503).

The body limit is an ASGI middleware: a declared Content-Length over the limit is refused
before a byte is read, and a chunked body is counted as it streams and cut off at the limit
(the error is an HTTPException, which FastAPI's body parsing passes through unchanged).

The pool runs CPU-bound work (decoding, the forward pass, Grad-CAM) on `workers` threads,
off the event loop. At most `workers + queue` jobs are admitted at once; one more raises
`Busy` at once, which the service answers with 503 and Retry-After, instead of holding
requests (and their memory) in an ever longer queue.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")


def too_large(limit: int) -> str:
    return f"request body is larger than the limit of {limit:,} bytes (--max-upload-bytes)"


class BodyLimitMiddleware:
    """413 for any request whose body exceeds `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _reject(send, 413, too_large(self.max_bytes))
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, too_large(self.max_bytes))
            return message

        await self.app(scope, counted, send)


async def _reject(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Busy(Exception):
    """The pool has `workers + queue` jobs admitted already."""


class InferencePool:
    """`workers` threads and room for `queue` waiting jobs; past that, `Busy`."""

    def __init__(self, workers: int, queue: int) -> None:
        self.capacity = workers + queue
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="cxrlab-infer")
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def in_use(self) -> int:
        """Jobs admitted and not yet finished (running or waiting)."""
        return self._admitted

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a worker thread; raises Busy when no slot is free."""
        if not self._slots.acquire(blocking=False):
            raise Busy(f"all {self.capacity} inference slots are taken")
        self._count(+1)
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._release()
            raise
        # The slot frees when the work ends, even if the client has gone away meanwhile.
        future.add_done_callback(lambda _: self._release())
        return await asyncio.wrap_future(future)

    def _count(self, delta: int) -> None:
        with self._lock:
            self._admitted += delta

    def _release(self) -> None:
        self._count(-1)
        self._slots.release()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

"""A tiny NIH mirror for download tests: a real HTTP server on 127.0.0.1 only.

It serves files from memory and can, per file and for its first N requests: drop the
connection after K bytes, serve a corrupted copy, or (for the whole server) ignore Range.
Every request is logged with the Range asked for and the body bytes sent.
"""

from __future__ import annotations

import io
import re
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

METADATA = ("Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt")


@dataclass
class Request:
    method: str
    name: str
    range: str | None
    sent: int


@dataclass
class Mirror:
    files: dict[str, bytes]
    ranges: bool = True  # honour Range requests
    drop: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (times, after K)
    corrupt: dict[str, int] = field(default_factory=dict)  # name -> times served damaged
    log: list[Request] = field(default_factory=list)
    url: str = ""

    def gets(self, name: str | None = None) -> list[Request]:
        return [r for r in self.log if r.method == "GET" and name in (None, r.name)]

    def sent(self) -> int:
        return sum(r.sent for r in self.log)


def _handler(mirror: Mirror):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool):
            name = self.path.lstrip("/")
            asked = self.headers.get("Range")
            # Logged before any byte goes out, so a test that clears the log after its
            # client returned never sees a late entry; `sent` is filled in before the body.
            request = Request(self.command, name, asked, 0)
            mirror.log.append(request)
            if name not in mirror.files:
                self.send_error(404)
                return
            data = mirror.files[name]
            if body and mirror.corrupt.get(name, 0) > 0:
                mirror.corrupt[name] -= 1
                middle = len(data) // 2
                data = data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64])
                data += mirror.files[name][middle + 64 :]
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", asked or "")
            if match and mirror.ranges:
                start = int(match[1])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            payload = data[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if not body:
                return
            times, after = mirror.drop.get(name, (0, 0))
            if times > 0:
                mirror.drop[name] = (times - 1, after)
                payload = payload[:after]
                self.close_connection = True
            request.sent = len(payload)  # before writing: the client may finish first
            self.wfile.write(payload)
            self.wfile.flush()

    return Handler


def serve(mirror: Mirror) -> ThreadingHTTPServer:
    """Start `mirror` on 127.0.0.1 (a free port) in a daemon thread; sets mirror.url."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(mirror))
    server.daemon_threads = True
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return server


def tar_gz(root: Path, names: list[str], damaged: str | None = None) -> bytes:
    """A tar.gz of `root/images/<name>` as `images/<name>`, like the NIH archives;
    `damaged` is stored truncated to half its bytes (the archive itself stays valid)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in names:
            data = (root / "images" / name).read_bytes()
            if name == damaged:
                data = data[: len(data) // 2]
            info = tarfile.TarInfo(f"images/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sources_file(
    path: Path, counts: list[int], sha256: dict[str, str] | None = None, metadata=METADATA
) -> Path:
    """A sources file like nih.yaml for a mirror of len(counts) archives, no links."""
    sha256 = sha256 or {}
    doc = {
        "name": "test mirror",
        "landing_page": "http://127.0.0.1/",
        "licence": "synthetic",
        "metadata": [{"name": n} for n in metadata],
        "archives": [
            {"name": archive_name(k), "images": c, "sha256": sha256.get(archive_name(k))}
            for k, c in enumerate(counts, start=1)
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def archive_name(k: int) -> str:
    return f"images_{k:03d}.tar.gz"

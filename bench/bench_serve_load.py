"""Serving throughput: a real `cxrlab serve` process under 1, 4 and 8 concurrent clients.

Builds a small synthetic run at --size px, trains EfficientNet-Lite0 (bundled weights) for one
epoch, evaluates it (thresholds), exports it with ONNX, starts `cxrlab serve` on 127.0.0.1
with --runtime, then for each concurrency c runs c client threads that each POST one
real-size PNG --requests times to /v1/predict. Prints per c: requests/s, latency p50/p95,
errors (any non-200), and the server's RSS (psutil) after the load. The queue is sized so
that no request is refused: this measures throughput, not the 503 path (tests do that).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_serve_load.py [--size 224] [--requests 25]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from cxrlab.config import DataConfig, EvaluateConfig
from cxrlab.data.prepare import prepare
from cxrlab.evaluate.workflow import evaluate_model
from cxrlab.predict.bundle import export_model
from cxrlab.synth import write_synthetic_dataset
from cxrlab.train.engine import train_model

TARGETS = ["Atelectasis", "Cardiomegaly", "Effusion", "Pneumothorax"]


def build_export(root: Path, size: int) -> tuple[Path, Path]:
    """(export folder, one PNG of the data set)."""
    data = root / "synthetic"
    write_synthetic_dataset(data, patients=40, seed=0, image_size=256)
    run = root / "run"
    prepare(DataConfig(data_root=str(data), pathologies=TARGETS, image_size=size), run,
            progress=False)  # fmt: skip
    config = {"model": {"name": "efficientnet_lite0", "pretrained": True},
              "train": {"epochs": 1, "batch_size": 16}}  # fmt: skip
    train_model(run, config, name="lite0", progress_bar=False)
    evaluate_model(run, "lite0", EvaluateConfig(bootstrap=20, figures=False, device="cpu"),
                   progress=False)  # fmt: skip
    export_model(run, "lite0", root / "export", onnx=True)
    return root / "export", sorted((data / "images").glob("*.png"))[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(export: Path, port: int, runtime: str, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cxrlab", "serve", "--model", str(export), "--port", str(port),
           "--runtime", runtime, "--workers", str(workers), "--queue", "64"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # bounded wait for the model to load
        if proc.poll() is not None:
            raise SystemExit(f"cxrlab serve exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("cxrlab serve did not become ready within 120 s")


def load(port: int, png: Path, clients: int, requests: int) -> dict:
    body = png.read_bytes()
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for _ in range(requests):
                start = time.perf_counter()
                code = http.post("/v1/predict", files={"files": (png.name, body)}).status_code
                with lock:
                    latencies.append(time.perf_counter() - start)
                    if code != 200:
                        errors.append(code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "req_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(ordered) * 1e3,
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument("--runtime", default="onnxruntime", choices=["torch", "onnxruntime"])
    parser.add_argument("--workers", type=int, default=1, help="server inference threads")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_serve_load_"))
    export, png = build_export(root, args.size)
    port = free_port()
    server = start_server(export, port, args.runtime, args.workers)
    try:
        rss = psutil.Process(server.pid)
        print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; Lite0 {args.size} px, "
              f"{args.runtime}, {args.workers} worker(s); idle RSS "
              f"{rss.memory_info().rss / 2**20:.0f} MiB", flush=True)  # fmt: skip
        for clients in (1, 4, 8):
            row = load(port, png, clients, args.requests)
            row["rss_mib"] = rss.memory_info().rss / 2**20
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items()), flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()

"""`cxrlab serve` as a real uvicorn process on 127.0.0.1: a bounded load test, an overload
burst that gets 503s, and headless Chromium driving the reader's page.

Chromium is Debian's (`apt-get install chromium`), driven by Playwright's Python package
through `executable_path` (Playwright's own browser download cannot work offline); the test
skips with the reason when either is missing. Set CXRLAB_SCREENSHOT=path to keep the page's
screenshot (docs/images/serve_page.png comes from there).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(served):
    """(base URL, process) of `cxrlab serve` on the session's export: 1 worker, queue 8
    (room for the 8 load clients; the burst then overflows it)."""
    port = _free_port()
    command = [
        sys.executable, "-m", "cxrlab", "serve", "--model", str(served[2]), "--port", str(port),
        "--device", "cpu", "--threads", "1", "--workers", "1", "--queue", "8",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # bounded wait for readiness
            if process.poll() is not None:
                pytest.fail(f"serve exited: {process.stdout.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("serve did not become ready within 90 s")
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _predict(base: str, files: list[tuple[str, bytes]], timeout: float = 60) -> int:
    response = httpx.post(
        f"{base}/v1/predict", files=[("files", f) for f in files], timeout=timeout
    )
    return response.status_code


def test_load_then_overload_then_healthy(server, served):
    base, process = server
    png = next(served[1].rglob("*.png")).read_bytes()

    def client(_: int) -> list[int]:
        return [_predict(base, [("a.png", png)]) for _ in range(25)]

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = [c for batch in pool.map(client, range(8)) for c in batch]
    elapsed = time.perf_counter() - start
    assert codes == [200] * 200, sorted(set(codes))
    assert elapsed < 300

    burst = [("a.png", png)] * 16  # 16 images a request: decoding keeps the worker busy
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(_predict, base, burst, 60) for _ in range(32)]
        burst_codes = [f.result(timeout=120) for f in futures]  # a timeout fails the test
    assert set(burst_codes) <= {200, 503}, burst_codes
    assert burst_codes.count(503) >= 1 and burst_codes.count(200) >= 3, burst_codes
    response = httpx.post(f"{base}/v1/predict", files=[("files", ("a.png", png))], timeout=30)
    assert response.status_code == 200
    assert httpx.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
    assert process.poll() is None


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


@pytest.mark.realdata
def test_chromium_reads_a_png_and_a_dicom_on_the_page(server, nih_dev, peer_dicom, tmp_path):
    if _chromium() is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    base, _ = server
    png = sorted((nih_dev / "images").glob("*.png"))[0]
    dicom = peer_dicom / "siim_cr_chest_pa.dcm"
    requests, problems = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "profile",  # a fresh --user-data-dir
            executable_path=_chromium(),
            args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 760},
        )
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: m.type in ("error", "warning") and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(base + "/", timeout=30_000)
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            for image in (dicom, png):
                page.set_input_files("#file", str(image))
                page.wait_for_selector("body[data-state=done]", timeout=60_000)
                assert page.locator("#bars li").count() == 3
                assert "findings at threshold" in page.inner_text("#status")
                _toggle_cam(page)
            shot = page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            page.goto(base + "/docs", timeout=30_000)
            page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
        finally:
            browser.close()
    assert len(shot) > 10_000
    if os.environ.get("CXRLAB_SCREENSHOT"):
        Path(os.environ["CXRLAB_SCREENSHOT"]).write_bytes(shot)
    outside = [u for u in requests if not u.startswith((base, "blob:", "data:"))]
    assert outside == [] and problems == [], (outside, problems)


def _toggle_cam(page) -> None:
    """Switch the first pathology's Grad-CAM on: the picture becomes the loaded overlay."""
    page.locator("button.cam").first.click()
    page.wait_for_selector("#picture[data-showing^='cam:']", timeout=30_000)
    page.wait_for_function(
        "document.getElementById('picture').complete && "
        "document.getElementById('picture').naturalWidth >= 256",
        timeout=30_000,
    )
    widths = page.eval_on_selector_all(".fill", "els => els.map(e => e.style.width)")
    marks = page.eval_on_selector_all(".threshold", "els => els.map(e => e.style.left)")
    assert len(widths) == len(marks) == 3 and all(w.endswith("%") for w in widths + marks)

"""GET /dashboard: the page and its data over real sockets, access with API keys, and the page itself in headless
Chromium while a load runs (charts drawn, values changing, no console errors)."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchery.testing import EchoModel, FailingModel, server_thread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHARTS = ("throughput", "latency", "queue", "batch", "cache", "errors")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "dashboard.png"


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with server_thread([EchoModel(), FailingModel()], cache="echo=memory") as running:
        yield running


def test_page_is_served_self_contained(server: Any) -> None:
    page = httpx.get(f"{server.url}/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert html.count("<canvas") == len(CHARTS)
    assert "<script src" not in html, "no external scripts: the machine may have no internet"
    assert "http://" not in html.replace("http://www.w3.org", "")
    assert "https://" not in html


def test_data_snapshot_counts_model_traffic(server: Any) -> None:
    for _ in range(3):
        httpx.post(f"{server.url}/v1/models/echo/predict", json={"input": "same"})
    httpx.post(f"{server.url}/v1/models/failing/predict", json={"input": "fail"})
    data = httpx.get(f"{server.url}/dashboard/data").json()
    echo = data["models"]["echo"]
    assert sum(echo["requests"].values()) >= 3
    assert echo["cache"]["hit"] >= 2
    assert len(echo["latency"]["counts"]) == len(echo["latency"]["bounds"]) + 1
    assert sum(echo["batch_size"]["counts"]) >= 1
    assert echo["queue_depth"] == 0
    assert "500" in data["models"]["failing"]["requests"]
    assert "" not in data["models"], "probe and dashboard traffic is not a model"


def test_dashboard_can_be_turned_off() -> None:
    with server_thread([EchoModel()], dashboard=False) as off:
        assert httpx.get(f"{off.url}/dashboard").status_code == 404
        assert httpx.get(f"{off.url}/dashboard/data").status_code == 404


def test_dashboard_without_metrics_says_how_to_turn_them_on() -> None:
    with server_thread([EchoModel()], metrics="off") as bare:
        response = httpx.get(f"{bare.url}/dashboard/data")
        assert response.status_code == 404
        assert "BATCHERY_METRICS" in response.json()["error"]["message"]


def test_with_api_keys_the_data_needs_the_admin_key() -> None:
    with server_thread([EchoModel()], api_keys="user-key", admin_api_key="admin-key") as keyed:
        assert httpx.get(f"{keyed.url}/dashboard").status_code == 200, "the page holds no data and asks for the key"
        data = f"{keyed.url}/dashboard/data"
        assert httpx.get(data).status_code == 401
        refused = httpx.get(data, headers={"X-API-Key": "user-key"})
        assert refused.status_code == 403
        assert "admin key" in refused.json()["error"]["message"]
        assert httpx.get(data, headers={"X-API-Key": "admin-key"}).status_code == 200
        assert httpx.get(data, headers={"Authorization": "Bearer admin-key"}).status_code == 200


class Load:
    """Steady requests on a thread: echo (repeated inputs, so the cache hits), and now and then a failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:

            async def worker(n: int) -> None:
                i = 0
                while not self.stop.is_set():
                    i += 1
                    if i % 25 == 0:
                        await http.post("/v1/models/failing/predict", json={"input": "fail"})
                    else:
                        await http.post("/v1/models/echo/predict", json={"inputs": [f"text {(i + n) % 40}"] * 4})
                    self.sent += 1

            await asyncio.gather(*(worker(n) for n in range(3)))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.slow
def test_charts_render_and_move_in_headless_chromium(server: Any, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; scripts/test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="`pip install playwright` (it is in the dev extra)")
    problems: list[str] = []
    with Load(server.url) as load, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(f"{server.url}/dashboard")
            page.wait_for_function("window.batcheryDashboard.frames >= 4", timeout=30_000)
            first = page.evaluate(LAST_VALUES)
            page.wait_for_function(f"window.batcheryDashboard.frames >= {page.evaluate(FRAMES) + 2}", timeout=30_000)
            second = page.evaluate(LAST_VALUES)
            painted = page.evaluate(PAINTED)
            kpi = page.inner_text("#kpi-rps")
            page.screenshot(path=str(tmp_path / "dashboard.png"))
            if os.environ.get("BATCHERY_UPDATE_SCREENSHOT"):
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp_path / "dashboard.png", SCREENSHOT)
        finally:
            browser.close()
    assert load.sent > 0
    assert not problems, problems
    assert float(kpi) > 0, "throughput shows the load"
    assert first["throughput"]["echo"][0] < second["throughput"]["echo"][0], "the charts move on"
    assert second["throughput"]["echo"][1] > 0
    assert any(name.startswith("echo p99") for name in second["latency"])
    assert second["cache"]["echo"][1] > 0, "repeated inputs hit the cache"
    assert any("failing" in name for name in second["errors"])
    for chart in CHARTS:
        assert painted[chart] > 200, f"the {chart} chart has barely any pixels drawn"


FRAMES = "window.batcheryDashboard.frames"
# Per chart, per series: the last point as [time, value].
LAST_VALUES = """() => {
  const out = {};
  for (const [chart, series] of Object.entries(window.batcheryDashboard.series)) {
    out[chart] = {};
    for (const [name, points] of series) out[chart][name] = points[points.length - 1];
  }
  return out;
}"""
# Per chart: how many pixels are not background (lines, grid, labels).
PAINTED = """() => {
  const out = {};
  for (const canvas of document.querySelectorAll("canvas")) {
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
    out[canvas.id] = painted;
  }
  return out;
}"""

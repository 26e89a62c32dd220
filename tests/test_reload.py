"""Hot reload and rollback under load: nothing fails, the version switches once, the old version's memory goes."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from batchery import loader
from batchery._http_client import Connection
from batchery.model import Model
from batchery.testing import running_server

HERE = os.path.abspath(__file__)
ADMIN = "admin-secret"


def admin_client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=60, headers={"X-API-Key": ADMIN})


class Tagged(Model):
    """Answers `<tag>:<input>`, so a response shows which version computed it; `ballast_mb` holds memory."""

    name = "tagged"
    version = "1"
    tag = "v1"
    ballast_mb = 0
    max_batch_size = 8
    example = "warm"

    def setup(self, device: str) -> None:
        self.ballast = np.ones(self.ballast_mb * 1024 * 1024 // 8) if self.ballast_mb else None

    def predict(self, batch: list[Any]) -> list[Any]:
        return [f"{self.tag}:{x}" for x in batch]


class TaggedV2(Tagged):
    version = "2"
    tag = "v2"


class Heavy(Tagged):
    version = "heavy"
    tag = "heavy"
    ballast_mb = 300


class Broken(Tagged):
    def setup(self, device: str) -> None:
        raise RuntimeError("corrupt weights")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def load(url: str, stop: asyncio.Event, log: list[list[tuple[str, str]]]) -> None:
    """One connection sending requests back to back, recording (header version, body tag) in order."""
    conn = await Connection.open(url)
    sequence: list[tuple[str, str]] = []
    log.append(sequence)
    i = 0
    try:
        while not stop.is_set():
            response = await conn.request("POST", "/v1/models/tagged/predict", orjson.dumps({"input": i}))
            assert response.status == 200, response.body
            tag, _, echoed = orjson.loads(response.body)["output"].partition(":")
            assert echoed == str(i)
            sequence.append((response.headers["x-model-version"], tag))
            i += 1
    finally:
        await conn.close()


async def test_reload_then_rollback_under_load_fails_nothing_and_switches_once() -> None:
    async with running_server([Tagged()], admin_api_key=ADMIN) as server, admin_client(server.url) as admin:
        stop = asyncio.Event()
        log: list[list[tuple[str, str]]] = []
        clients = [asyncio.create_task(load(server.url, stop, log)) for _ in range(8)]
        await asyncio.sleep(0.2)
        reloaded = await admin.post("/admin/models/tagged/reload", json={"target": f"{HERE}:TaggedV2"})
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["version"] == "2"
        await asyncio.sleep(0.2)
        models = (await admin.get("/v1/models")).json()["models"]
        assert next(m for m in models if m["name"] == "tagged")["version"] == "2"
        rolled = await admin.post("/admin/models/tagged/rollback")
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["version"] == "1"
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*clients)
    tags = {"1": "v1", "2": "v2"}
    for sequence in log:
        assert sequence, "a client got no response"
        assert all(tags[version] == tag for version, tag in sequence), "a header named another version than the body"
        versions = [version for version, _ in sequence]
        switches = [i for i in range(1, len(versions)) if versions[i] != versions[i - 1]]
        assert len(switches) <= 2, versions  # 1 -> 2 once, then 2 -> 1 once: never back and forth
        assert versions[0] == "1"
        assert versions[-1] == "1"
    assert any("2" in {v for v, _ in sequence} for sequence in log), "no request was served by version 2"


async def test_a_failed_reload_leaves_the_old_version_serving() -> None:
    async with running_server([Tagged()], admin_api_key=ADMIN) as server, admin_client(server.url) as http:
        failed = await http.post("/admin/models/tagged/reload", json={"target": f"{HERE}:Broken", "version": "3"})
        assert failed.status_code == 500
        assert "corrupt weights" in failed.json()["error"]["message"]
        ok = await http.post("/v1/models/tagged/predict", json={"input": "still"})
        assert ok.json()["output"] == "v1:still"
        assert ok.headers["x-model-version"] == "1"
        nothing = await http.post("/admin/models/tagged/rollback")
        assert nothing.status_code == 409
        bad = await http.post("/admin/models/tagged/reload", content=b'{"target": 5}')
        assert bad.status_code == 400


async def test_the_old_versions_memory_is_released_after_the_swap() -> None:
    async with running_server([Heavy()], admin_api_key=ADMIN) as server, admin_client(server.url) as http:
        gc.collect()
        with_heavy = rss_mb()
        reloaded = await http.post("/admin/models/tagged/reload", json={"target": f"{HERE}:Tagged", "version": "1"})
        assert reloaded.status_code == 200, reloaded.text
        assert (await http.post("/v1/models/tagged/predict", json={"input": 1})).json()["output"] == "v1:1"
        for lane in server.engine.handle("tagged").lanes:
            assert lane.model.ballast is None
        gc.collect()
        released = with_heavy - rss_mb()
    workers = server.engine.handle("tagged").workers
    assert released > 0.8 * 300 * workers, f"only {released:.0f} MiB released"


async def test_sighup_reloads_every_model_and_file_watch_picks_up_new_code(tmp_path: Path) -> None:
    source = tmp_path / "hot.py"
    source.write_text(HOT_MODEL.format(tag="v1"))
    server_settings = {"watch": True}
    served = loader.served(f"{source}:Hot")
    async with running_server([served], **server_settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.post("/v1/models/hot/predict", json={"input": 1})).json()["output"] == "v1:1"
        results = await server.reload()  # what SIGHUP runs
        assert results == {"hot": "1.1"}
        source.write_text(HOT_MODEL.format(tag="v2"))
        os.utime(source, (time.time() + 5, time.time() + 5))  # a newer mtime even on coarse clocks
        for _ in range(100):  # the watch looks once a second
            response = await http.post("/v1/models/hot/predict", json={"input": 1})
            if response.json()["output"] == "v2:1":
                break
            await asyncio.sleep(0.1)
        assert response.json()["output"] == "v2:1"
        assert response.headers["x-model-version"] == "1.2"
        metrics = (await http.get("/metrics")).text
    assert 'batchery_model_reloads_total{model="hot",result="ok"} 2.0' in metrics


HOT_MODEL = """
from batchery import Model


class Hot(Model):
    name = "hot"
    example = 0

    def predict(self, batch):
        return ["{tag}:" + str(x) for x in batch]
"""

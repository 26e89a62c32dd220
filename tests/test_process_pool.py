"""The CPU pool: threads and spawned processes, bounded, and a pipeline step that uses it over HTTP."""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

import httpx
import pytest

from batchery import Engine, Model
from batchery.errors import ConfigError, Overloaded, PayloadTooLarge
from batchery.pipeline import CpuStep, Pipeline, Sequential
from batchery.testing import running_server
from batchery.workers.cpu_pool import CpuPool, restarts


class Identity(Model):
    name = "identity"
    workers = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)


def die_on(value: str) -> str:
    """Kills its worker process for the input "die", as a segfault or an OOM kill would; reverses anything else."""
    if value == "die":
        os._exit(1)
    return value[::-1]


class Bounded(Pipeline):
    """Hands all of a request's inputs to one CPU pool at once, with room for two."""

    name = "bounded"

    def __init__(self) -> None:
        self.pool = CpuPool("thread", workers=2, max_queue=2)

    def stages(self) -> list[Any]:
        return []

    async def run(self, engine: Engine, payloads: list[Any], deadline: float | None) -> list[Any]:
        return await self.pool.map(abs, payloads)

    async def aclose(self) -> None:
        self.pool.close()


async def test_thread_pool_runs_off_the_loop() -> None:
    pool = CpuPool("thread", workers=2)
    try:
        assert await pool.run(sum, [1, 2, 3]) == 6
        assert pool.pending == 0
    finally:
        pool.close()


@pytest.mark.slow
async def test_process_pool_runs_in_other_processes_and_is_bounded() -> None:
    pool = CpuPool("process", workers=1, max_queue=1)
    try:
        await asyncio.to_thread(pool.start)
        assert await pool.run(os.getpid) != os.getpid()
        slow = asyncio.create_task(pool.run(time.sleep, 0.3))
        await asyncio.sleep(0)  # the first call now holds the only place
        with pytest.raises(Overloaded, match="limit 1"):
            await pool.run(math.factorial, 5)
        await slow
        assert await pool.run(math.factorial, 5) == 120
    finally:
        pool.close()


def test_pool_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="thread, process"):
        CpuPool("fiber")
    with pytest.raises(ConfigError):
        CpuPool("thread", max_queue=0)


@pytest.mark.slow
async def test_process_step_in_a_pipeline_over_http() -> None:
    pipeline = Sequential("factorials", [CpuStep(math.factorial, kind="process", workers=2), Identity()])
    async with running_server([pipeline]) as server, httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        response = await http.post("/v1/models/factorials/predict", json={"inputs": [3, 4, 5]})
        assert response.status_code == 200, response.text
        assert response.json()["outputs"] == [6, 24, 120]
        bad = await http.post("/v1/models/factorials/predict", json={"input": -1})
        assert bad.status_code == 422
        assert "factorial" in bad.json()["error"]["message"]


async def test_map_admits_all_inputs_or_none() -> None:
    pool = CpuPool("thread", workers=2, max_queue=2)
    try:
        assert await pool.map(abs, [-1, -2]) == [1, 2]
        with pytest.raises(PayloadTooLarge, match="takes at most 2"):  # can never fit, even in an idle pool
            await pool.map(abs, [-1, -2, -3])
        slow = asyncio.create_task(pool.run(time.sleep, 0.3))
        await asyncio.sleep(0)  # one place taken: two inputs must wait for it, not half-start
        with pytest.raises(Overloaded, match="limit 2"):
            await pool.map(abs, [-1, -2])
        assert pool.pending == 1
        await slow
        assert await pool.map(abs, [-1, -2]) == [1, 2]
        assert pool.pending == 0
    finally:
        pool.close()


async def test_a_request_that_can_never_fit_the_pool_is_413_not_503() -> None:
    async with running_server([Bounded()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post("/v1/models/bounded/predict", json={"inputs": [-1, -2, -3]})
        assert response.status_code == 413, response.text
        assert "retry-after" not in response.headers
        error = response.json()["error"]
        assert error["code"] == "payload_too_large"
        assert "send at most 2 inputs per request" in error["message"]
        fits = await http.post("/v1/models/bounded/predict", json={"inputs": [-1, -2]})
        assert fits.json()["outputs"] == [1, 2]


@pytest.mark.slow
async def test_a_dead_worker_fails_its_request_with_503_and_the_pool_is_replaced() -> None:
    pipeline = Sequential("mortal", [CpuStep(die_on, kind="process", workers=1)])
    async with (
        running_server([pipeline]) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as http,
    ):
        dead = await http.post("/v1/models/mortal/predict", json={"input": "die"})
        assert dead.status_code == 503, dead.text
        assert dead.json()["error"]["code"] == "worker_crashed"
        assert "retry the request" in dead.json()["error"]["message"]
        for _ in range(2):
            alive = await http.post("/v1/models/mortal/predict", json={"inputs": ["abc", "de"]})
            assert alive.status_code == 200, alive.text
            assert alive.json()["outputs"] == ["cba", "ed"]
        assert restarts(pipeline) == 1
        assert (await http.get("/ready")).status_code == 200
        assert 'batchery_worker_restarts_total{model="mortal"} 1.0' in (await http.get("/metrics")).text

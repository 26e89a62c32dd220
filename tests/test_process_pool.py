"""The CPU pool: threads and spawned processes, bounded, and a pipeline step that uses it over HTTP."""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

import httpx
import pytest

from batchery import Model
from batchery.errors import ConfigError, Overloaded
from batchery.pipeline import CpuStep, Sequential
from batchery.testing import running_server
from batchery.workers.cpu_pool import CpuPool


class Identity(Model):
    name = "identity"
    workers = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)


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

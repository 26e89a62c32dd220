"""Fair sharing across API keys: while one key floods the server, another key's latency barely moves."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson

from batchery._http_client import Connection
from batchery.model import Model
from batchery.testing import running_server

FLOOD, POLITE = "flood-key", "polite-key"


class Slow(Model):
    """Each batch takes 50-70 ms without holding the GIL, like a real runtime; at most 4 inputs a batch.

    The jitter matters: real batch times vary, so two workers drift apart and a newcomer waits for whichever
    frees first. With identical times they would run in lockstep, and every request would wait a whole batch.
    """

    name = "slow"
    max_batch_size = 4
    workers = 2
    example = 0

    def setup(self, device: str) -> None:
        self.jitter = random.Random(id(self))

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(0.05 + 0.02 * self.jitter.random())
        return batch


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def polite_latencies(url: str, count: int) -> tuple[list[float], list[int]]:
    conn = await Connection.open(url)
    latencies, statuses = [], []
    try:
        for i in range(count):
            started = time.perf_counter()
            response = await conn.request(
                "POST", "/v1/models/slow/predict", orjson.dumps({"input": i}), {"X-API-Key": POLITE}
            )
            latencies.append(time.perf_counter() - started)
            statuses.append(response.status)
    finally:
        await conn.close()
    return latencies, statuses


async def flood(url: str, stop: asyncio.Event, answered: list[int], established: asyncio.Event) -> None:
    conn = await Connection.open(url)
    try:
        while not stop.is_set():
            response = await conn.request("POST", "/v1/models/slow/predict", b'{"input": 1}', {"X-API-Key": FLOOD})
            answered.append(response.status)
            if len(answered) >= 48:
                established.set()
    finally:
        await conn.close()


async def test_one_key_flooding_does_not_starve_another() -> None:
    async with running_server([Slow()], api_keys=f"{FLOOD},{POLITE}") as server:
        unloaded, _ = await polite_latencies(server.url, 30)
        stop = asyncio.Event()
        answered: list[int] = []
        established = asyncio.Event()  # set once the flood's backlog is many batches deep
        flooders = [asyncio.create_task(flood(server.url, stop, answered, established)) for _ in range(48)]
        await established.wait()
        loaded, statuses = await polite_latencies(server.url, 30)
        stop.set()
        await asyncio.gather(*flooders)
    assert set(statuses) == {200}, statuses
    assert 200 in answered
    backlog_batches = 48 / (2 * 4)
    assert p99(loaded) < 2 * p99(unloaded), (p99(unloaded), p99(loaded), backlog_batches)


class OneAtATime(Model):
    """A pipeline stage: one lane, one input a batch, 40 ms each."""

    name = "one-at-a-time"
    max_batch_size = 1
    workers = 1
    example = 0

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(0.04)
        return batch


async def test_one_key_flooding_a_pipeline_does_not_starve_another() -> None:
    from batchery.pipeline import Sequential

    chain = Sequential("chain", [OneAtATime()])
    async with running_server([chain], api_keys=f"{FLOOD},{POLITE}") as server:
        # 24 requests always queued: a backlog of about 1 s.
        flooding = [Connection.open(server.url) for _ in range(24)]
        connections = await asyncio.gather(*flooding)
        stop = asyncio.Event()

        async def flood(conn: Connection) -> None:
            while not stop.is_set():
                await conn.request("POST", "/v1/models/chain/predict", b'{"input": 1}', {"X-API-Key": FLOOD})

        flooders = [asyncio.create_task(flood(conn)) for conn in connections]
        await asyncio.sleep(0.5)
        polite = await Connection.open(server.url)
        latencies = []
        for i in range(5):
            started = time.perf_counter()
            response = await polite.request(
                "POST", "/v1/models/chain/predict", orjson.dumps({"input": i}), {"X-API-Key": POLITE}
            )
            latencies.append(time.perf_counter() - started)
            assert response.status == 200
        stop.set()
        await asyncio.gather(*flooders)
        for conn in [*connections, polite]:
            await conn.close()
    # Queued as one client, the polite key waited behind the whole flood (~1 s a request); as its own client,
    # it waits for the batch computing and at most one of the flood's.
    assert max(latencies) < 0.5, latencies

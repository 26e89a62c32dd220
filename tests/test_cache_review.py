"""What the eighth session's review of the response cache found: each test fails without its fix."""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
from typing import Any

import httpx
import orjson
import pytest

from batchery.cache.keys import cache_key
from batchery.cache.memory import MemoryCache
from batchery.model import Model
from batchery.testing import EchoModel, FailingModel, running_server

TENSOR = b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":["q"]}]}'
TENSOR_REORDERED = b'{"inputs": [{"datatype": "BYTES", "name": "x", "shape": [1], "data": ["q"]}]}'


async def infer(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    response = await http.post("/v2/models/echo/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    return response


async def test_kserve_requests_share_an_entry_whatever_their_key_order_and_id() -> None:
    # Keyed by the raw body, another key order missed, and so did every request of a client sending ids.
    async with running_server([EchoModel()], cache="memory") as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await infer(http, TENSOR)).headers["x-cache"] == "miss"
        assert (await infer(http, TENSOR_REORDERED)).headers["x-cache"] == "hit"
        first = await infer(http, b'{"id":"req-1",' + TENSOR[1:])
        second = await infer(http, b'{"id":"req-2",' + TENSOR[1:])
        assert first.json()["id"] == "req-1"
        assert second.json()["id"] == "req-2"  # each answer carries its own request's id
        assert second.headers["x-cache"] == "hit"
        assert "id" not in (await infer(http, TENSOR)).json()


async def test_a_cached_kserve_binary_answer_carries_its_id_in_a_header_of_the_right_length() -> None:
    body = b'{"id":"bin-%d","parameters":{"binary_data_output":true},' + TENSOR[1:]
    async with running_server([EchoModel()], cache="memory") as server, httpx.AsyncClient(base_url=server.url) as http:
        for index, expected_cache in enumerate(("miss", "hit")):
            response = await infer(http, body % index)
            assert response.headers["x-cache"] == expected_cache
            split = int(response.headers["inference-header-content-length"])
            header = orjson.loads(response.content[:split])
            assert header["id"] == f"bin-{index}"
            assert header["outputs"][0]["parameters"]["binary_data_size"] == len(response.content) - split


class Slow(Model):
    """One input at a time, 0.3 s each, four queued inputs at most: a queue that fills at once."""

    name = "slow"
    example = "warm-up"
    workers = 1
    max_batch_size = 1
    max_queue_per_worker = 4

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(0.3)
        return list(batch)


@pytest.mark.parametrize("cache", ["", "memory"])
async def test_a_light_client_sharing_an_input_is_not_refused_for_the_heavy_clients_backlog(cache: str) -> None:
    # The heavy client's newest input is shed when the queue is full; a light client waiting on that same
    # input was handed the heavy client's 503 (with the cache off, it is computed and answered).
    async with (
        running_server([Slow()], api_keys="heavy,light,third", cache=cache) as server,
        httpx.AsyncClient(base_url=server.url, timeout=20) as http,
    ):

        def post(key: str, value: str) -> asyncio.Task[httpx.Response]:
            request = http.post("/v1/models/slow/predict", json={"input": value}, headers={"X-API-Key": key})
            return asyncio.create_task(request)

        backlog = [post("heavy", "h0")]
        await asyncio.sleep(0.05)
        backlog += [post("heavy", f"h{index}") for index in (1, 2, 3)]  # the heavy client fills the queue
        await asyncio.sleep(0.05)
        leader = post("heavy", "shared")  # the heavy client's newest input
        await asyncio.sleep(0.05)
        follower = post("light", "shared")  # the same input from a light client: it waits on the leader
        await asyncio.sleep(0.05)
        third = post("third", "t")  # the queue is full: the heavy client's newest input is shed
        answers = await asyncio.gather(leader, follower, third, *backlog)
    assert answers[0].status_code == 503
    assert answers[1].status_code == 200, answers[1].text
    assert answers[1].json()["output"] == "shared"


async def test_a_look_up_whose_computation_failed_is_counted() -> None:
    async with (
        running_server([FailingModel()], cache="memory") as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        for _ in range(3):
            assert (await http.post("/v1/models/failing/predict", json={"input": "fail"})).status_code == 500
        metrics = (await http.get("/metrics")).text
    counted = [line for line in metrics.splitlines() if line.startswith("batchery_cache_events_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 3, counted


def test_the_memory_cache_holds_no_more_than_its_bound_of_small_responses() -> None:
    tracemalloc.start()
    try:
        cache = MemoryCache(max_bytes=8 * 1024 * 1024, ttl=300)
        before = tracemalloc.get_traced_memory()[0]
        for index in range(100_000):
            key = cache_key("native", "echo", "1@abc", str(index).encode())
            cache.put(key, b'1\x00{"model":"echo","version":"1","output":"%d"}' % index)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= 1.1 * cache.max_bytes, f"{held / cache.max_bytes:.2f}x the bound"  # it was 1.7x


GATE = threading.Event()
ADMIN = "admin-key"


class Gated(Model):
    """One worker; the input "block" holds it until GATE is set."""

    name = "gated"
    workers = 1
    max_batch_size = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        if batch == ["block"]:
            GATE.wait(10)
        return [[1.0, 0.0] for _ in batch]


class GatedV2(Gated):
    version = "2"

    def predict(self, batch: list[Any]) -> list[Any]:
        return [[0.0, 1.0] for _ in batch]


async def test_an_embeddings_request_sharing_a_computation_names_the_version_that_made_it() -> None:
    # "x" is keyed under version 1, queued behind a blocked batch, and computed by version 2 once a reload swaps
    # the lanes; the identical request that shared its computation said version 1 (the version asked for).
    GATE.clear()
    async with (
        running_server([Gated()], admin_api_key=ADMIN, cache="memory") as server,
        httpx.AsyncClient(base_url=server.url, timeout=20) as http,
    ):

        def embed(text: str) -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(http.post("/v1/embeddings", json={"model": "gated", "input": text}))

        blocker = embed("block")
        await asyncio.sleep(0.2)  # the one worker is held
        leader = embed("x")
        await asyncio.sleep(0.05)
        follower = embed("x")
        await asyncio.sleep(0.05)
        target = {"target": f"{__file__}:GatedV2"}
        reloaded = await http.post("/admin/models/gated/reload", json=target, headers={"X-API-Key": ADMIN})
        assert reloaded.status_code == 200, reloaded.text
        GATE.set()
        answers = await asyncio.gather(leader, follower, blocker)
    for answer in answers[:2]:
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"][0]["embedding"] == [0.0, 1.0]  # computed by version 2
        assert answer.headers["x-model-version"] == "2"

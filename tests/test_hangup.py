"""A client that hangs up before its answer: its queued inputs are not computed, and it is recorded as 499.

Real server, raw sockets: the client sends a whole request and closes its socket while the request waits behind
another one in a one-lane model's queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from batchery.model import Model
from batchery.testing import running_server
from test_metrics import value

NATIVE_ROUTE = "/v1/models/{name}/predict"
#: Every input a `Recorder` computed (its lane computes on its own copy of the model).
COMPUTED: list[Any] = []


class Recorder(Model):
    """One lane, one input a batch, 0.4 s each; records every input it computed in `COMPUTED`."""

    name = "recorder"
    workers = 1
    max_batch_size = 1
    example = "warm-up"

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(0.4)
        COMPUTED.extend(batch)
        return list(batch)


def _request(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (polling the server's own state, at most 10 s) until `condition` holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


async def _connect_and_send(url: str, request: bytes) -> asyncio.StreamWriter:
    host, port = url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    return writer


async def _hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/recorder/predict", orjson.dumps({"input": "gone"})),
        (
            "/v2/models/recorder/infer",
            orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["gone"]}]}),
        ),
    ],
    ids=["native", "kserve-v2"],
)
async def test_a_request_whose_client_hung_up_while_queued_is_not_computed_and_counts_as_499(
    path: str, body: bytes
) -> None:
    async with (
        running_server([Recorder()]) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        batcher = server.engine.handle("recorder").batcher
        COMPUTED.clear()  # warm-up
        dispatched = batcher.stats.batches
        first = asyncio.create_task(http.post("/v1/models/recorder/predict", json={"input": "kept"}))
        await until(lambda: batcher.stats.batches > dispatched, '"kept" is computing')
        gone = await _connect_and_send(server.url, _request(path, body))
        await until(lambda: batcher.queued == 1, '"gone" waits behind it')
        await _hang_up(gone)
        assert (await first).status_code == 200
        await until(lambda: batcher.in_flight == 0, "nothing is queued or computing")
        text = (await http.get("/metrics")).text
        after = await http.post("/v1/models/recorder/predict", json={"input": "after"})
    assert after.status_code == 200  # the lane and the queue are fine
    assert COMPUTED == ["kept", "after"]
    route = NATIVE_ROUTE if path.startswith("/v1") else "/v2/models/{name}/infer"
    assert value(text, "batchery_requests_total", model="recorder", route=route, status="499") == 1


async def test_a_hang_up_while_computing_counts_as_499_and_spares_the_batch_mates() -> None:
    model = Recorder()
    model.max_batch_size = 8
    async with (
        running_server([model]) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        batcher = server.engine.handle("recorder").batcher
        dispatched = batcher.stats.batches
        blocker = asyncio.create_task(http.post("/v1/models/recorder/predict", json={"input": "first"}))
        await until(lambda: batcher.stats.batches > dispatched, '"first" is computing')
        mate = asyncio.create_task(http.post("/v1/models/recorder/predict", json={"input": "mate"}))
        gone = await _connect_and_send(server.url, _request("/v1/models/recorder/predict", b'{"input": "gone"}'))
        await until(lambda: batcher.queued == 2, '"mate" and "gone" wait behind it')
        assert (await blocker).status_code == 200
        await until(lambda: batcher.queued == 0, '"mate" and "gone" share the next batch')
        await _hang_up(gone)  # while that batch computes
        answered = await mate
        await until(lambda: batcher.in_flight == 0, "nothing is queued or computing")
        text = (await http.get("/metrics")).text
    assert answered.status_code == 200
    assert answered.json()["output"] == "mate"
    assert value(text, "batchery_requests_total", model="recorder", route=NATIVE_ROUTE, status="499") == 1

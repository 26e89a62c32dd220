"""A client that hangs up before its answer: its queued inputs are not computed, and it is recorded as 499.

Real server, raw sockets: the client sends a whole request and closes its socket while the request waits behind
another one in a one-lane model's queue.
"""

from __future__ import annotations

import asyncio
import time
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


async def _send_and_hang_up(url: str, request: bytes, after: float) -> None:
    host, port = url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    await asyncio.sleep(after)
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
    model = Recorder()
    async with (
        running_server([model]) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        COMPUTED.clear()  # warm-up
        first = asyncio.create_task(http.post("/v1/models/recorder/predict", json={"input": "kept"}))
        await asyncio.sleep(0.1)  # "kept" is computing; "gone" will wait behind it
        await _send_and_hang_up(server.url, _request(path, body), after=0.1)
        assert (await first).status_code == 200
        await asyncio.sleep(0.6)  # long enough for "gone" to have been computed, had it stayed queued
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
        blocker = asyncio.create_task(http.post("/v1/models/recorder/predict", json={"input": "first"}))
        await asyncio.sleep(0.1)
        mate = asyncio.create_task(http.post("/v1/models/recorder/predict", json={"input": "mate"}))
        gone = asyncio.create_task(
            _send_and_hang_up(server.url, _request("/v1/models/recorder/predict", b'{"input": "gone"}'), after=0.6)
        )
        # "mate" and "gone" share the second batch, and "gone" hangs up while it computes.
        assert (await blocker).status_code == 200
        answered = await mate
        await gone
        await asyncio.sleep(0.3)
        text = (await http.get("/metrics")).text
    assert answered.status_code == 200
    assert answered.json()["output"] == "mate"
    assert value(text, "batchery_requests_total", model="recorder", route=NATIVE_ROUTE, status="499") == 1

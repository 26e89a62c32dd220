"""Limits over real HTTP: body size, items per request, deadlines (config and header), the bounded queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from batchery.testing import EchoModel, SleepModel, running_server

PREDICT = "/v1/models/echo/predict"


class SlowModel(SleepModel):
    """One worker, a tiny queue and slow batches: easy to fill and to make deadlines pass."""

    name = "slow"
    workers = 1
    max_batch_size = 1
    max_queue_per_worker = 2

    def __init__(self) -> None:
        super().__init__(seconds=1.0)


async def raw_request(url: str, head: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    await writer.drain()
    response = await reader.read(65536)
    writer.close()
    return response


async def wait_until_busy(server: Any, name: str) -> None:
    batcher = server.engine.handle(name).batcher
    deadline = asyncio.get_running_loop().time() + 30
    while batcher.in_flight == 0:  # poll for the state that matters, not a fixed sleep
        assert asyncio.get_running_loop().time() < deadline, "the first request never reached the model"
        await asyncio.sleep(0.005)


@pytest.fixture
async def server() -> AsyncIterator[Any]:
    async with running_server([EchoModel()], max_body_bytes=1000, max_items=4) as running:
        yield running


async def test_bodies_over_the_limit_get_413_declared_or_streamed(server: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.post(PREDICT, content=b'{"input": "' + b"x" * 2000 + b'"}')).status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"input": "'
            for _ in range(20):
                yield b"x" * 100
            yield b'"}'

        streamed = await http.post(PREDICT, content=chunks())  # chunked: no Content-Length to check first
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "payload_too_large"
        assert (await http.post(PREDICT, json={"input": "fine"})).status_code == 200
        metrics = (await http.get("/metrics")).text
        assert 'batchery_rejected_total{model="",reason="too_large"} 1.0' in metrics  # refused before routing
        assert 'batchery_rejected_total{model="echo",reason="too_large"} 1.0' in metrics  # refused while streaming


@pytest.mark.parametrize("length", [b"abc", b"-5", b"99999999999999999999999"])
async def test_absurd_content_length_is_a_4xx(server: Any, length: bytes) -> None:
    head = b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n"
    response = await raw_request(server.url, head)
    assert response.startswith((b"HTTP/1.1 400", b"HTTP/1.1 413")), response[:100]


async def test_too_many_items_is_413(server: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post(PREDICT, json={"inputs": [1, 2, 3, 4, 5]})
        assert response.status_code == 413
        assert "limit is 4" in response.json()["error"]["message"]


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf", "1e999", "1" * 40, ""])
async def test_bad_timeout_header_is_400(server: Any, value: str) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post(PREDICT, json={"input": 1}, headers={"X-Request-Timeout-Ms": value})
        assert response.status_code == 400
        assert "X-Request-Timeout-Ms" in response.json()["error"]["message"]


async def test_a_request_whose_deadline_passes_in_the_queue_gets_504() -> None:
    async with running_server([SlowModel()]) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        blocker = asyncio.create_task(http.post("/v1/models/slow/predict", json={"input": "first"}))
        await wait_until_busy(server, "slow")
        late = await http.post("/v1/models/slow/predict", json={"input": 2}, headers={"X-Request-Timeout-Ms": "50"})
        assert late.status_code == 504
        assert late.json()["error"]["code"] == "deadline_exceeded"
        assert (await blocker).status_code == 200
        assert 'batchery_rejected_total{model="slow",reason="deadline"} 1.0' in (await http.get("/metrics")).text


async def test_the_configured_deadline_applies_and_the_header_cannot_extend_it() -> None:
    async with (
        running_server([SlowModel()], request_timeout_ms=50) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        first = await http.post("/v1/models/slow/predict", json={"input": 1})
        assert first.status_code == 504  # one batch takes 1 s, the deadline is 50 ms
        longer = await http.post(
            "/v1/models/slow/predict", json={"input": 1}, headers={"X-Request-Timeout-Ms": "60000"}
        )
        assert longer.status_code == 504


async def test_a_full_queue_answers_503_with_retry_after_at_once_and_is_counted() -> None:
    async with running_server([SlowModel()]) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        requests = [asyncio.create_task(http.post("/v1/models/slow/predict", json={"input": i})) for i in range(8)]
        responses = await asyncio.gather(*requests)
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(503) >= 1
        assert set(statuses) <= {200, 503}
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        metrics = (await http.get("/metrics")).text
        assert f'batchery_rejected_total{{model="slow",reason="queue_full"}} {statuses.count(503)}.0' in metrics

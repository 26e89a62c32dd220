"""Hostile HTTP over real sockets: each attack gets a bounded, clear answer, and other clients keep being served.

Huge heads (431), bodies longer or shorter than their Content-Length (400, 408), slowloris (408), thousands of
idle connections (closed after the head timeout), invalid UTF-8, deep nesting, NaN and infinities (400) and a
batch of 100,000 items (413). The limits are Settings (docs/reliability.md); the tests shorten the timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson
import psutil
import pytest

from batchery._http_client import Connection
from batchery.testing import EchoModel, running_server

PREDICT = b"/v1/models/echo/predict"
#: Upper bound on any one exchange: every attack must be answered (or cut) long before this.
PATIENCE = 30.0


@pytest.fixture
async def server() -> AsyncIterator[Any]:
    async with running_server(
        [EchoModel()], header_timeout_seconds=0.5, body_timeout_seconds=0.5, max_header_bytes=16 * 1024
    ) as running:
        yield running


def _address(server: Any) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


async def exchange(server: Any, *parts: bytes, pause: float = 0.0) -> tuple[int | None, bytes]:
    """Send `parts` (sleeping `pause` between them, stopping if the server hangs up); read to EOF.

    Returns (status, body) of the first response, or (None, b"") when the server closed without answering.
    """
    reader, writer = await asyncio.open_connection(*_address(server))
    chunks: list[bytes] = []
    reading = asyncio.create_task(_read_all(reader, chunks))
    try:
        for part in parts:
            if chunks or reading.done():  # answered or hung up: writing on would only reset the connection
                break
            with contextlib.suppress(ConnectionError):
                writer.write(part)
                await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        raw = await asyncio.wait_for(reading, PATIENCE)
    finally:
        writer.close()
    if not raw:
        return None, b""
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        len(rest),
    )
    return status, rest[:length]


async def _read_all(reader: asyncio.StreamReader, chunks: list[bytes] | None = None) -> bytes:
    chunks = [] if chunks is None else chunks
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def post(body: bytes, *, length: int | None = None, extra: bytes = b"") -> bytes:
    declared = len(body) if length is None else length
    head = (
        b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        % (
            PREDICT,
            declared,
        )
    )
    return head + extra + b"\r\n" + body


def error_code(body: bytes) -> str:
    return str(orjson.loads(body)["error"]["code"])


async def still_serving(server: Any) -> None:
    conn = await Connection.open(server.url)
    try:
        response = await asyncio.wait_for(conn.request("POST", PREDICT.decode(), b'{"input": "ok"}'), PATIENCE)
    finally:
        await conn.close()
    assert response.status == 200, response.body


@pytest.mark.parametrize(
    "request_bytes",
    [
        post(b'{"input": 1}', extra=b"X-Big: " + b"a" * 200_000 + b"\r\n"),
        post(b'{"input": 1}', extra=b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))),
        b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["one-huge-header", "twenty-thousand-headers", "megabyte-url"],
)
async def test_huge_request_heads_get_431(server: Any, request_bytes: bytes) -> None:
    status, body = await exchange(server, request_bytes)
    assert status == 431
    assert error_code(body) == "headers_too_large"
    await still_serving(server)


async def test_a_body_longer_than_its_content_length_is_refused_and_the_connection_closed(server: Any) -> None:
    # The extra bytes are read as the start of a next request, which is not HTTP: 400, then the server hangs up.
    status, body = await exchange(server, post(b'{"input": 1}', length=5))
    assert status == 400
    assert error_code(body) == "bad_request"
    await still_serving(server)


async def test_a_body_shorter_than_its_content_length_gets_408(server: Any) -> None:
    status, body = await exchange(server, post(b'{"input": 1}', length=100))
    assert status == 408
    assert error_code(body) == "request_timeout"
    await still_serving(server)


async def test_a_pipelined_request_after_a_large_body_is_not_taken_for_a_large_head(server: Any) -> None:
    # The second request's head begins in the read that ends the first's 20 KB body: that read is not a head.
    keep = post(b'{"input": "%s"}' % (b"x" * 20_000)).replace(b"Connection: close", b"Connection: keep-alive")
    second = post(b'{"input": "second"}')
    reader, writer = await asyncio.open_connection(*_address(server))
    try:
        writer.write(keep + second[:10])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(second[10:])
        await writer.drain()
        raw = await asyncio.wait_for(_read_all(reader), PATIENCE)
    finally:
        writer.close()
    assert raw.count(b"HTTP/1.1 200") == 2, raw[:300]
    assert b"second" in raw


def _to(path: bytes, request: bytes) -> bytes:
    return request.replace(PREDICT, path, 1)


@pytest.mark.parametrize(
    ("path", "read_message"),
    [
        (PREDICT, lambda body: orjson.loads(body)["error"]["message"]),
        (b"/v2/models/echo/infer", lambda body: orjson.loads(body)["error"]),
        (b"/v1/embeddings", lambda body: orjson.loads(body)["error"]["message"]),
        (b"/v1/embeddings?x=1", lambda body: orjson.loads(body)["error"]["message"]),
    ],
    ids=["native", "kserve-v2", "openai", "openai-with-query"],
)
async def test_protocol_layer_refusals_are_in_the_shape_of_the_paths_protocol(
    server: Any, path: bytes, read_message: Any
) -> None:
    # A client of KServe V2 or OpenAI reads errors in its own protocol's shape, also for the refusals of the
    # HTTP layer below the app (head too large, body too slow).
    status, body = await exchange(server, _to(path, post(b"{}", extra=b"X-Big: " + b"a" * 20_000 + b"\r\n")))
    assert status == 431
    assert "over the limit" in read_message(body)
    status, body = await exchange(server, _to(path, post(b"{}", length=100)))
    assert status == 408
    assert "did not arrive" in read_message(body)
    if path.startswith(b"/v1/embeddings"):
        assert orjson.loads(body)["error"]["code"] == "request_timeout"
    await still_serving(server)


async def test_slowloris_trickling_a_head_gets_408_while_others_are_served(server: Any) -> None:
    head = post(b'{"input": 1}')
    trickle = asyncio.create_task(exchange(server, *(head[i : i + 1] for i in range(len(head))), pause=0.05))
    await still_serving(server)
    status, body = await trickle
    assert status == 408
    assert b"headers" in body


async def test_thousands_of_idle_connections_are_closed_and_cost_little(server: Any) -> None:
    process = psutil.Process(os.getpid())
    before = process.memory_info().rss
    address = _address(server)
    idle = await asyncio.gather(*(asyncio.open_connection(*address) for _ in range(2000)))
    try:
        for _ in range(20):
            await still_serving(server)  # served beside 2,000 connections that say nothing
        grown = process.memory_info().rss - before
        assert grown < 64 * 1024 * 1024, f"2,000 idle connections cost {grown / 2**20:.0f} MiB"
        # The server hangs up on each (408 or a plain close) once the head timeout has passed.
        answers = await asyncio.wait_for(asyncio.gather(*(_read_all(reader) for reader, _ in idle)), PATIENCE)
        assert all(answer == b"" or answer.startswith(b"HTTP/1.1 408") for answer in answers)
    finally:
        for _, writer in idle:
            writer.close()


@pytest.mark.parametrize(
    "body",
    [
        b'{"input": "\xff\xfe broken utf-8"}',
        b'{"input": NaN}',
        b'{"input": Infinity}',
        b'{"input": -Infinity}',
        b'{"input": 1e999}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"",
        b"\x00\x01\x02",
    ],
    ids=["invalid-utf8", "nan", "infinity", "minus-infinity", "overflow", "deep-array", "deep-inputs", "empty", "nul"],
)
async def test_unreadable_json_gets_400_with_a_reason(server: Any, body: bytes) -> None:
    status, answer = await exchange(server, post(body))
    assert status == 400
    error = orjson.loads(answer)["error"]
    assert error["code"] == "bad_request"
    assert "JSON" in error["message"]


async def test_a_batch_of_100000_items_gets_413_without_a_memory_spike(server: Any) -> None:
    process = psutil.Process(os.getpid())
    before = process.memory_info().rss
    body = orjson.dumps({"inputs": [f"item {i}" for i in range(100_000)]})
    status, answer = await exchange(server, post(body))
    assert status == 413
    assert "limit is 256" in orjson.loads(answer)["error"]["message"]
    grown = process.memory_info().rss - before
    assert grown < 256 * 1024 * 1024, f"one 100,000-item request cost {grown / 2**20:.0f} MiB"
    await still_serving(server)


async def test_connections_over_max_connections_get_503_at_once() -> None:
    async with running_server([EchoModel()], max_connections=50) as server:
        address = _address(server)
        held = await asyncio.gather(*(asyncio.open_connection(*address) for _ in range(60)))
        try:
            status, _ = await exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status == 503
        finally:
            for _, writer in held:
                writer.close()

"""Graceful shutdown of a real `batchery serve` process: SIGTERM under load loses no accepted request, exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import orjson
import pytest

from batchery._http_client import Connection
from serve_process import serve_process

HERE = Path(__file__).resolve().parent
WORKERS = 16


async def start_server(
    record: Path, *, drain_seconds: float = 30, batch_seconds: float = 0.05
) -> tuple[asyncio.subprocess.Process, str, asyncio.Task[list[str]]]:
    env = {
        **os.environ,
        "BATCHERY_TEST_RECORD": str(record),
        "BATCHERY_DRAIN_SECONDS": str(drain_seconds),
        "BATCHERY_TEST_BATCH_SECONDS": str(batch_seconds),
    }
    return await serve_process(f"{HERE / 'shutdown_model.py'}:Recorder", "--log-level", "info", env=env)


@pytest.mark.slow
async def test_sigterm_under_load_finishes_every_accepted_request_and_exits_0(tmp_path: Path) -> None:
    record = tmp_path / "computed"
    process, url, stderr = await start_server(record)
    try:
        await load_then_sigterm(process, url, stderr, record)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        stderr.cancel()


async def load_then_sigterm(
    process: asyncio.subprocess.Process, url: str, stderr: asyncio.Task[list[str]], record: Path
) -> None:
    answered: dict[str, float] = {}  # input -> when its 200 arrived
    other: list[int] = []
    loaded = asyncio.Event()  # set once every client has had answers and has a request in flight

    async def client(worker: int) -> None:
        connection = await Connection.open(url)
        try:
            for n in range(100_000):
                value = f"w{worker}-{n}"
                response = await connection.request(
                    "POST", "/v1/models/recorder/predict", orjson.dumps({"input": value})
                )
                if response.status != 200:
                    other.append(response.status)
                    return
                assert orjson.loads(response.body)["output"] == value
                answered[value] = time.monotonic()
                if len(answered) >= 3 * WORKERS:
                    loaded.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            return  # the server closed this connection while it was idle: that request was never accepted
        finally:
            with contextlib.suppress(OSError):
                await connection.close()

    clients = [asyncio.create_task(client(worker)) for worker in range(WORKERS)]
    await asyncio.wait_for(loaded.wait(), 60)
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        probe = await Connection.open(url)
        ready = (await probe.request("GET", "/ready")).status
        with contextlib.suppress(OSError):
            await probe.close()
    except (ConnectionError, asyncio.IncompleteReadError):
        ready = None  # already closed for new connections
    assert ready != 200

    await asyncio.wait_for(asyncio.gather(*clients), 60)
    code = await asyncio.wait_for(process.wait(), 60)
    log = "".join(await stderr)
    assert code == 0, log
    computed = (await asyncio.to_thread(record.read_text)).split()
    assert len(computed) == len(set(computed))
    # Every input the model computed reached its client with a 200: nothing accepted was lost.
    assert set(computed) == set(answered)
    assert any(at > signalled for at in answered.values()), "no request in flight at SIGTERM finished after it"
    assert set(other) <= {503}


async def test_requests_the_drain_time_cannot_finish_get_a_retryable_503_not_a_500(tmp_path: Path) -> None:
    # 16 inputs of 0.5 s batches of 4 are 2 s of work; the drain allows 1 s. Before the fix uvicorn cancelled
    # the handlers still waiting at the deadline, and each answered a text/plain 500 with a traceback logged.
    process, url, stderr = await start_server(tmp_path / "computed", drain_seconds=1, batch_seconds=0.5)
    connections: list[Connection] = []
    try:
        connections = [await Connection.open(url) for _ in range(16)]
        requests = [
            asyncio.create_task(c.request("POST", "/v1/models/recorder/predict", orjson.dumps({"input": f"r{i}"})))
            for i, c in enumerate(connections)
        ]
        async with httpx.AsyncClient(base_url=url) as http:  # all 16 accepted: 4 computing, 12 queued
            give_up = time.monotonic() + 30
            while (await http.get("/v1/models")).json()["models"][0]["queued"] < 12:
                assert time.monotonic() < give_up, "the requests were never queued"
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        responses = await asyncio.wait_for(asyncio.gather(*requests), 30)
        code = await asyncio.wait_for(process.wait(), 30)
    finally:
        for connection in connections:
            with contextlib.suppress(OSError):
                await connection.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = "".join(await stderr)
    statuses = sorted(response.status for response in responses)
    assert code == 0, log
    assert set(statuses) == {200, 503}, (statuses, log)
    for response in responses:
        if response.status == 503:
            assert response.headers.get("retry-after") == "1"
            assert "drain time (1s) ran out" in orjson.loads(response.body)["error"]["message"]
    assert "Traceback" not in log
    assert "answered with 503" in log

"""Graceful shutdown of a real `batchery serve` process: SIGTERM under load loses no accepted request, exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

import orjson
import pytest

from batchery._http_client import Connection

HERE = Path(__file__).resolve().parent
WORKERS = 16


async def start_server(record: Path) -> tuple[asyncio.subprocess.Process, str, asyncio.Task[list[str]]]:
    env = {**os.environ, "BATCHERY_TEST_RECORD": str(record), "BATCHERY_DRAIN_SECONDS": "30"}
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "batchery"), "serve", f"{HERE / 'shutdown_model.py'}:Recorder",
        "--port", "0", "--log-level", "info",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 120)).decode()
        if not line:
            raise AssertionError("the server exited before it was ready:\n" + "".join(lines))
        lines.append(line)
        ready = re.search(r"is ready on (http://\S+)", line)
        if ready:
            break

    async def drain_stderr() -> list[str]:  # keep reading so the pipe never fills and blocks the server
        assert process.stderr is not None
        while line := await process.stderr.readline():
            lines.append(line.decode())
        return lines

    return process, ready.group(1), asyncio.create_task(drain_stderr())


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

"""Clients hanging up at random moments, under chaos, against a real `batchery serve` process.

Served: a fast echo, a slow model with two workers and the memory response cache, a process worker that crashes
now and then, and a two-stage pipeline. Closed-loop clients keep their connection and answers (a third of them
with `X-Request-Timeout-Ms`); about a third of the clients hang up on every request, at a random moment: before
the body, mid-body, while it is queued or computing, or just as the answer arrives. Hot reloads land every second.

Checked: every client that stayed gets one well-formed answer (200, 503 `worker_crashed` or 504, JSON; never a
500, a hang or a dropped connection); 499s are the hang-ups before an answer began; once the load stops, nothing
is in flight or queued; the server's threads, child processes, file descriptors and memory are where they were
after warm-up; SIGTERM drains it with exit code 0, and its log holds no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from batchery._http_client import Connection
from batchery.model import Model
from batchery.pipeline import Sequential
from batchery.workers.process import ProcessModel
from serve_process import serve_process

HERE = Path(__file__).resolve()
ADMIN_KEY = "chaos-admin-key"
#: The error answers a client that stayed may get here, by status: nothing else, and never a 500.
EXPECTED = {503: {"worker_crashed"}, 504: {"deadline_exceeded"}}
MODES = ("head", "mid-body", "waiting", "first-byte")
PATIENCE = 30.0


class Echo(Model):
    name = "echo"
    max_batch_size = 32
    example = "warm-up"

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)


class Slow(Model):
    """Two lanes, 60 ms a batch of up to 4: requests queue, so hang-ups land while queued and while computing."""

    name = "slow"
    workers = 2
    max_batch_size = 4
    example = "warm-up"

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(0.06)
        return list(batch)


class Crashy(Model):
    """Exits as a segfault would on the input "crash" (in its worker process)."""

    name = "proc"
    workers = 1
    max_batch_size = 4
    example = "warm-up"

    def predict(self, batch: list[Any]) -> list[Any]:
        if "crash" in batch:
            os._exit(139)
        time.sleep(0.02)
        return list(batch)


class Upper(Model):
    name = "upper"
    workers = 1
    example = "warm-up"

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(0.01)
        return [str(value).upper() for value in batch]


class Tail(Model):
    name = "tail"
    workers = 1
    example = "WARM-UP"

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(0.03)
        return [value + "!" for value in batch]


proc = ProcessModel(Crashy(), max_restarts=1_000_000, window=1.0)  # crashes on purpose: never given up on
pipe = Sequential("pipe", [Upper(), Tail()])
#: "proc" too: a version retired under this load (crashes and restarts going on) left its worker process running
#: until the garbage collector freed the retired copy, before lanes closed their models after their last batch.
RELOADED = ("echo", "slow", "proc", "upper", "tail")


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[tuple[int, str]] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)  # a client that stayed and got no answer (or a malformed one)
    wrong: list[str] = field(default_factory=list)  # an answer outside EXPECTED
    gone: Counter[str] = field(default_factory=Counter)  # hang-ups before any byte of the answer, by mode
    late: Counter[str] = field(default_factory=Counter)  # hang-ups after the answer began, by mode
    reloads: Counter[int] = field(default_factory=Counter)


def _request(rng: random.Random) -> tuple[str, bytes]:
    """(path, body): a random model, one to three inputs (the slow model's repeat, for cache hits and shared
    computations; one in a hundred of the process model's crashes it), some over KServe V2."""
    model = rng.choice(("echo", "slow", "slow", "proc", "pipe"))
    values = [f"{model}-{rng.randrange(10_000 if model == 'echo' else 100)}" for _ in range(rng.choice((1, 1, 2, 3)))]
    if model == "proc" and rng.random() < 0.01:
        values[0] = "crash"
    if model in ("echo", "slow") and rng.random() < 0.2:
        tensor = {"name": "x", "shape": [len(values)], "datatype": "BYTES", "data": values}
        return f"/v2/models/{model}/infer", orjson.dumps({"inputs": [tensor]})
    body = {"input": values[0]} if len(values) == 1 else {"inputs": values}
    return f"/v1/models/{model}/predict", orjson.dumps(body)


def _check(tally: Tally, path: str, status: int, body: bytes) -> None:
    if status == 200:
        tally.statuses[(200, "")] += 1
        return
    try:
        error = orjson.loads(body)["error"]
        # KServe V2 errors are {"error": "<message>"}, batchery's {"error": {"code", "message"}}.
        code = {504: "deadline_exceeded"}.get(status, error) if isinstance(error, str) else error["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        tally.lost.append(f"{path}: {status} with a body that is not a JSON error: {body[:200]!r}")
        return
    tally.statuses[(status, code)] += 1
    if code not in EXPECTED.get(status, ()):
        tally.wrong.append(f"{path}: {status} {body[:200]!r}")


async def stayer(url: str, stop: asyncio.Event, tally: Tally, rng: random.Random) -> None:
    """A keep-alive client that always waits for its answer; a third of its requests carry a deadline."""
    conn = await Connection.open(url)
    try:
        while not stop.is_set():
            path, body = _request(rng)
            headers = {"X-Request-Timeout-Ms": str(rng.choice((5, 40, 150, 600)))} if rng.random() < 0.33 else {}
            tally.sent += 1
            try:
                answer = await asyncio.wait_for(conn.request("POST", path, body, headers), PATIENCE)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                tally.lost.append(f"{path}: {exc!r}")
                conn.abort()
                conn = await Connection.open(url)
                continue
            _check(tally, path, answer.status, answer.body)
            if not answer.keep_alive:
                await conn.close()
                conn = await Connection.open(url)
    finally:
        await conn.close()


async def hanger(url: str, stop: asyncio.Event, tally: Tally, rng: random.Random) -> None:
    """A client that hangs up on every request, on a fresh connection, at a random moment (see `MODES`)."""
    host, port = url.removeprefix("http://").split(":")
    while not stop.is_set():
        path, body = _request(rng)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        mode = rng.choices(MODES, weights=(1, 1, 5, 2))[0]
        reader, writer = await asyncio.open_connection(host, int(port))
        tally.sent += 1
        answered = False
        if mode in ("head", "mid-body"):
            writer.write(head if mode == "head" else head + body[: len(body) // 2])
            await writer.drain()
            await asyncio.sleep(rng.uniform(0, 0.02))  # a random moment, not an ordering: any moment must do
        else:
            writer.write(head + body)
            await writer.drain()
            try:  # "waiting": give up at a random moment (queued, computing, or answered already)
                first = await asyncio.wait_for(
                    reader.read(1), PATIENCE if mode == "first-byte" else rng.uniform(0, 0.3)
                )
                answered = bool(first)
                if not first:
                    tally.lost.append(f"{path}: the server closed the connection without an answer")
            except TimeoutError:
                if mode == "first-byte":
                    tally.lost.append(f"{path}: no answer within {PATIENCE:g} s")
        (tally.late if answered else tally.gone)[mode] += 1
        if rng.random() < 0.5:
            writer.transport.abort()  # RST
        else:
            writer.close()  # FIN
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def reloader(url: str, stop: asyncio.Event, tally: Tally, rng: random.Random) -> None:
    """Hot-reloads a random model about every second until `stop` (waits on the stop event, not a sleep)."""
    conn = await Connection.open(url)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 1.5))
            if stop.is_set():
                break
            name = rng.choice(RELOADED)
            headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
            answer = await asyncio.wait_for(conn.request("POST", f"/admin/models/{name}/reload", b"", headers), 60)
            tally.reloads[answer.status] += 1
            if answer.status != 200:
                tally.wrong.append(f"reload {name}: {answer.status} {answer.body[:200]!r}")
    finally:
        await conn.close()


async def run_load(url: str, seconds: float, seed: int, *, stayers: int = 10, hangers: int = 5) -> Tally:
    """The mixed load, with reloads, for `seconds`; returns once every client has finished its last request."""
    tally, stop = Tally(), asyncio.Event()
    clients = [stayer(url, stop, tally, random.Random(seed * 100 + n)) for n in range(stayers)]
    clients += [hanger(url, stop, tally, random.Random(seed * 100 + 50 + n)) for n in range(hangers)]
    clients.append(reloader(url, stop, tally, random.Random(seed)))
    running = asyncio.gather(*clients)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(running), seconds)  # ends early only if a client failed
    stop.set()
    await running
    return tally


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def until_idle(url: str) -> str:
    """Poll /metrics until nothing but the scrape itself is in flight and every queue is empty; its text."""
    conn = await Connection.open(url)
    try:
        give_up = time.monotonic() + PATIENCE
        while True:
            text = (await conn.request("GET", "/metrics")).body.decode()
            if metric(text, "batchery_in_flight_requests") == 1 and metric(text, "batchery_queue_depth") == 0:
                return text
            assert time.monotonic() < give_up, "still busy after the load stopped:\n" + "\n".join(
                line for line in text.splitlines() if "in_flight" in line or "queue_depth" in line
            )
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


@dataclass(frozen=True)
class Resources:
    threads: int
    children: int
    fds: int
    rss_mib: float

    @classmethod
    def of(cls, process: psutil.Process) -> Resources:
        children = len(process.children(recursive=True))
        return cls(process.num_threads(), children, process.num_fds(), process.memory_info().rss / 2**20)


async def settled(pid: int, *, children: int | None = None, like: Resources | None = None) -> Resources:
    """The server's resources once it has closed every client connection and (a hot reload retires the old
    version's lanes and worker processes after their last batch) has `children` child processes, or `like`'s
    threads and children and at most its file descriptors; the last reading if that takes longer than PATIENCE."""
    process = psutil.Process(pid)
    give_up = time.monotonic() + PATIENCE
    while True:
        now = Resources.of(process)
        connected = any(conn.status != psutil.CONN_LISTEN for conn in process.net_connections(kind="tcp"))
        if like is None:
            done = now.children == children
        else:  # a descriptor may close a moment late (a retired worker's pipe): none may be left over
            done = (now.threads, now.children) == (like.threads, like.children) and now.fds <= like.fds
        if (done and not connected) or time.monotonic() > give_up:
            return now
        await asyncio.sleep(0.05)


async def serve() -> tuple[asyncio.subprocess.Process, str, asyncio.Task[list[str]]]:
    """`batchery serve` of this file's models on a free port, once ready; the task collects its log."""
    targets = [f"{HERE}:{name}" for name in ("Echo", "Slow", "proc", "pipe")]
    return await serve_process(
        *targets, "--log-level", "info", "--cache", "slow=memory", "--cache-ttl-seconds", "1",
        "--admin-api-key", ADMIN_KEY,
    )  # fmt: skip


@pytest.mark.slow
async def test_hang_ups_under_chaos_cancel_cleanly_and_leave_nothing_behind() -> None:
    process, url, log = await serve()
    try:
        warm_up = await run_load(url, 3, seed=1)
        before = await until_idle(url)
        # At rest: the process model's one worker process and multiprocessing's resource tracker.
        rested = await settled(process.pid, children=2)
        tally = await run_load(url, 8, seed=2)
        after = await until_idle(url)
        loaded = await settled(process.pid, like=rested)
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), PATIENCE)
        lines = await log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    gone, late = sum(tally.gone.values()), sum(tally.late.values())
    answered_499 = metric(after, "batchery_requests_total", status="499") - metric(
        before, "batchery_requests_total", status="499"
    )
    print(
        f"hang-up chaos: sent={tally.sent} statuses={dict(tally.statuses)} hung up before an answer={dict(tally.gone)} "
        f"after it began={dict(tally.late)} 499s={answered_499:g} reloads={dict(tally.reloads)} "
        f"resources after warm-up {rested}, after the load {loaded}"
    )
    for run in (warm_up, tally):
        assert not run.lost, run.lost[:10]
        assert not run.wrong, run.wrong[:10]
    assert set(tally.gone) == set(MODES) - {"first-byte"}, tally.gone  # every moment was tried
    assert tally.late["first-byte"] > 0
    assert tally.reloads[200] >= 3
    assert tally.statuses[(200, "")] > 100
    # A 499 is a request whose answer had not begun when its client left: never more than the client saw, and
    # fewer only by answers begun but still on their way (or a head the server never read before the reset).
    assert answered_499 <= gone
    assert answered_499 >= gone - max(3, gone // 50), (answered_499, gone, late)
    assert metric(after, "batchery_requests_total", status="500") == 0
    assert metric(after, "batchery_worker_restarts_total") > 0  # the process worker did crash
    assert rested.children == 2, rested
    assert (loaded.threads, loaded.children) == (rested.threads, rested.children), (rested, loaded)
    assert loaded.fds <= rested.fds, (rested, loaded)
    assert loaded.rss_mib - rested.rss_mib < 8, (rested, loaded)
    assert code == 0
    problems = [line for line in lines if re.search(r"Traceback|Exception in ASGI|CancelledError|ERROR", line)]
    assert not problems, "".join(problems[:20])

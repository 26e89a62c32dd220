"""Replicas on one machine, for real: batchery processes behind nginx with one Redis (scripts/replicas.py).

Shared response cache, rate limits that hold across replicas, X-Forwarded-For believed only from trusted proxies,
the client allowlist, and replicas stopped under load: SIGTERM loses nothing, SIGKILL loses at most what that
replica had in flight (counted and printed) while traffic keeps flowing. Loopback source addresses stand for
machines: nginx connects from 127.0.0.2, 127.0.0.3 plays a trusted edge load balancer, 127.0.0.4/5 are clients.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "replicas.py"
_spec = importlib.util.spec_from_file_location("batchery_replicas_script", SCRIPT)
assert _spec is not None
assert _spec.loader is not None
replicas = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = replicas  # dataclasses look their module up by name
_spec.loader.exec_module(replicas)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
        reason="nginx is not installed (Debian: apt-get install nginx; scripts/test installs it)",
    ),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (scripts/test)"),
]

MODEL = "batchery.testing:SleepModel"  # 50 ms a batch: requests are in flight long enough to be cut
EDGE = "127.0.0.3"
RATE, BURST = 1, 4


def client(source: str, **kwargs: Any) -> httpx.AsyncClient:
    """An HTTP client whose connections come from the loopback address `source`."""
    transport = httpx.AsyncHTTPTransport(local_address=source, retries=0)
    return httpx.AsyncClient(transport=transport, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def guarded() -> Iterator[Any]:
    env = {
        "BATCHERY_RATE_LIMIT": str(RATE),
        "BATCHERY_RATE_LIMIT_BURST": str(BURST),
        "BATCHERY_TRUSTED_PROXIES": f"{replicas.PROXY_ADDRESS},{EDGE}",
        "BATCHERY_ALLOW_CLIENTS": "127.0.0.0/8,203.0.113.0/24",
    }
    with replicas.cluster(3, [MODEL], env) as running:
        yield running


async def test_a_response_computed_on_one_replica_is_a_hit_on_another(guarded: Any) -> None:
    first, second = guarded.replicas[0].url, guarded.replicas[1].url
    body = {"input": "computed once, served everywhere"}
    async with client("127.0.0.6") as http:
        computed = await http.post(f"{first}/v1/models/sleep/predict", json=body)
        assert computed.status_code == 200
        assert computed.headers["x-cache"] == "miss"
        cached = await http.post(f"{second}/v1/models/sleep/predict", json=body)
        assert cached.headers["x-cache"] == "hit", "the other replica found it in Redis"
        assert cached.json() == computed.json()
        through_proxy = await http.post(f"{guarded.url}/v1/models/sleep/predict", json=body)
        assert through_proxy.headers["x-cache"] == "hit"


async def test_rate_limit_holds_across_replicas(guarded: Any) -> None:
    """One client spreading requests over three replicas gets one budget, not three."""
    loop = asyncio.get_running_loop()
    statuses = []
    async with client("127.0.0.4") as http:
        started = loop.time()
        for i in range(12):
            replica = guarded.replicas[i % 3]
            statuses.append((await http.post(f"{replica.url}/v1/models/sleep/predict", json={"input": i})).status_code)
        elapsed = loop.time() - started
    allowed = statuses.count(200)
    assert set(statuses) <= {200, 429}
    assert allowed >= BURST
    assert allowed <= BURST + RATE * elapsed + 1, f"{allowed} of 12 passed: the replicas do not share the limit"


async def test_forwarded_for_is_believed_only_from_trusted_proxies(guarded: Any) -> None:
    path = f"{guarded.url}/v1/models/sleep/predict"
    # A client that is not a trusted proxy cannot get a fresh budget by inventing addresses.
    async with client("127.0.0.5") as http:
        spoofed = [
            (await http.post(path, json={"input": i}, headers={"X-Forwarded-For": f"203.0.113.{i}"})).status_code
            for i in range(10)
        ]
    assert spoofed.count(429) >= 10 - BURST - 2, spoofed
    # The trusted edge's X-Forwarded-For names the real clients: each has its own budget.
    async with client(EDGE) as http:
        forwarded = [
            (await http.post(path, json={"input": i}, headers={"X-Forwarded-For": f"203.0.113.{100 + i}"})).status_code
            for i in range(10)
        ]
    assert forwarded == [200] * 10


async def test_client_allowlist(guarded: Any) -> None:
    path = f"{guarded.url}/v1/models/sleep/predict"
    async with client(EDGE) as http:
        refused = await http.post(path, json={"input": 1}, headers={"X-Forwarded-For": "198.51.100.7"})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "client_not_allowed"
        allowed = await http.post(path, json={"input": 1}, headers={"X-Forwarded-For": "203.0.113.250"})
        assert allowed.status_code == 200


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    statuses: dict[str, int] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, outcome: str) -> None:
        self.changed.set()
        if outcome == "200":
            self.ok += 1
        else:
            self.failed += 1
            self.statuses = self.statuses or {}
            self.statuses[outcome] = self.statuses.get(outcome, 0) + 1


@pytest.fixture
async def load() -> AsyncIterator[Any]:
    """`start(url, concurrency)` runs requests until `stop()`, tallying outcomes."""
    tasks: list[asyncio.Task[None]] = []
    running = asyncio.Event()

    async def worker(http: httpx.AsyncClient, url: str, tally: Tally, n: int) -> None:
        i = 0
        while running.is_set():
            i += 1
            try:
                response = await http.post(f"{url}/v1/models/sleep/predict", json={"input": f"{n}-{i}"})
                tally.record(str(response.status_code))
            except httpx.HTTPError as exc:
                tally.record(type(exc).__name__)

    class Load:
        tally = Tally()

        async def start(self, url: str, concurrency: int) -> None:
            running.set()
            self.http = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency))
            tasks.extend(asyncio.create_task(worker(self.http, url, self.tally, n)) for n in range(concurrency))

        async def until(self, ok: int) -> None:
            async with asyncio.timeout(300):  # a generous bound: only a hang trips it
                while self.tally.ok < ok:
                    self.tally.changed.clear()
                    await self.tally.changed.wait()

        async def stop(self) -> Tally:
            running.clear()
            await asyncio.gather(*tasks)
            await self.http.aclose()
            return self.tally

    yield Load()
    running.clear()
    for task in tasks:
        task.cancel()


async def wait_exit(process: Any) -> int:
    return int(await asyncio.get_running_loop().run_in_executor(None, process.wait, 60))


async def test_sigterm_under_load_loses_nothing(load: Any) -> None:
    with replicas.cluster(3, [MODEL], {"BATCHERY_DRAIN_SECONDS": "10"}) as running:
        await load.start(running.url, concurrency=12)
        await load.until(ok=100)
        running.replicas[0].signal(signal.SIGTERM)
        assert await wait_exit(running.replicas[0].process) == 0, "a drained replica exits cleanly"
        after = load.tally.ok
        await load.until(ok=after + 100)
        tally = await load.stop()
    print(f"\nSIGTERM under load: {tally.ok} requests answered, {tally.failed} failed")
    assert tally.failed == 0, tally.statuses


async def test_sigkill_under_load_loses_at_most_what_was_in_flight(load: Any) -> None:
    concurrency = 12
    with replicas.cluster(3, [MODEL]) as running:
        await load.start(running.url, concurrency=concurrency)
        await load.until(ok=100)
        running.replicas[0].signal(signal.SIGKILL)
        await wait_exit(running.replicas[0].process)
        after = load.tally.ok
        await load.until(ok=after + 100)
        tally = await load.stop()
    print(f"\nSIGKILL under load: {tally.ok} requests answered, {tally.failed} failed ({tally.statuses})")
    # At most the killed replica's in-flight requests (nginx retries those it can: a reset before any answer).
    assert tally.failed <= concurrency, tally.statuses
    assert tally.ok >= after + 100, "traffic keeps flowing to the other replicas"

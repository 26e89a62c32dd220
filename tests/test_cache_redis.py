"""The Redis response cache over real HTTP with a real redis-server, including Redis down, hung and back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import httpx
import pytest
import redis

from batchery._http_client import Connection, RawResponse
from batchery.cache.link import RedisLink, RedisUnavailable
from batchery.testing import EchoModel, SleepModel, running_server
from redis_fixture import RedisServer
from test_cache_memory import cache_events


async def post(http: httpx.AsyncClient, value: object) -> httpx.Response:
    response = await http.post("/v1/models/echo/predict", json={"input": value})
    assert response.status_code == 200, response.text
    assert response.json()["output"] == value
    return response


async def test_redis_cache_hits_and_entries_expire_by_ttl(redis_server: RedisServer) -> None:
    settings = {"cache": "redis", "redis_url": redis_server.url, "cache_ttl_seconds": 60}
    async with running_server([EchoModel()], **settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await post(http, "a")).headers["x-cache"] == "miss"
        direct = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 10
        while not direct.keys("batchery:cache:*"):  # the write happens after the response, in the background
            assert time.monotonic() < deadline, "the response was never written to Redis"
            await asyncio.sleep(0.01)
        (key,) = direct.keys("batchery:cache:*")
        assert 0 < direct.pttl(key) <= 60_000
        assert (await post(http, "a")).headers["x-cache"] == "hit"
        direct.close()


async def test_redis_down_is_bypassed_warned_once_counted_and_resumed(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"cache": "redis", "redis_url": redis_server.url, "redis_timeout_ms": 200}
    async with running_server([EchoModel()], **settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        await post(http, "warm")
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="batchery.redis"):
            for index in range(5):
                assert (await post(http, f"down-{index}")).headers["x-cache"] == "miss"
        warnings = [r for r in caplog.records if r.name == "batchery.redis" and "bypassing" in r.getMessage()]
        assert len(warnings) == 1
        events = cache_events((await http.get("/metrics")).text)
        assert events[("echo", "redis", "error")] == 5

        redis_server.start()
        deadline = time.monotonic() + 20
        while (await post(http, "back")).headers["x-cache"] != "hit":  # breaker retries after 1 s; then hits
            assert time.monotonic() < deadline, "caching never resumed after Redis came back"


async def test_a_hung_redis_times_out_and_requests_are_still_served(redis_server: RedisServer) -> None:
    settings = {"cache": "redis", "redis_url": redis_server.url, "redis_timeout_ms": 100}
    async with running_server([EchoModel()], **settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        await post(http, "warm")
        redis_server.pause()
        try:
            for index in range(3):
                assert (await post(http, f"hung-{index}")).headers["x-cache"] == "miss"
        finally:
            redis_server.resume()
        assert cache_events((await http.get("/metrics")).text)[("echo", "redis", "error")] == 3


async def burst(
    url: str, count: int, body: dict[str, object], headers: dict[str, str] | None = None
) -> list[RawResponse]:
    """`count` identical requests at once, each on a connection of its own."""
    payload = json.dumps(body).encode()
    headers = {"content-type": "application/json", **(headers or {})}

    async def one() -> RawResponse:
        connection = await Connection.open(url)
        try:
            return await connection.request("POST", "/v1/models/echo/predict", payload, headers)
        finally:
            await connection.close()

    return await asyncio.gather(*(one() for _ in range(count)))


async def test_a_burst_of_requests_is_not_taken_for_redis_failing(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # 250 look-ups at once: more than the pooled connections (redis-py's default pool refused the rest at once,
    # which marked a healthy Redis down) and more than the event loop answers within redis_timeout_ms.
    async with running_server([EchoModel()], cache="redis", redis_url=redis_server.url) as server:
        await burst(server.url, 1, {"input": "x"})
        await asyncio.sleep(0.3)  # the background write lands
        with caplog.at_level(logging.WARNING, logger="batchery.redis"):
            answers = await burst(server.url, 250, {"input": "x"})
    assert not [r.getMessage() for r in caplog.records if r.name == "batchery.redis"]
    assert [a.headers["x-cache"] for a in answers] == ["hit"] * 250


class StallsTheLoop(EchoModel):
    """`decode_request` runs on the event loop: an input starting with "heavy" holds it for 150 ms."""

    def decode_request(self, item: object) -> object:
        if str(item).startswith("heavy"):
            time.sleep(0.15)
        return item


async def test_a_stalled_event_loop_is_not_taken_for_redis_failing(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis answers in microseconds; the timer of a look-up in flight while the loop was held fired first.
    settings = {"cache": "redis", "redis_url": redis_server.url}
    async with (
        running_server([StallsTheLoop()], **settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        for value in range(3):
            await post(http, value)
        await asyncio.sleep(0.3)
        stop = False

        async def small(index: int) -> None:
            while not stop:
                await post(http, index % 3)

        with caplog.at_level(logging.WARNING, logger="batchery.redis"):
            clients = [asyncio.create_task(small(index)) for index in range(8)]
            for index in range(20):
                await post(http, f"heavy{index}")
                await asyncio.sleep(0.05)
            stop = True
            await asyncio.gather(*clients)
        events = cache_events((await http.get("/metrics")).text)
    assert not [r.getMessage() for r in caplog.records if r.name == "batchery.redis"]
    assert events.get(("echo", "redis", "error"), 0) == 0


async def test_clearing_with_redis_hung_answers_503_at_once_and_clears_nothing(redis_server: RedisServer) -> None:
    settings = {"cache": "echo=memory,sleep=redis", "redis_url": redis_server.url, "admin_api_key": "adm"}
    models = [EchoModel(), SleepModel(0.01)]
    async with running_server(models, **settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        await post(http, "kept")
        assert (await post(http, "kept")).headers["x-cache"] == "hit"
        redis_server.pause()
        try:
            started = time.monotonic()
            cleared = await http.post("/admin/cache/clear", headers={"X-API-Key": "adm"}, timeout=30)
            assert time.monotonic() - started < 5
        finally:
            redis_server.resume()
        assert cleared.status_code == 503
        assert cleared.json()["error"]["code"] == "backend_unavailable"
        assert (await post(http, "kept")).headers["x-cache"] == "hit"  # the memory cache was not cleared first


async def test_no_call_waits_for_a_hung_redis_past_the_links_bound(redis_server: RedisServer) -> None:
    # Redis stops (SIGSTOP) while calls keep coming. A call cancelled in a new connection's handshake could go on
    # until redis-py's own socket timeout (5 s in redis-py 8) when the link waited for it without a bound. It
    # happens in some outages, not all: two of them (the reviewer's reproduction, with more, failed 2 runs in 5).
    for _ in range(2):
        link = RedisLink(redis_server.url, timeout=0.05)
        waits: list[float] = []

        async def one(link: RedisLink = link, waits: list[float] = waits) -> None:
            started = time.monotonic()
            with contextlib.suppress(RedisUnavailable):
                await link.run(lambda redis: redis.get("k"))
            waits.append(time.monotonic() - started)

        calls: list[asyncio.Task[None]] = []
        paused = False
        try:
            began = time.monotonic()
            while time.monotonic() - began < 1.0:
                if time.monotonic() - began > 0.3 and not paused:
                    redis_server.pause()
                    paused = True
                calls.extend(asyncio.create_task(one()) for _ in range(30))
                await asyncio.sleep(0.005)
            await asyncio.gather(*calls)
        finally:
            redis_server.resume()
            await link.close()
        assert max(waits) < 1.2

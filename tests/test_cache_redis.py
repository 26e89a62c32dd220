"""The Redis response cache over real HTTP with a real redis-server, including Redis down, hung and back."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
import redis

from batchery.testing import EchoModel, running_server
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

"""Rate limits: the token bucket alone, then over real HTTP in-process and shared by two replicas via Redis."""

from __future__ import annotations

import asyncio

import httpx

from batchery.app.ratelimit import TokenBuckets
from batchery.testing import EchoModel, running_server
from redis_fixture import RedisServer
from test_cache_redis import burst

PREDICT = "/v1/models/echo/predict"


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take_now("a", now=100.0).allowed for _ in range(4)] == [True, True, True, False]
    refused = buckets.take_now("a", now=100.0)
    assert refused.retry_after == 0.5
    assert buckets.take_now("a", now=100.5).allowed
    assert not buckets.take_now("a", now=100.5).allowed
    assert buckets.take_now("b", now=100.5).allowed  # one bucket per client
    assert buckets.take_now("a", now=1000.0).tokens == 2.0  # never above the burst


def test_buckets_are_bounded() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_clients=10)
    for index in range(100):
        buckets.take_now(str(index), now=0.0)
    assert len(buckets._buckets) == 10


async def test_429_with_retry_after_and_rate_limit_headers_per_key() -> None:
    settings = {"rate_limit": 0.01, "rate_limit_burst": 2, "api_keys": "a,b"}
    async with running_server([EchoModel()], **settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        a = {"X-API-Key": "a"}
        first = await http.post(PREDICT, json={"input": 1}, headers=a)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit"] == "2"
        assert first.headers["x-ratelimit-remaining"] == "1"
        assert int(first.headers["x-ratelimit-reset"]) > 0
        assert (await http.post(PREDICT, json={"input": 1}, headers=a)).status_code == 200
        refused = await http.post(PREDICT, json={"input": 1}, headers=a)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["x-ratelimit-remaining"] == "0"
        assert (await http.post(PREDICT, json={"input": 1}, headers={"X-API-Key": "b"})).status_code == 200
        for _ in range(5):  # probes and metrics are never limited
            assert (await http.get("/health")).status_code == 200
            assert (await http.get("/ready")).status_code == 200
        metrics = (await http.get("/metrics")).text
        assert 'batchery_rejected_total{model="",reason="rate_limited"} 1.0' in metrics


async def test_without_auth_the_client_address_is_limited() -> None:
    async with (
        running_server([EchoModel()], rate_limit=0.01, rate_limit_burst=1) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        assert (await http.post(PREDICT, json={"input": 1})).status_code == 200
        assert (await http.post(PREDICT, json={"input": 1})).status_code == 429


async def test_replicas_share_limits_through_redis_and_fall_back_when_it_is_down(redis_server: RedisServer) -> None:
    settings = {"rate_limit": 0.01, "rate_limit_burst": 3, "rate_limit_backend": "redis", "redis_url": redis_server.url}
    async with (
        running_server([EchoModel()], **settings) as one,
        running_server([EchoModel()], **settings) as two,
        httpx.AsyncClient() as http,
    ):
        statuses = [(await http.post(url + PREDICT, json={"input": 1})).status_code for url in (one.url, two.url) * 2]
        assert statuses == [200, 200, 200, 429]
        redis_server.stop()
        # Redis down: each replica limits on its own (fresh in-process buckets), requests are still answered.
        assert (await http.post(two.url + PREDICT, json={"input": 1})).status_code == 200


async def test_replicas_share_the_budget_under_a_burst(redis_server: RedisServer) -> None:
    # 250 requests at once on each of two replicas: a look-up given up as "Redis failed" would fall back to the
    # replica's own bucket and let the burst through (100 passed a shared budget of 50).
    settings = {
        "rate_limit": 0.001,
        "rate_limit_burst": 50,
        "rate_limit_backend": "redis",
        "redis_url": redis_server.url,
        "api_keys": "k",
    }
    async with running_server([EchoModel()], **settings) as a, running_server([EchoModel()], **settings) as b:
        answers = await asyncio.gather(
            burst(a.url, 250, {"input": 1}, {"X-API-Key": "k"}), burst(b.url, 250, {"input": 1}, {"X-API-Key": "k"})
        )
    statuses = [answer.status for answer in answers[0] + answers[1]]
    assert statuses.count(200) == 50
    assert statuses.count(429) == 450

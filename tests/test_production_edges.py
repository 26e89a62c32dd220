"""Production features at their edges: cache keys across reloads and deployments, identical requests with their
own deadlines, large values, Redis outages, refusals in each protocol's shape, clients that hang up, probes."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from _golden import Letters
from batchery import loader
from batchery.cache import ResponseCache, SingleFlight
from batchery.cache.link import RedisLink
from batchery.cache.memory import MemoryCache
from batchery.errors import DeadlineExceeded
from batchery.handle import code_fingerprint
from batchery.model import Model
from batchery.testing import EchoModel, running_server
from redis_fixture import RedisServer
from test_reload_edges import SOURCE

ADMIN = "admin-secret"


class Gate(Model):
    """One lane, one input a batch; "block" holds the lane for 0.4 s, so whatever comes next waits in the queue."""

    name = "gate"
    version = "1"
    tag = "v1"
    workers = 1
    max_batch_size = 1
    example = "warm"

    def predict(self, batch: list[Any]) -> list[Any]:
        if batch == ["block"]:
            time.sleep(0.4)
        return [f"{self.tag}:{x}" for x in batch]


class GateV2(Gate):
    version = "2"
    tag = "v2"


async def test_a_response_is_cached_under_the_version_that_computed_it() -> None:
    async with running_server([Gate()], cache="memory") as server, httpx.AsyncClient(base_url=server.url) as http:
        blocking = asyncio.create_task(http.post("/v1/models/gate/predict", json={"input": "block"}))
        await asyncio.sleep(0.1)
        queued = asyncio.create_task(http.post("/v1/models/gate/predict", json={"input": "race"}))
        await asyncio.sleep(0.05)  # "race" waits behind "block", asked of version 1
        await server.engine.reload("gate", GateV2())
        race = await queued
        await blocking
        assert race.json() == {"model": "gate", "version": "2", "output": "v2:race"}
        assert race.headers["x-model-version"] == "2"  # the version that computed it, in the header too
        assert (await server.engine.rollback("gate")) == "1"
        again = await http.post("/v1/models/gate/predict", json={"input": "race"})
        # Before the fix, version 2's answer was stored under version 1's key and served after the rollback.
        assert again.json()["output"] == "v1:race"
        assert again.headers["x-cache"] == "miss"


async def test_new_code_under_an_unchanged_version_label_misses_a_shared_cache(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    path = tmp_path / "model.py"
    settings = {"cache": "redis", "redis_url": redis_server.url, "redis_timeout_ms": 1000}
    outputs = []
    for tag in ("old", "new"):  # one deployment, then the next with new code, both "version 1", one Redis
        path.write_text(SOURCE.format(tag=tag))
        served = loader.served(f"{path}:M", fresh=True)
        async with running_server([served], **settings) as server, httpx.AsyncClient(base_url=server.url) as http:
            response = await http.post("/v1/models/m/predict", json={"input": "x"})
            outputs.append((response.json()["version"], response.json()["output"]))
    assert outputs == [("1", "old:x"), ("1", "new:x")]


def test_the_code_fingerprint_follows_the_files_not_their_path(tmp_path: Path) -> None:
    one, two = tmp_path / "one.py", tmp_path / "two.py"
    one.write_text("x = 1\n")
    two.write_text("x = 1\n")
    model = EchoModel()
    assert code_fingerprint(model, [str(one)]) == code_fingerprint(model, [str(two)])
    two.write_text("x = 2\n")
    assert code_fingerprint(model, [str(one)]) != code_fingerprint(model, [str(two)])


async def test_a_follower_keeps_its_own_deadline_and_outlives_the_leaders() -> None:
    flights = SingleFlight()
    release = asyncio.Event()

    async def slow() -> bytes:
        await release.wait()
        return b"answer"

    async def leader_times_out() -> bytes:
        await asyncio.sleep(0.05)
        raise DeadlineExceeded("the leader's deadline passed")

    # A follower's own deadline cuts its wait short; the computation goes on for the others.
    leader = asyncio.create_task(flights.do("k", slow))
    await asyncio.sleep(0)
    with pytest.raises(DeadlineExceeded, match="identical request"):
        await flights.do("k", slow, deadline=time.monotonic() + 0.05)
    release.set()
    assert await leader == (b"answer", False)

    # The leader's deadline is the leader's: a follower without one computes for itself (once: a second leader
    # failing the same way hands its error on, so a flood of hopeless identical requests is not re-led in series).
    release.clear()
    first = asyncio.create_task(flights.do("j", leader_times_out))
    await asyncio.sleep(0)
    follower = asyncio.create_task(flights.do("j", slow))
    with pytest.raises(DeadlineExceeded):
        await first
    release.set()
    assert await follower == (b"answer", False)


async def test_identical_requests_over_http_do_not_share_a_deadline() -> None:
    async with running_server([Gate()], cache="memory") as server, httpx.AsyncClient(base_url=server.url) as http:
        body = {"input": "block"}
        hasty = asyncio.create_task(  # it computes "block" (0.4 s) and gives up at 0.3 s
            http.post("/v1/models/gate/predict", json=body, headers={"X-Request-Timeout-Ms": "300"})
        )
        await asyncio.sleep(0.03)
        patient = asyncio.create_task(http.post("/v1/models/gate/predict", json=body))  # follows the hasty one
        await asyncio.sleep(0.1)
        assert server.app.state.responses.flights._calls  # one computation in flight, the patient one waiting
        assert (await hasty).status_code == 504
        assert (await patient).status_code == 200, (await patient).text  # before the fix: the hasty client's 504


async def test_responses_over_the_value_bound_are_computed_but_not_stored() -> None:
    cache = ResponseCache({"m": MemoryCache(max_bytes=1 << 20, ttl=60)}, max_value_bytes=10)
    computed = 0

    async def compute(size: int) -> bytes:
        nonlocal computed
        computed += 1
        return b"x" * size

    for size in (20, 20, 5, 5):
        await cache.get_or_compute("m", f"key{size}", lambda size=size: compute(size))  # type: ignore[misc]
    assert computed == 3  # both 20-byte answers computed, the 5-byte one once


async def test_a_call_begun_before_a_failure_does_not_mark_redis_back(redis_server: RedisServer) -> None:
    link = RedisLink(redis_server.url, timeout=5.0)
    started = asyncio.Event()
    finish = asyncio.Event()

    async def slow_ping(redis: Any) -> Any:
        started.set()
        await finish.wait()
        return await redis.ping()

    try:
        early = asyncio.create_task(link.run(slow_ping))
        await started.wait()
        link._failed(TimeoutError("another call timed out"))  # what a concurrent call's timeout does
        finish.set()
        assert await early is True
        assert link.down  # the early call's success says nothing about Redis after the failure
    finally:
        await link.close()


async def test_clearing_the_cache_while_redis_is_down_is_a_503(redis_server: RedisServer) -> None:
    settings = {"cache": "redis", "redis_url": redis_server.url, "admin_api_key": ADMIN, "redis_timeout_ms": 1000}
    async with running_server([EchoModel()], **settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        redis_server.stop()
        response = await http.post("/admin/cache/clear", headers={"X-API-Key": ADMIN})
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "backend_unavailable"
    assert "was not cleared" in response.json()["error"]["message"]


async def test_refusals_before_the_route_come_in_the_routes_protocol_shape() -> None:
    settings = {"api_keys": "k1", "max_body_bytes": 200, "rate_limit": 0.01, "rate_limit_burst": 1}
    async with running_server([Letters()], **settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        key = {"X-API-Key": "k1"}
        unauthorized = await http.post("/v1/embeddings", json={"model": "letters", "input": "a"})
        assert unauthorized.status_code == 401
        assert set(unauthorized.json()["error"]) >= {"message", "type", "code"}  # OpenAI's shape
        kserve = await http.post("/v2/models/letters/infer", content=b"x" * 300, headers=key)
        assert kserve.status_code == 413  # it took the key's one token of the rate limit
        assert isinstance(kserve.json()["error"], str)  # KServe V2's shape: tritonclient reads a string
        limited = await http.post("/v2/models/letters/infer", content=b"{}", headers=key)
        assert limited.status_code == 429
        assert isinstance(limited.json()["error"], str)
        assert "Retry-After" in limited.headers
        # Probes stay open: no key, never limited.
        for _ in range(3):
            assert (await http.get("/v2/health/live")).status_code == 200
            assert (await http.get("/v2/health/ready")).status_code == 200


async def test_a_chunked_upload_over_the_body_limit_is_413() -> None:
    async def chunks() -> Any:
        yield b"--b\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\n"
        for _ in range(20):
            yield b"x" * 100

    async with (
        running_server([EchoModel()], max_body_bytes=1000) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        response = await http.post(
            "/v1/models/echo/predict",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
    assert response.status_code == 413, response.text


async def test_a_client_that_hangs_up_mid_body_is_499_not_a_server_error(caplog: pytest.LogCaptureFixture) -> None:
    async with running_server([Letters()], access_log="json") as server:
        port = int(server.url.rsplit(":", 1)[1])
        for path in ("/v1/models/letters/predict", "/v1/embeddings"):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            writer.write(head.encode() + b'{"input": ')
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=server.url) as http:
            metrics = (await http.get("/metrics")).text
    assert 'status="500"' not in metrics
    assert 'status="499"' in metrics
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [record.getMessage() for record in errors]


async def test_cache_hits_on_the_openai_route_name_their_model_in_metrics() -> None:
    async with running_server([Letters()], cache="memory") as server, httpx.AsyncClient(base_url=server.url) as http:
        body = orjson.dumps({"model": "letters", "input": "same"})
        for _ in range(3):
            assert (await http.post("/v1/embeddings", content=body)).status_code == 200
        metrics = (await http.get("/metrics")).text
    assert 'batchery_requests_total{model="letters",route="/v1/embeddings",status="200"} 3.0' in metrics


class Opaque(Model):
    name = "opaque"
    example = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        return [object() if x == "opaque" else x for x in batch]


async def test_model_mistakes_found_by_a_new_user_get_messages_that_say_what_to_do() -> None:
    from batchery.config import Settings
    from batchery.errors import ConfigError
    from batchery.server import Server

    with pytest.raises(ConfigError, match=r"cache names 'shuot', which this server does not serve as a model"):
        Server([EchoModel()], Settings.load({"cache": "shuot=memory"}))
    async with running_server([Opaque()], api_keys="k1") as server, httpx.AsyncClient(base_url=server.url) as http:
        key = {"X-API-Key": "k1"}
        response = await http.post("/v1/models/opaque/predict", json={"input": "opaque"}, headers=key)
        assert response.status_code == 500
        assert "model 'opaque' returned an output that cannot be sent as JSON" in response.json()["error"]["message"]
        dashboard = await http.get("/dashboard/data", headers=key)
        assert dashboard.status_code == 403
        assert "no admin key is configured: set BATCHERY_ADMIN_API_KEY" in dashboard.json()["error"]["message"]


async def test_a_rollback_keeps_its_versions_code_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(SOURCE.format(tag="a"))
    async with running_server([loader.served(f"{path}:M", fresh=True)]) as server:
        handle = server.engine.handle("m")
        first = handle.cache_tag("1")
        path.write_text(SOURCE.format(tag="b"))
        await handle.reload()
        assert handle.cache_tag(handle.version) != first
        await handle.rollback()
        # Version 1's code is no longer on disk: it keeps the fingerprint it was loaded with, not file b's.
        assert handle.cache_tag("1") == first


def test_a_second_out_of_memory_size_does_not_halve_the_cap_again() -> None:
    from batchery.batching.oom import BatchCap

    cap = BatchCap(32)
    for size in (16, 16, 32):  # what one batch of 32 records on a model whose limit is 12
        cap.failed(size)
    assert cap.value == 8  # half the smallest failing size; before the fix 2


async def test_a_flood_of_identical_hopeless_requests_is_not_re_led_one_by_one() -> None:
    flights = SingleFlight()
    calls = 0

    async def hopeless() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise DeadlineExceeded("too late")

    results = await asyncio.gather(*(flights.do("k", hopeless) for _ in range(200)), return_exceptions=True)
    assert all(isinstance(result, DeadlineExceeded) for result in results)
    assert calls <= 2  # before the fix: 200 computations in series, each waking every remaining follower


async def test_a_request_sharing_another_computation_names_the_version_that_computed_it() -> None:
    async with running_server([Gate()], cache="memory") as server, httpx.AsyncClient(base_url=server.url) as http:
        blocking = asyncio.create_task(http.post("/v1/models/gate/predict", json={"input": "block"}))
        await asyncio.sleep(0.1)
        leader = asyncio.create_task(http.post("/v1/models/gate/predict", json={"input": "twin"}))
        await asyncio.sleep(0.05)
        follower = asyncio.create_task(http.post("/v1/models/gate/predict", json={"input": "twin"}))
        await asyncio.sleep(0.05)  # both wait behind "block", asked of version 1; the follower shares the leader's
        await server.engine.reload("gate", GateV2())
        answers = [await leader, await follower]
        await blocking
        stored = await http.post("/v1/models/gate/predict", json={"input": "twin"})
    for answer in answers:
        assert answer.json()["version"] == "2"
        assert answer.headers["x-model-version"] == "2"  # the follower's said "1" before the fix
    assert answers[1].headers["x-cache"] == "hit"
    assert stored.headers["x-cache"] == "hit"
    assert stored.headers["x-model-version"] == "2"

"""The cache parts without HTTP: keys, the memory LRU, single-flight."""

from __future__ import annotations

import asyncio

import pytest

from batchery.cache import MemoryCache, SingleFlight, cache_key, canonical_json
from batchery.cache import memory as memory_module
from batchery.cache.link import RedisLink, RedisUnavailable
from batchery.config import Settings, cache_backends
from batchery.errors import ClientOverloaded, ConfigError, Overloaded


def test_keys_ignore_key_order_and_separate_model_version_and_protocol() -> None:
    a = cache_key("native", "m", "1", canonical_json({"b": 1, "a": [1, {"y": 2, "x": 3}]}))
    b = cache_key("native", "m", "1", canonical_json({"a": [1, {"x": 3, "y": 2}], "b": 1}))
    assert a == b
    others = {
        cache_key("native", "m", "2", canonical_json({"a": 1})),
        cache_key("native", "n", "1", canonical_json({"a": 1})),
        cache_key("openai", "m", "1", canonical_json({"a": 1})),
        cache_key("native", "m", "1", canonical_json({"a": 2})),
    }
    assert len(others) == 4
    assert a.startswith("batchery:cache:")


async def test_memory_cache_evicts_least_recently_used_by_bytes() -> None:
    entry = len(cache_key("n", "m", "1", b"x")) + 100 + memory_module.ENTRY_OVERHEAD
    cache = MemoryCache(max_bytes=entry * 3, ttl=0)
    keys = [cache_key("n", "m", "1", bytes([i])) for i in range(4)]
    for key in keys[:3]:
        cache.put(key, b"v" * 100)
    assert await cache.get(keys[0]) is not None  # keys[0] is now the most recently used
    cache.put(keys[3], b"v" * 100)
    assert await cache.get(keys[1]) is None
    assert await cache.get(keys[0]) is not None
    assert await cache.get(keys[3]) is not None
    assert cache.size <= cache.max_bytes
    cache.put("huge", b"x" * (entry * 4))  # larger than the whole cache: refused, nothing evicted for it
    assert await cache.get("huge") is None
    assert len(cache) == 3


async def test_memory_cache_entries_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(memory_module.time, "monotonic", lambda: now[0])
    cache = MemoryCache(max_bytes=10_000, ttl=5)
    cache.put("k", b"v")
    now[0] += 4.9
    assert await cache.get("k") == b"v"
    now[0] += 0.2
    assert await cache.get("k") is None
    assert cache.size == 0


async def test_single_flight_computes_once_and_shares_results_and_errors() -> None:
    flights = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        await release.wait()
        return b"out"

    tasks = [asyncio.create_task(flights.do("k", compute)) for _ in range(10)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert sorted(shared for _, shared in results) == [False] + [True] * 9
    assert {body for body, _ in results} == {b"out"}

    async def fail() -> bytes:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    outcomes = await asyncio.gather(*(flights.do("e", fail) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert "e" not in flights  # nothing kept: the next caller computes again


async def test_single_flight_follower_computes_when_the_leader_is_cancelled() -> None:
    flights = SingleFlight()
    started = asyncio.Event()

    async def slow() -> bytes:
        started.set()
        await asyncio.sleep(3600)
        return b"never"

    async def quick() -> bytes:
        return b"mine"

    leader = asyncio.create_task(flights.do("k", slow))
    await started.wait()
    follower = asyncio.create_task(flights.do("k", quick))
    await asyncio.sleep(0)
    leader.cancel()
    assert await follower == (b"mine", False)


def test_cache_setting_selects_a_backend_per_model() -> None:
    settings = Settings(cache="memory, slow=off, shared=redis", redis_url="redis://127.0.0.1:1")
    assert settings.cache_backend("any") == "memory"
    assert settings.cache_backend("slow") is None
    assert settings.cache_backend("shared") == "redis"
    assert Settings().cache_backend("any") is None
    assert cache_backends("a=memory") == {"a": "memory"}
    with pytest.raises(ConfigError, match="redis_url"):
        Settings(cache="redis")
    with pytest.raises(ConfigError, match="names no backend"):
        Settings(cache="a=disk")


def test_redis_log_lines_name_a_unix_socket_by_its_path_and_never_a_password() -> None:
    assert RedisLink("unix:///run/redis/redis.sock?db=2", timeout=0.05).where == "/run/redis/redis.sock"
    link = RedisLink("redis://:secret@cache.internal:6380/0", timeout=0.05)
    assert link.where == "cache.internal:6380"


@pytest.mark.parametrize(("error", "most_computations"), [(Overloaded, 1), (ClientOverloaded, 2)])
async def test_a_full_queue_refuses_identical_requests_once_and_a_shed_client_is_retried_once(
    error: type[Overloaded], most_computations: int
) -> None:
    # A plain full queue refuses everybody: 1,000 followers retrying one after another each took a turn of the
    # loop and woke the rest (25 s of loop time for 3,000). Shedding is about the computing caller's own client:
    # one follower computes for the others.
    flights, calls, gate = SingleFlight(), 0, asyncio.Event()

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()
        await asyncio.sleep(0)
        raise error("queue full", retry_after=1.0)

    async def one() -> int:
        try:
            await flights.do("k", compute)
        except Overloaded:
            return 503
        return 200

    requests = [asyncio.create_task(one()) for _ in range(1000)]
    await asyncio.sleep(0.01)
    gate.set()
    assert set(await asyncio.gather(*requests)) == {503}
    assert calls <= most_computations


async def test_a_call_in_flight_when_redis_stops_answering_gives_up_within_a_few_timeouts() -> None:
    # Fake commands (nothing connects). A call that saw Redis answer another call once must not wait out the whole
    # second of a burst's patience when no answer follows: Redis died.
    link = RedisLink("redis://127.0.0.1:1", timeout=0.05)
    hung: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def hangs(_: object) -> str:
        return await hung

    async def answered_soon(_: object) -> str:
        await asyncio.sleep(0.01)
        return "v"

    in_flight = asyncio.create_task(link.run(hangs))
    await asyncio.sleep(0)
    await link.run(answered_soon)  # the last answer before Redis died
    started = asyncio.get_running_loop().time()
    with pytest.raises(RedisUnavailable):
        await in_flight
    assert asyncio.get_running_loop().time() - started < 4 * 0.05 + 0.1
    assert link.down


async def test_a_call_stops_waiting_once_another_call_found_redis_failing() -> None:
    link = RedisLink("redis://127.0.0.1:1", timeout=0.05)

    async def hangs(_: object) -> str:
        await asyncio.sleep(3600)
        return "never"

    async def answered_soon(_: object) -> str:
        await asyncio.sleep(0.01)
        return "v"

    first = asyncio.create_task(link.run(hangs))
    await asyncio.sleep(0)
    await link.run(answered_soon)
    with pytest.raises(RedisUnavailable):
        await link.run(hangs)  # marks Redis down
    assert link.down
    marked = asyncio.get_running_loop().time()
    with pytest.raises(RedisUnavailable):
        await first
    assert asyncio.get_running_loop().time() - marked < 0.1

"""The Redis response cache: shared by replicas, entries expire by Redis' own TTL."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from redis.asyncio import Redis

from batchery.cache.keys import PREFIX
from batchery.cache.link import RedisLink, RedisUnavailable
from batchery.errors import BackendUnavailable

log = logging.getLogger("batchery.cache")

#: Writes waiting for Redis at once; beyond this a response is simply not cached (Redis is slow).
MAX_PENDING_WRITES = 1024


class RedisCache:
    """`get` raises RedisUnavailable when Redis is down or slow; `put` writes in the background."""

    backend = "redis"

    def __init__(self, link: RedisLink, *, ttl: float) -> None:
        self.link = link
        self.ttl_ms = round(ttl * 1000) or None  # 0: no expiry, Redis' maxmemory policy evicts
        self._writes: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> bytes | None:
        value = await self.link.run(lambda redis: redis.get(key))
        return value.encode() if isinstance(value, str) else value

    def put(self, key: str, value: bytes) -> None:
        # The response does not wait for the write; the set keeps a reference so the task is not collected.
        if len(self._writes) >= MAX_PENDING_WRITES or self.link.down:
            return
        task = asyncio.get_running_loop().create_task(self._write(key, value))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, value: bytes) -> None:
        with contextlib.suppress(RedisUnavailable):  # the link logged it; this response just stays uncached
            await self.link.run(lambda redis: redis.set(key, value, px=self.ttl_ms))

    async def clear(self) -> None:
        """Delete every batchery cache entry: a scan of the key space, each step within the link's timeout."""
        cursor = 0
        try:
            while True:
                cursor, keys = await self.link.run(functools.partial(_scan, cursor=cursor))
                if keys:
                    await self.link.run(functools.partial(_unlink, keys=keys))
                if not cursor:
                    return
        except RedisUnavailable as exc:
            raise BackendUnavailable(
                f"{exc}: the shared cache was not cleared (or not all of it); retry once Redis is reachable",
                retry_after=5.0,
            ) from exc


async def _scan(redis: Redis, *, cursor: int) -> tuple[int, list[bytes | str]]:
    found: tuple[int, list[bytes | str]] = await redis.scan(cursor, match=PREFIX + "*", count=1000)
    return found


async def _unlink(redis: Redis, *, keys: list[bytes | str]) -> None:
    await redis.unlink(*keys)

"""The Redis response cache: shared by replicas, entries expire by Redis' own TTL."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

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
        """Delete every batchery cache entry (an admin action: it scans the key space, so it has its own timeout)."""
        redis = self.link.client
        try:
            async with asyncio.timeout(30):
                keys = [key async for key in redis.scan_iter(match=PREFIX + "*", count=1000)]
                for start in range(0, len(keys), 1000):
                    await redis.unlink(*keys[start : start + 1000])
        except (TimeoutError, OSError, RedisError) as exc:
            raise BackendUnavailable(
                f"redis at {self.link.where} did not answer ({exc!r}): the shared cache was not cleared; retry "
                "once Redis is reachable",
                retry_after=5.0,
            ) from exc

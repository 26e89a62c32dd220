"""A Redis client that is bypassed while Redis is down or slow, shared by the cache and the rate limiter.

Every call has a short timeout. The first failure logs one warning and marks Redis down for `retry_after`
seconds, during which calls fail at once without touching the network; the next call after that probes it,
and success logs that Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from batchery.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("batchery.redis")
T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis is down, slow or refused the call; the caller goes on without it."""


class RedisLink:
    """`await link.run(lambda r: r.get(key))` runs a command within `timeout` seconds or raises RedisUnavailable."""

    def __init__(self, url: str, *, timeout: float, retry_after: float = 1.0) -> None:
        try:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:
            raise ConfigError("the redis backends need redis-py: pip install 'batchery[production]'") from exc
        self.timeout = timeout
        self.retry_after = retry_after
        # No client-side retries: a retry triples the wait on a dead server; the breaker below retries later.
        self.client: Redis = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        kwargs = self.client.connection_pool.connection_kwargs
        self.where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"  # no password in log lines
        self._down_until = 0.0
        self._failed_at = 0.0
        self.down = False

    async def run(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        started = time.monotonic()
        if self.down and started < self._down_until:
            raise RedisUnavailable(f"redis at {self.where} is marked down")
        try:
            async with asyncio.timeout(self.timeout):
                result = await command(self.client)
        except (TimeoutError, OSError, _redis_errors()) as exc:
            self._failed(exc)
            await self._drop_connections()
            raise RedisUnavailable(f"redis at {self.where}: {exc!r}") from exc
        if self.down and started >= self._failed_at:  # a call begun before the last failure proves nothing
            self.down = False
            log.warning("redis at %s is back; the cache and shared rate limits use it again", self.where)
        return result

    def _failed(self, exc: BaseException) -> None:
        self._failed_at = time.monotonic()
        self._down_until = self._failed_at + self.retry_after
        if not self.down:
            self.down = True
            log.warning(
                "redis at %s failed (%r): bypassing it (cache misses, per-process rate limits) and retrying every "
                "%.0f s. Check that Redis is up and reachable, or raise redis_timeout_ms if it is only slow",
                self.where, exc, self.retry_after,
            )  # fmt: skip

    async def _drop_connections(self) -> None:
        # Pooled connections opened before an outage are dead after it: without this, the first calls after
        # Redis returns would fail on them one by one, marking it down again (and logging it again).
        try:
            async with asyncio.timeout(self.timeout):
                # Idle ones only: closing one another call is writing on breaks that call outside redis' errors.
                await self.client.connection_pool.disconnect(inuse_connections=False)
        except Exception as exc:
            log.debug("dropping redis connections: %r", exc)

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception as exc:  # closing a dead connection must not fail a shutdown
            log.debug("closing redis: %r", exc)


def _redis_errors() -> type[Exception]:
    from redis.exceptions import RedisError

    return RedisError

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
from typing import TYPE_CHECKING, Any, TypeVar

from batchery.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("batchery.redis")
T = TypeVar("T")

#: Connections to Redis per process; calls beyond this wait for one (Redis answers one command at a time anyway).
MAX_CONNECTIONS = 64
#: Turns of the event loop a call whose timer fired gets to read an answer that already arrived.
_GRACE_TURNS = 3
#: A turn of the event loop longer than this means it has work queued (requests, other calls' answers).
_BUSY_TURN = 0.002
#: Timeouts a call waits in all on a busy loop before it counts as Redis failing, unless Redis answers others:
#: Redis dying under load costs the requests in flight this long, not `retry_after`.
_BUSY_PATIENCE = 4


class RedisUnavailable(Exception):
    """Redis is down, slow or refused the call; the caller goes on without it."""


class RedisLink:
    """`await link.run(lambda r: r.get(key))` runs a command within `timeout` seconds or raises RedisUnavailable."""

    def __init__(self, url: str, *, timeout: float, retry_after: float = 1.0) -> None:
        try:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:
            raise ConfigError("the redis backends need redis-py: pip install 'batchery[production]'") from exc
        self.timeout = timeout
        self.retry_after = retry_after
        # More calls at once than pooled connections wait for one (within the call's timeout) instead of failing
        # at once: redis-py's default pool raises beyond its size, and a burst of requests would look like an
        # outage. redis-py's own socket timeouts are only a backstop, longer than `_within_timeout` ever waits:
        # a timer of theirs would fire first after a busy loop, and without one a call cancelled mid-handshake
        # could hang. No client-side retries: a retry triples the wait on a dead server; the breaker retries.
        backstop = 2 * retry_after + 2 * timeout
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=None,
            socket_timeout=backstop,
            socket_connect_timeout=backstop,
            retry=Retry(NoBackoff(), 0),
        )
        self.client: Redis = Redis(connection_pool=pool)
        kwargs = pool.connection_kwargs
        # No password in log lines: the host and port, or the socket's path.
        self.where = kwargs["path"] if "path" in kwargs else f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        self._down_until = 0.0
        self._failed_at = 0.0
        self._answered_at = 0.0  # when a call last had its answer: Redis was alive then
        self.down = False

    async def run(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        started = time.monotonic()
        if self.down and started < self._down_until:
            raise RedisUnavailable(f"redis at {self.where} is marked down")
        try:
            result = await self._within_timeout(command, started)
        except _LateBehindOthers as exc:  # not on a server that is down: only this call goes without Redis
            raise RedisUnavailable(f"redis at {self.where}: {exc}") from exc
        except (TimeoutError, OSError, _redis_errors()) as exc:  # redis-py's own TimeoutError is a RedisError
            self._failed(exc)
            await self._drop_connections()
            raise RedisUnavailable(f"redis at {self.where}: {exc!r}") from exc
        self._answered_at = time.monotonic()
        if self.down and started >= self._failed_at:  # a call begun before the last failure proves nothing
            self.down = False
            log.warning("redis at %s is back; the cache and shared rate limits use it again", self.where)
        return result

    async def _within_timeout(self, command: Callable[[Redis], Awaitable[T]], started: float) -> T:
        """`command`'s result, or TimeoutError after `timeout` seconds of the event loop's time.

        Time on the event loop is not all Redis' time, and two cases must not count as Redis being slow:
        - A loop that was busy elsewhere for longer than the timeout (a long `decode_request`, a large body, the
          garbage collector): when it comes back, the answer may already be in the socket, but the timer runs
          first. So the command is not cancelled when the timer fires; its task gets the loop's next turns to
          read what arrived, and only then is it given up.
        - A burst of requests (more calls than pooled connections, more work than the loop does in one turn):
          a call goes on waiting, one timeout at a time, while Redis keeps answering calls begun after it (up to
          `retry_after` in all; then only this call gives up) or, with no answers, while the loop is busy (up to
          `_BUSY_PATIENCE` timeouts). Given up early, a rate limit would fall back to this process' own buckets
          and let the burst through. Otherwise a call without its answer after one timeout gives up and Redis
          counts as failing, as it does at once when another call found it failing meanwhile. The price: a
          Redis slower than the timeout that still answers a steady stream of calls is waited for (up to
          `retry_after` a call), not bypassed.
        """
        task = asyncio.ensure_future(command(self.client))
        verdict = None
        try:
            due = time.monotonic() + self.timeout
            await asyncio.wait([task], timeout=self.timeout)
            while not task.done():
                # A timer that fired well after it was due: the loop was held (the answer may not even have been
                # asked for yet). The call gets a fresh timeout on a loop that runs again.
                stalled = time.monotonic() - due > self.timeout / 2
                verdict = await self._verdict(started, stalled)
                if verdict is not None:
                    break
                due = time.monotonic() + self.timeout
                await asyncio.wait([task], timeout=self.timeout)
            for _ in range(_GRACE_TURNS):
                if task.done():
                    break
                await asyncio.sleep(0)
        except BaseException:  # the request itself was cancelled (its client hung up): so is its Redis call
            task.cancel()
            task.add_done_callback(_retrieve)
            raise
        if not task.done():
            task.cancel()
            task.add_done_callback(_retrieve)
            # Cancelled mid-handshake, redis-py may take until its backstop timeout to let go: not this request.
            await asyncio.wait([task], timeout=self.timeout)
            message = f"no answer within {(time.monotonic() - started) * 1000:.0f} ms"
            raise (_LateBehindOthers if verdict == "late" else TimeoutError)(message)
        return task.result()

    async def _verdict(self, started: float, stalled: bool) -> str | None:
        """None: wait one more timeout. "late": give up on this call only (Redis kept answering calls begun after
        it: a burst's queue). "slow": give up, and Redis counts as failing."""
        now = time.monotonic()
        waited = now - started
        # Redis answered a call begun after this one, and did so within the last timeout (not before it died).
        answering = self._answered_at > started and now - self._answered_at < self.timeout
        if self._failed_at > started:  # another call found Redis failing meanwhile
            return "slow"
        if waited >= self.retry_after - self.timeout:
            return "late" if answering else "slow"
        if stalled or answering:
            return None
        if not await _loop_is_busy():  # an idle loop is not what delays the answer
            return "slow"
        return "slow" if waited >= _BUSY_PATIENCE * self.timeout else None

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
            async with asyncio.timeout(max(1.0, 4 * self.timeout)):
                await self.client.aclose()
                # A pool handed to the client is not the client's to close: every pooled connection is closed here.
                await self.client.connection_pool.disconnect()
        except Exception as exc:  # closing a dead connection must not fail (or hold up) a shutdown
            log.debug("closing redis: %r", exc)


class _LateBehindOthers(TimeoutError):
    """A call given up while Redis kept answering others: a burst's queue, not Redis failing."""


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # read: no "exception was never retrieved" for a call already given up


async def _loop_is_busy() -> bool:
    """Whether the event loop took more than `_BUSY_TURN` seconds for one turn (work queued ahead of this task)."""
    before = time.monotonic()
    await asyncio.sleep(0)
    return time.monotonic() - before > _BUSY_TURN


def _redis_errors() -> type[Exception]:
    from redis.exceptions import RedisError

    return RedisError

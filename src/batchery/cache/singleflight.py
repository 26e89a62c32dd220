"""Identical requests in flight at once are computed once; every caller gets the one result (or error).

Each caller keeps its own deadline while it waits, and when the computing caller fails for a reason of its own
(its deadline, or a 503 for its client's share of a full queue), the others compute for themselves, once (a flood
of identical requests with hopeless deadlines must not hand the computation from one to the next, waking all the
rest each time).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from batchery.errors import ClientOverloaded, DeadlineExceeded

#: Errors about the caller that computed, not about the computation: those waiting with it try on their own.
#: ClientOverloaded: a full queue shed the computing caller's input for its own client's backlog, and a
#: follower's request may well be admitted. A plain full queue (Overloaded) refuses everybody alike: handed on,
#: not retried by each follower in turn.
_PERSONAL = (DeadlineExceeded, ClientOverloaded)


class SingleFlight:
    """Per key, at most one `compute` runs; callers arriving meanwhile await its outcome."""

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Future[bytes]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._calls

    async def do(
        self, key: str, compute: Callable[[], Awaitable[bytes]], *, deadline: float | None = None
    ) -> tuple[bytes, bool]:
        """The result for `key` and whether it was shared from another caller's computation.

        `deadline` (a `time.monotonic()` time) bounds how long this caller waits for another's computation
        (DeadlineExceeded); its own computation is bounded by `compute` itself.
        """
        retried = False
        while True:
            running = self._calls.get(key)
            if running is None:
                break
            try:
                return await _follow(running, deadline), True
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not running.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The leader was cancelled (its client left), not us: compute it ourselves.
            except _PERSONAL as exc:
                if retried or not (running.done() and not running.cancelled() and running.exception() is exc):
                    raise  # our own deadline passed while waiting, or a second leader failed the same way
                retried = True  # the leader's own deadline failed it: compute it ourselves (or follow a new one)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._calls[key] = future
        try:
            result = await compute()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "exception never retrieved" log when nobody else waited
            raise
        finally:
            del self._calls[key]
        future.set_result(result)
        return result, False


async def _follow(running: asyncio.Future[bytes], deadline: float | None) -> bytes:
    # shield: a follower that goes away must not cancel the leader's computation.
    if deadline is None:
        return await asyncio.shield(running)
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await asyncio.shield(running)
    except TimeoutError:
        raise DeadlineExceeded(
            "the request's deadline passed while an identical request was being computed for it"
        ) from None

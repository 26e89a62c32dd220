"""Identical requests in flight at once are computed once; every caller gets the one result (or error)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class SingleFlight:
    """Per key, at most one `compute` runs; callers arriving meanwhile await its outcome."""

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Future[bytes]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._calls

    async def do(self, key: str, compute: Callable[[], Awaitable[bytes]]) -> tuple[bytes, bool]:
        """The result for `key` and whether it was shared from another caller's computation."""
        while True:
            running = self._calls.get(key)
            if running is None:
                break
            try:
                # shield: a follower that goes away must not cancel the leader's computation.
                return await asyncio.shield(running), True
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not running.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The leader was cancelled (its client left), not us: compute it ourselves.
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

"""The response cache of one app: a backend per model, in-flight de-duplication and cache metrics.

Protocol adapters call `get_or_compute(model, key, compute)` with a key from `cache_key(...)` and a coroutine
function making the response bytes; only successful responses (compute returned) are stored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from batchery.cache.link import RedisLink, RedisUnavailable
from batchery.cache.memory import MemoryCache
from batchery.cache.singleflight import SingleFlight

if TYPE_CHECKING:
    from batchery.config import Settings
    from batchery.metrics import Metrics

log = logging.getLogger("batchery.cache")

CacheUnavailable = RedisUnavailable


class Cache(Protocol):
    """A response store. `get` may raise CacheUnavailable; `put` never blocks the response and never raises."""

    backend: str

    async def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    async def clear(self) -> None: ...


class ResponseCache:
    """Look up, de-duplicate, compute and store responses for the models that have a backend."""

    def __init__(
        self, backends: dict[str, Cache], metrics: Metrics | None = None, *, max_value_bytes: int = 1024 * 1024
    ) -> None:
        self.backends = backends
        self.metrics = metrics
        #: Larger responses are not stored: they would crowd out many small ones, and a slow Redis write of
        #: megabytes must not make Redis look down to every other request.
        self.max_value_bytes = max_value_bytes
        self.flights = SingleFlight()

    @classmethod
    def from_settings(
        cls, settings: Settings, models: Iterable[str], *, redis: RedisLink | None, metrics: Metrics | None
    ) -> ResponseCache | None:
        """A cache for the models `settings.cache` selects, or None when it selects none."""
        backends: dict[str, Cache] = {}
        memory: MemoryCache | None = None  # one memory bound shared by every model
        shared_redis: Cache | None = None
        for model in models:
            backend = settings.cache_backend(model)
            if backend == "memory":
                memory = memory or MemoryCache(max_bytes=settings.cache_max_bytes, ttl=settings.cache_ttl_seconds)
                backends[model] = memory
            elif backend == "redis":
                if redis is None:
                    raise ValueError("a redis cache needs a RedisLink")
                from batchery.cache.redis_impl import RedisCache

                shared_redis = shared_redis or RedisCache(redis, ttl=settings.cache_ttl_seconds)
                backends[model] = shared_redis
        return cls(backends, metrics, max_value_bytes=settings.cache_max_value_bytes) if backends else None

    def enabled(self, model: str) -> bool:
        return model in self.backends

    async def get_or_compute(
        self,
        model: str,
        key: str,
        compute: Callable[[], Awaitable[bytes]],
        *,
        deadline: float | None = None,
        store_key: Callable[[], str] | None = None,
    ) -> tuple[bytes, bool]:
        """The response for `key` and whether it was served without computing (stored, or shared in flight).

        `deadline` bounds the wait for an identical request's computation; `store_key` names the entry to store
        a computed response under, once computed (the key of the model version that computed it, which a hot
        reload may have changed since `key` was made); without it, `key`.
        """
        backend = self.backends.get(model)
        if backend is None:
            return await compute(), False
        event = ""  # each request counts one event: hit (stored or shared), miss, or error (backend failed)
        if key not in self.flights:
            try:
                stored = await backend.get(key)
            except CacheUnavailable:
                event = "error"
            else:
                if stored is not None:
                    self._count(model, backend.backend, "hit")
                    return stored, True
        try:
            body, shared = await self.flights.do(key, compute, deadline=deadline)
        except Exception:  # a look-up that missed and then failed is still a look-up
            self._count(model, backend.backend, event or "miss")
            raise
        self._count(model, backend.backend, event or ("hit" if shared else "miss"))
        if not shared and len(body) <= self.max_value_bytes:
            backend.put(store_key() if store_key is not None else key, body)
        return body, shared

    def _count(self, model: str, backend: str, event: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_event(model, backend, event)

    async def clear(self) -> None:
        """Clear every backend; Redis first, so that when it cannot be reached (503) nothing was cleared."""
        backends = {id(b): b for b in self.backends.values()}.values()
        for backend in sorted(backends, key=lambda b: b.backend != "redis"):
            await backend.clear()

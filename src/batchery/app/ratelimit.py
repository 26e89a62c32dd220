"""Rate limits, as pure ASGI middleware: a token bucket per API key, or per client address without auth.

Over the limit: 429 with `Retry-After`. Every limited response carries `X-RateLimit-Limit` (the bucket size),
`X-RateLimit-Remaining` (whole requests left now) and `X-RateLimit-Reset` (seconds until the bucket is full).
The in-process backend is here; the Redis backend, shared by replicas, is in ratelimit_redis.py.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchery import protocols
from batchery.app.scope import CLIENT
from batchery.errors import BatcheryError
from batchery.metrics import Metrics

#: Buckets kept by the in-process backend; the least recently seen go first (a full bucket loses nothing).
MAX_CLIENTS = 100_000


class RateLimited(BatcheryError):
    """The caller used up its request budget; it may retry after `retry_after` seconds."""

    status = 429
    code = "rate_limited"


@dataclass(slots=True)
class Decision:
    """One bucket's answer: whether this request may pass and what is left."""

    allowed: bool
    tokens: float
    burst: int
    rate: float

    @property
    def retry_after(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def headers(self) -> list[tuple[bytes, bytes]]:
        reset = math.ceil(max(0.0, (self.burst - self.tokens) / self.rate))
        return [
            (b"x-ratelimit-limit", str(self.burst).encode()),
            (b"x-ratelimit-remaining", str(max(0, math.floor(self.tokens))).encode()),
            (b"x-ratelimit-reset", str(reset).encode()),
        ]


class Limiter(Protocol):
    """A rate limit backend: take one token from `client`'s bucket."""

    rate: float
    burst: int

    async def take(self, client: str) -> Decision: ...


class TokenBuckets:
    """In-process token buckets: exact within one process; each replica counts on its own."""

    def __init__(self, rate: float, burst: int, *, max_clients: int = MAX_CLIENTS) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # client -> [tokens, updated at]

    async def take(self, client: str) -> Decision:
        return self.take_now(client)

    def take_now(self, client: str, now: float | None = None) -> Decision:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = [float(self.burst), now]
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        allowed = bucket[0] >= 1.0
        if allowed:
            bucket[0] -= 1.0
        return Decision(allowed, bucket[0], self.burst, self.rate)


class RateLimit:
    """Take a token per request (outside `exempt_paths`); refuse with 429 when the bucket is empty."""

    def __init__(
        self, app: ASGIApp, *, limiter: Limiter, exempt_paths: Iterable[str], metrics: Metrics | None = None
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.exempt_paths = frozenset(exempt_paths)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        client = scope.get(CLIENT)
        if client is None:
            address = scope.get("client")
            client = address[0] if address else "unknown"
        decision = await self.limiter.take(client)
        extra = decision.headers()
        if not decision.allowed:
            if self.metrics is not None:
                self.metrics.rejected("", "rate_limited", 1)
            error = RateLimited(
                f"rate limit of {decision.rate:g} requests/s (bursts of {decision.burst}) reached; "
                "retry after the Retry-After delay, or ask the operator for a higher limit",
                retry_after=decision.retry_after,
            )
            response = protocols.error_response(scope["path"], error)
            response.headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
            response.raw_headers.extend(extra)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

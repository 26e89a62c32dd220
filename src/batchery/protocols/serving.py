"""What the OpenAI, KServe V2 and streaming adapters do around an engine call, as the native one does.

The request's deadline (`X-Request-Timeout-Ms`, capped by `request_timeout_ms`), its priority (`X-Priority`)
and its client (API key id, else peer address) go to the engine; responses are cached per model when
`settings.cache` says so, keyed by protocol, model, version and the request's own bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.types import Scope

from batchery.app.deadline import infer_until, request_deadline, request_priority
from batchery.app.scope import CLIENT, MODEL
from batchery.cache import cache_key
from batchery.config import Settings
from batchery.engine import Engine, ModelHandle


class Serving:
    """One per adapter: `infer` with the request's deadline, priority and client; `cached` bodies."""

    def __init__(self, engine: Engine, settings: Settings, protocol: str) -> None:
        self.engine = engine
        self.protocol = protocol
        self.timeout = settings.request_timeout_ms / 1000.0
        self.caching = bool(settings.cache)

    def deadline(self, request: Request) -> float | None:
        return request_deadline(request.scope, self.timeout)

    async def infer(self, request: Request, handle: ModelHandle, inputs: Sequence[Any]) -> tuple[list[Any], str]:
        """Outputs and the version that computed them; DeadlineExceeded (504) once the deadline passes."""
        scope = request.scope
        scope[MODEL] = handle.name  # adapters that read the model from the body tell metrics and access logs
        client = scope.get(CLIENT) or _client_address(scope)
        deadline = request_deadline(scope, self.timeout)
        return await infer_until(self.engine, handle, inputs, deadline, client=client, priority=request_priority(scope))

    async def cached(
        self, request: Request, handle: ModelHandle, canonical: bytes, compute: Callable[[], Awaitable[bytes]]
    ) -> tuple[bytes, str | None]:
        """The response bytes for `canonical` (the request's cacheable content) and "hit", "miss" or None (off)."""
        responses = getattr(request.app.state, "responses", None)
        if not self.caching or responses is None or not responses.enabled(handle.name):
            return await compute(), None
        key = cache_key(self.protocol, handle.name, handle.version, canonical)
        body, hit = await responses.get_or_compute(handle.name, key, compute)
        return body, "hit" if hit else "miss"


def _client_address(scope: Scope) -> str:
    peer = scope.get("client")
    return str(peer[0]) if peer else ""

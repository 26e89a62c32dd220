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
from batchery.app.scope import CLIENT, COMPUTED_VERSION, MODEL
from batchery.cache import ResponseCache, cache_key
from batchery.config import Settings
from batchery.engine import Engine, ModelHandle
from batchery.errors import BatcheryError, PayloadTooLarge
from batchery.metrics import model_label


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
        client = requesting_client(scope)
        deadline = request_deadline(scope, self.timeout)
        outputs, version = await infer_until(
            self.engine, handle, inputs, deadline, client=client, priority=request_priority(scope)
        )
        scope[COMPUTED_VERSION] = version
        return outputs, version

    async def cached(
        self,
        request: Request,
        handle: ModelHandle,
        canonical: bytes | Callable[[], bytes],
        compute: Callable[[], Awaitable[bytes]],
    ) -> tuple[bytes, str | None, str]:
        """The response bytes for `canonical` (the request's cacheable content, or a function making it, called
        only when caching is on), "hit", "miss" or None (caching is off), and the model version that made them (a
        shared computation's may differ from the one asked for)."""
        scope = request.scope
        scope[MODEL] = handle.name  # a hit computes nothing, and metrics and access logs still name the model
        responses = getattr(request.app.state, "responses", None)
        requested = handle.version
        if not self.caching or responses is None or not responses.enabled(handle.name):
            body = await compute()
            return body, None, scope.get(COMPUTED_VERSION, requested)

        async def versioned() -> tuple[bytes, str]:
            body = await compute()
            return body, scope.get(COMPUTED_VERSION, requested)

        key = canonical() if callable(canonical) else canonical
        body, hit, version = await cached(responses, self.protocol, handle, key, versioned, self.deadline(request))
        return body, "hit" if hit else "miss", version


async def cached(
    responses: ResponseCache,
    protocol: str,
    handle: ModelHandle,
    canonical: bytes,
    compute: Callable[[], Awaitable[tuple[bytes, str]]],
    deadline: float | None,
) -> tuple[bytes, bool, str]:
    """The response for `canonical` from the cache or `compute` (body and the version that computed it): the body,
    whether it was a hit, and the version that made it.

    Entries are keyed by protocol, model, version (label and code fingerprint) and request. A response is stored
    under the version that computed it: a request queued before a hot reload and computed after it must not
    land under the old version's key, where a rollback would serve it.
    """
    requested = handle.version
    computed: list[str] = []

    async def body() -> bytes:
        made, version = await compute()
        computed.append(version)
        return version.encode() + _VERSION_END + made  # stored and shared with the version that made it

    def key(version: str) -> str:
        return cache_key(protocol, handle.name, handle.cache_tag(version), canonical)

    entry, hit = await responses.get_or_compute(
        handle.name, key(requested), body, deadline=deadline, store_key=lambda: key(computed[0])
    )
    version, _, made = entry.partition(_VERSION_END)
    return made, hit, version.decode()


#: Ends the version label in front of each cached body, so a hit, or a request that shared another's computation,
#: names the version that computed its answer, even when a swap came between.
_VERSION_END = b"\0"


def requesting_client(scope: Scope) -> str:
    """Who a request counts as for fair sharing: its API key's id (set by the auth middleware), else the peer's
    address."""
    client = scope.get(CLIENT)
    if client:
        return str(client)
    peer = scope.get("client")
    return str(peer[0]) if peer else ""


def count_refusal(request: Request, error: BatcheryError, engine: Engine) -> None:
    """Count a 413 that an adapter answers itself in `batchery_rejected_total{reason="too_large"}`, as the app's
    handler counts the native route's (app/failures.py)."""
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None and error.code == PayloadTooLarge.code:
        name = request.path_params.get("name") or request.scope.get(MODEL) or ""
        metrics.rejected(model_label(engine, name), "too_large", 1)

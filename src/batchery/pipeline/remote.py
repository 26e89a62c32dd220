"""One shared, pooled HTTP client for async stages that call remote services.

Connection limits are bounded; idempotent calls are retried with exponential backoff on connection errors and
5xx answers. `timeout` bounds the whole call in wall time, retries, backoff and a remote that trickles its answer
included, and so does the request's deadline (`deadline_scope`, set by the pipeline). A remote that keeps
failing is a 502 for that request, one that does not answer in time a 504; neither blocks other requests, since
the call awaits on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from batchery.errors import RemoteError, RemoteTimeout

if TYPE_CHECKING:
    import httpx

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

#: The deadline (monotonic seconds) of the request whose async steps are running, if it has one.
_deadline: ContextVar[float | None] = ContextVar("batchery_remote_deadline", default=None)


@contextlib.contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Remote calls started inside (and in tasks created inside) end by `deadline` at the latest."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


class RemoteClient:
    """Wraps an `httpx.AsyncClient` created on first use (on the serving loop) and closed by `aclose`."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        max_connections: int = 100,
        retries: int = 2,
        backoff: float = 0.05,
    ) -> None:
        if timeout <= 0 or connect_timeout <= 0 or max_connections < 1 or retries < 0 or backoff < 0:
            raise ValueError("timeouts must be > 0, max_connections >= 1, retries and backoff >= 0")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.retries = retries
        self.backoff = backoff
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            try:
                import httpx
            except ImportError as exc:
                raise ImportError("async remote stages need httpx: pip install 'batchery[remote]'") from exc
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
                limits=httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=20),
            )
        return self._client

    async def request(self, method: str, url: str, *, idempotent: bool | None = None, **kwargs: Any) -> httpx.Response:
        """Send one request; retry idempotent ones (GET, PUT, ... or `idempotent=True`) on errors and 5xx.

        Raise RemoteTimeout (504) when the remote has not answered, body included, within `timeout` seconds of
        the call (or by the request's deadline, if sooner): attempts and backoff share that budget. Raise
        RemoteError (502) when it keeps failing or answers 5xx; a 4xx answer is returned to the caller to judge.
        """
        import httpx

        method = method.upper()
        attempts = 1 + (self.retries if (idempotent if idempotent is not None else method in IDEMPOTENT) else 0)
        client = self.client
        started = time.monotonic()
        deadline = _deadline.get()
        ends = started + self.timeout if deadline is None else min(started + self.timeout, deadline)
        for attempt in range(attempts):
            failure: RemoteError | RemoteTimeout
            try:
                async with asyncio.timeout(ends - time.monotonic()):
                    response = await client.request(method, url, **kwargs)
            except TimeoutError as exc:  # the whole budget is spent
                raise self._timed_out(url, started, deadline) from exc
            except httpx.TimeoutException as exc:  # one phase (connect, a free pooled connection): try again
                failure = RemoteTimeout(f"the remote service at {url} timed out ({type(exc).__name__})")
                failure.__cause__ = exc
            except httpx.TransportError as exc:
                failure = RemoteError(f"the remote service at {url} could not be reached: {exc!r}")
                failure.__cause__ = exc
            else:
                if response.status_code < 500:
                    return response
                failure = RemoteError(
                    f"the remote service at {url} answered {response.status_code} after {attempt + 1} attempt(s)"
                )
            pause = self.backoff * 2**attempt
            if attempt == attempts - 1 or time.monotonic() + pause >= ends:  # no attempt, or no time, left
                raise failure
            await asyncio.sleep(pause)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _timed_out(self, url: str, started: float, deadline: float | None) -> RemoteTimeout:
        waited = time.monotonic() - started
        if deadline is not None and deadline < started + self.timeout:
            return RemoteTimeout(f"the request's deadline passed after {waited:.2g}s waiting for {url}")
        return RemoteTimeout(
            f"the remote service at {url} did not answer within {self.timeout:g}s (waited {waited:.2g}s); retry later"
        )

    async def get_json(self, url: str, **kwargs: Any) -> Any:
        """GET `url` and decode its JSON body; a non-JSON or 4xx answer is a RemoteError."""
        return _json(await self.request("GET", url, **kwargs), url)

    async def post_json(self, url: str, body: Any, *, idempotent: bool = False, **kwargs: Any) -> Any:
        """POST `body` as JSON and decode the JSON answer; retried only when `idempotent`."""
        return _json(await self.request("POST", url, json=body, idempotent=idempotent, **kwargs), url)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _json(response: httpx.Response, url: str) -> Any:
    if response.status_code >= 400:
        raise RemoteError(f"the remote service at {url} answered {response.status_code}: {response.text[:200]}")
    try:
        return response.json()
    except ValueError as exc:
        raise RemoteError(f"the remote service at {url} answered with a body that is not JSON") from exc

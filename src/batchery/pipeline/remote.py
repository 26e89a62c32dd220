"""One shared, pooled HTTP client for async stages that call remote services.

Connection limits and timeouts are bounded; idempotent calls are retried with exponential backoff on
connection errors and 5xx answers. A remote that keeps failing is a 502 for that request, one that does not
answer in time a 504; neither blocks other requests, since the call awaits on the event loop.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from batchery.errors import RemoteError, RemoteTimeout

if TYPE_CHECKING:
    import httpx

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


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

        Raise RemoteTimeout (504) when the remote does not answer in time, RemoteError (502) when it keeps
        failing or answers 5xx; a 4xx answer is returned to the caller to judge.
        """
        import httpx

        method = method.upper()
        attempts = 1 + (self.retries if (idempotent if idempotent is not None else method in IDEMPOTENT) else 0)
        client = self.client
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await client.request(method, url, **kwargs)
            except httpx.TimeoutException as exc:
                if last:
                    raise RemoteTimeout(
                        f"the remote service at {url} did not answer within {self.timeout:g}s; retry later"
                    ) from exc
            except httpx.TransportError as exc:
                if last:
                    raise RemoteError(f"the remote service at {url} could not be reached: {exc!r}") from exc
            else:
                if response.status_code < 500:
                    return response
                if last:
                    raise RemoteError(
                        f"the remote service at {url} answered {response.status_code} after {attempts} attempt(s)"
                    )
            await asyncio.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

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

"""Behind a reverse proxy: the client address from `X-Forwarded-For`, trusted only from configured proxies, and an
optional client allowlist. Pure ASGI middleware, outermost, so rate limits, logs and metrics see the real client.

`X-Forwarded-For` is read right to left, skipping trusted proxies: the first address that is not one is the client
(the leftmost entries could have been written by anyone). A request from a peer that is not a trusted proxy keeps
its peer address, whatever headers it sends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from batchery.config import Settings
from batchery.errors import BatcheryError, ConfigError
from batchery.protocols.responses import error_response

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Liveness and readiness probes, batchery's and KServe V2's: never behind allow-lists (Kubernetes probes come
#: from the node, which an allowlist of clients would not name), API keys or rate limits.
PROBES = frozenset({"/health", "/ready", "/v2/health/live", "/v2/health/ready"})


class ClientNotAllowed(BatcheryError):
    """The client address is not in the configured allowlist."""

    status = 403
    code = "client_not_allowed"


def networks(spec: str, setting: str) -> tuple[Network, ...]:
    """Parse a comma-separated list of addresses and CIDR blocks; ConfigError naming `setting` if one is bad."""
    found = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            found.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ConfigError(f"{setting}: {part!r} is not an IP address or CIDR block such as 10.0.0.0/8") from exc
    return tuple(found)


def _within(address: str, blocks: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in block for block in blocks)


class ProxyHeaders:
    """Set `scope["client"]` from `X-Forwarded-For` when the peer is trusted; refuse clients outside `allow`."""

    def __init__(self, app: ASGIApp, *, trusted: tuple[Network, ...], allow: tuple[Network, ...] = ()) -> None:
        self.app = app
        self.trusted = trusted
        self.allow = allow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        if peer and self.trusted and _within(peer[0], self.trusted):
            client = self.client_from(scope["headers"], peer[0])
            if client != peer[0]:
                scope["client"] = (client, 0)
        if self.allow and scope["path"] not in PROBES:
            address = scope["client"][0] if scope.get("client") else ""
            if not _within(address, self.allow):
                error = ClientNotAllowed(
                    f"client {address or 'unknown'} is not allowed here; ask the operator to add it to "
                    "BATCHERY_ALLOW_CLIENTS"
                )
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def client_from(self, headers: Iterable[tuple[bytes, bytes]], peer: str) -> str:
        """The rightmost X-Forwarded-For address that is not a trusted proxy (`peer` when there is none)."""
        hops: list[str] = []
        for name, value in headers:
            if name == b"x-forwarded-for":  # several headers count as one comma-separated list, in order
                hops += [hop.strip() for hop in value.decode("latin-1").split(",")]
        client = peer
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:  # "unknown", a port or garbage: nothing left of it can be trusted
                break
            client = hop
            if not _within(hop, self.trusted):
                break
        return client


def install(app: Starlette, settings: Settings) -> None:
    """Add `ProxyHeaders` to `app`, outermost, when trusted proxies or an allowlist are configured."""
    trusted = networks(settings.trusted_proxies, "trusted_proxies")
    allow = networks(settings.allow_clients, "allow_clients")
    if trusted or allow:
        app.add_middleware(ProxyHeaders, trusted=trusted, allow=allow)

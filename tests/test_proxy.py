"""ProxyHeaders: X-Forwarded-For believed only from trusted proxies, read right to left; the client allowlist."""

from __future__ import annotations

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from batchery.app.proxy import ProxyHeaders, networks
from batchery.errors import ConfigError
from batchery.protocols.responses import json_response

PROXY = "10.0.0.5"


async def client_echo(scope: Scope, receive: Receive, send: Send) -> None:
    await json_response(scope["client"][0].encode().join([b'"', b'"']))(scope, receive, send)


async def seen_by_app(peer: str, xff: list[str] | None = None, *, allow: str = "", path: str = "/x") -> httpx.Response:
    app = ProxyHeaders(client_echo, trusted=networks("10.0.0.0/24", "trusted_proxies"), allow=networks(allow, "a"))
    transport = httpx.ASGITransport(app=app, client=(peer, 1234))
    headers = [("x-forwarded-for", value) for value in (xff or [])]
    async with httpx.AsyncClient(transport=transport, base_url="http://batchery") as http:
        return await http.get(path, headers=headers)


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        (PROXY, ["203.0.113.7"], "203.0.113.7"),
        (PROXY, ["198.51.100.1, 203.0.113.7"], "203.0.113.7"),  # the left entry was written by the client: ignored
        (PROXY, ["203.0.113.7, 10.0.0.9"], "203.0.113.7"),  # a chain of trusted proxies is skipped
        (PROXY, ["198.51.100.1", "203.0.113.7"], "203.0.113.7"),  # two headers read as one list
        (PROXY, ["not-an-ip"], PROXY),
        (PROXY, [], PROXY),
        ("192.0.2.50", ["203.0.113.7"], "192.0.2.50"),  # not a trusted proxy: its header is not believed
    ],
)
async def test_client_address(peer: str, xff: list[str], client: str) -> None:
    assert (await seen_by_app(peer, xff)).json() == client


async def test_allowlist_refuses_other_clients_with_a_clear_403() -> None:
    assert (await seen_by_app(PROXY, ["203.0.113.7"], allow="203.0.113.0/24")).status_code == 200
    refused = await seen_by_app(PROXY, ["198.51.100.1"], allow="203.0.113.0/24")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "client_not_allowed"
    assert "BATCHERY_ALLOW_CLIENTS" in error["message"]
    spoofed = await seen_by_app("192.0.2.50", ["203.0.113.7"], allow="203.0.113.0/24")
    assert spoofed.status_code == 403, "a client that is not a proxy cannot claim an allowed address"
    probe = await seen_by_app("192.0.2.50", allow="203.0.113.0/24", path="/ready")
    assert probe.status_code == 200, "probes stay open"


def test_bad_networks_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"trusted_proxies: 'ten\.0\.0\.1'"):
        networks("10.0.0.1, ten.0.0.1", "trusted_proxies")
    assert len(networks(" 10.0.0.1 , ::1, 192.168.0.0/16 ,", "x")) == 3

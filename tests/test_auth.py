"""API keys over real HTTP: both header forms, 401 vs 403, open probes, /metrics, the admin key, bad headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from batchery.app.auth import ApiKeys
from batchery.config import Settings
from batchery.errors import ConfigError
from batchery.testing import EchoModel, running_server

PREDICT = "/v1/models/echo/predict"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    settings = {"api_keys": "alpha, beta", "admin_api_key": "root"}
    async with running_server([EchoModel()], **settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


async def test_a_valid_key_in_either_header_is_accepted(http: httpx.AsyncClient) -> None:
    for headers in ({"Authorization": "Bearer alpha"}, {"authorization": "bearer beta"}, {"X-API-Key": "alpha"}):
        response = await http.post(PREDICT, json={"input": 1}, headers=headers)
        assert response.status_code == 200, headers
    assert (await http.post(PREDICT, json={"input": 1}, headers={"X-API-Key": "root"})).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic YWxwaGE6"}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Bearer alpha beta"}, 403),
        ({"X-API-Key": ""}, 401),
        ({"X-API-Key": "a" * 5000}, 401),
        ({"Authorization": "Bearer gamma"}, 403),
        ({"X-API-Key": "alph"}, 403),
        ({"X-API-Key": b"\xff\xfe"}, 403),
    ],
)
async def test_missing_malformed_and_wrong_keys(http: httpx.AsyncClient, headers: dict[str, str], status: int) -> None:
    response = await http.post(PREDICT, json={"input": 1}, headers=headers)
    assert response.status_code == status
    if status != 200:
        assert response.json()["error"]["code"] == {401: "unauthorized", 403: "forbidden"}[status]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_probes_and_metrics_are_open_but_nothing_else(http: httpx.AsyncClient) -> None:
    assert (await http.get("/health")).status_code == 200
    assert (await http.get("/ready")).status_code == 200
    assert (await http.get("/metrics")).status_code == 200
    assert (await http.get("/v1/models")).status_code == 401
    assert (await http.get("/docs")).status_code == 401


async def test_admin_routes_need_the_admin_key(http: httpx.AsyncClient) -> None:
    assert (await http.post("/admin/cache/clear")).status_code == 401
    assert (await http.post("/admin/cache/clear", headers={"X-API-Key": "alpha"})).status_code == 403
    assert (await http.post("/admin/cache/clear", headers={"X-API-Key": "nope"})).status_code == 403
    assert (await http.post("/admin/cache/clear", headers={"X-API-Key": "root"})).status_code == 200


async def test_the_admin_key_listed_among_the_user_keys_still_opens_admin_routes() -> None:
    settings = {"api_keys": "alpha, root", "admin_api_key": "root"}
    async with running_server([EchoModel()], **settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.post("/admin/cache/clear", headers={"X-API-Key": "root"})).status_code == 200
        assert (await http.post("/admin/cache/clear", headers={"X-API-Key": "alpha"})).status_code == 403
        assert (await http.post(PREDICT, json={"input": 1}, headers={"X-API-Key": "root"})).status_code == 200


async def test_without_an_admin_key_admin_routes_are_refused_even_with_auth_off() -> None:
    async with running_server([EchoModel()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.post(PREDICT, json={"input": 1})).status_code == 200  # auth is off by default
        response = await http.post("/admin/cache/clear")
        assert response.status_code == 403
        assert "BATCHERY_ADMIN_API_KEY" in response.json()["error"]["message"]


async def test_metrics_can_require_a_key_and_keys_come_from_a_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# one key per line\nfrom-file\n\n")
    settings = {"api_keys_file": str(keys), "metrics": "auth"}
    async with running_server([EchoModel()], **settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers={"X-API-Key": "from-file"})).status_code == 200
        assert (await http.post(PREDICT, json={"input": 1}, headers={"X-API-Key": "from-file"})).status_code == 200


def test_keys_come_from_the_environment_and_never_reach_repr(tmp_path: Path) -> None:
    settings = Settings.load(env={"BATCHERY_API_KEYS": "s3cret,other", "BATCHERY_ADMIN_API_KEY": "adm1n"})
    keys = ApiKeys.from_settings(settings)
    assert keys.check(b"s3cret") is not None
    assert keys.check(b"adm1n") is not None
    assert keys.check(b"adm1n")[0] == "admin"  # type: ignore[index]
    assert keys.check(b"s3cre") is None
    assert "s3cret" not in repr(settings)
    assert "adm1n" not in repr(settings)
    with pytest.raises(ConfigError, match="cannot read api_keys_file"):
        ApiKeys.from_settings(Settings(api_keys_file=str(tmp_path / "missing")))

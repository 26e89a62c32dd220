"""The predict fast path answers exactly what the app's own route answers, for good and bad requests."""

from __future__ import annotations

import httpx
import pytest
from starlette.testclient import TestClient

from batchery.app.factory import create_app
from batchery.config import Settings
from batchery.engine import Engine
from batchery.testing import EchoModel, running_server

REQUESTS = [
    ("/v1/models/echo/predict", b'{"input": {"a": 1}}', {}),
    ("/v1/models/echo/predict", b'{"inputs": [1, 2, 3]}', {}),
    ("/v1/models/echo/predict", b"{oops", {}),
    ("/v1/models/echo/predict", b'{"inputs": []}', {}),
    ("/v1/models/missing/predict", b'{"input": 1}', {}),
    ("/v1/models/echo/predict", b'{"input": 1}', {"X-Priority": "high"}),
    ("/v1/models/echo/predict", b'{"input": 1}', {"X-Request-Timeout-Ms": "-5"}),
]


def comparable(status: int, headers: httpx.Headers, body: bytes) -> tuple[int, str, bytes, str]:
    return status, headers.get("content-type", ""), body, headers.get("x-model-version", "")


@pytest.fixture(scope="module")
def through_the_app() -> list[tuple[int, str, bytes, str]]:
    app = create_app(Engine([EchoModel()]), Settings(port=0))
    with TestClient(app) as client:
        client.get("/ready")
        while client.get("/ready").status_code != 200:
            pass
        return [
            comparable(r.status_code, r.headers, r.content)
            for r in (client.post(path, content=body, headers=headers) for path, body, headers in REQUESTS)
        ]


async def test_fast_path_and_app_route_agree(through_the_app: list[tuple[int, str, bytes, str]]) -> None:
    async with running_server([EchoModel()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        fast = []
        for path, body, headers in REQUESTS:
            response = await http.post(path, content=body, headers=headers)
            fast.append(comparable(response.status_code, response.headers, response.content))
    assert fast == through_the_app
    assert [status for status, *_ in fast] == [200, 200, 400, 422, 404, 400, 400]

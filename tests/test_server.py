"""The native protocol over real sockets: routes, bad input, faults, and 1,000 concurrent requests."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
from typing import Any, ClassVar

import httpx
import orjson
import pytest

from batchery._http_client import post_many
from batchery.config import Settings
from batchery.errors import ConfigError
from batchery.server import Server, bind
from batchery.testing import EchoModel, FailingModel, SleepModel, WrongCountModel, running_server


@pytest.fixture
async def client() -> httpx.AsyncClient:  # type: ignore[misc]
    models = [EchoModel(), FailingModel(), WrongCountModel()]
    async with running_server(models) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        http.server = server  # type: ignore[attr-defined]
        yield http


async def test_probes_and_model_list(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).status_code == 200
    models = (await client.get("/v1/models")).json()["models"]
    assert {m["name"] for m in models} == {"echo", "failing", "wrongcount"}
    echo = next(m for m in models if m["name"] == "echo")
    assert echo["status"] == "ready"
    assert echo["max_batch_size"] == 64
    assert echo["version"] == "1"


async def test_single_and_list_forms(client: httpx.AsyncClient) -> None:
    one = await client.post("/v1/models/echo/predict", json={"input": {"x": 1}})
    assert one.status_code == 200
    assert one.json() == {"model": "echo", "version": "1", "output": {"x": 1}}
    assert one.headers["x-model-version"] == "1"
    many = await client.post("/v1/models/echo/predict", json={"inputs": [1, "two", [3]]})
    assert many.json()["outputs"] == [1, "two", [3]]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"wrong": 1}', 400, '"input" or an "inputs"'),
        (b'{"inputs": 5}', 422, "must be a list"),
        (b'{"inputs": []}', 422, "empty"),
        (b"", 400, "not valid JSON"),
        (b'{"input": "a", "inputs": ["b"]}', 400, 'both "input" and "inputs"; send one'),
        (b'{"inputs": ["b"], "input": null}', 400, 'both "input" and "inputs"; send one'),
    ],
)
async def test_bad_bodies_get_a_clear_4xx(client: httpx.AsyncClient, body: bytes, status: int, says: str) -> None:
    response = await client.post("/v1/models/echo/predict", content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert says in error["message"]
    assert error["code"]


async def test_too_many_items_and_too_large_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/models/echo/predict", json={"inputs": list(range(257))})
    assert response.status_code == 413
    assert "limit is 256" in response.json()["error"]["message"]
    huge = b'{"input": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    response = await client.post("/v1/models/echo/predict", content=huge)
    assert response.status_code == 413
    assert (await client.post("/v1/models/echo/predict", json={"input": 1})).status_code == 200


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/models/nope/predict", json={"input": 1})
    assert response.status_code == 404
    assert "echo" in response.json()["error"]["message"]


async def test_a_failing_predict_fails_only_its_batch_and_the_server_keeps_serving(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/models/failing/predict", json={"input": "fail"})
    assert response.status_code == 500
    assert "asked to fail" in response.json()["error"]["message"]
    for _ in range(3):
        ok = await client.post("/v1/models/failing/predict", json={"input": "fine"})
        assert ok.status_code == 200
        assert ok.json()["output"] == "fine"


async def test_wrong_output_count_is_reported(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/models/wrongcount/predict", json={"inputs": [1, 2, 3]})
    assert response.status_code == 500
    message = response.json()["error"]["message"]
    assert "returned 2 outputs for a batch of 3" in message
    assert "Hint" in message


async def test_openapi_docs_list_the_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/models/{name}/predict" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200


async def test_thousand_concurrent_requests_each_get_their_own_result() -> None:
    echo = EchoModel()
    async with running_server([echo], workers=2) as server:
        payloads = [{"id": i, "text": f"request {i}"} for i in range(1000)]
        bodies = [orjson.dumps({"input": p}) for p in payloads]
        responses = await post_many(server.url, "/v1/models/echo/predict", bodies, connections=1000)
    assert len(responses) == 1000
    for payload, response in zip(payloads, responses, strict=True):
        assert response.status == 200, response.body
        assert orjson.loads(response.body)["output"] == payload
    sizes = [size for lane in server.engine.handle("echo").lanes for size in lane.model.batch_sizes]
    assert sum(sizes) >= 1000
    assert max(sizes) > 1, "no batch of more than one request formed"


async def test_queue_full_gives_503_with_retry_after() -> None:
    slow = SleepModel(0.3)
    slow.workers = 1
    slow.max_batch_size = 1
    slow.max_queue_per_worker = 1
    async with running_server([slow]) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        responses = await asyncio.gather(*(http.post("/v1/models/sleep/predict", json={"input": i}) for i in range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses
    refused = [r for r in responses if r.status_code == 503]
    assert refused, statuses
    assert refused[0].headers["retry-after"] == "1"
    assert refused[0].json()["error"]["code"] == "overloaded"


class SleepsItsInput(SleepModel):
    """Sleeps as many seconds as its (only) input says."""

    name = "sleeps"
    example = 0.0
    workers = 1
    max_batch_size = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(float(batch[0]))
        return list(batch)


async def test_a_queue_waiting_past_its_time_bound_gives_503_at_once() -> None:
    model = SleepsItsInput()
    model.max_queue_wait_ms = 200.0  # above eight batches of 20 ms
    url = "/v1/models/sleeps/predict"
    async with running_server([model]) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for _ in range(4):  # the bound holds once the batcher knows what a batch costs (here ~20 ms)
            assert (await http.post(url, json={"input": 0.02})).status_code == 200
        first = [asyncio.create_task(http.post(url, json={"input": seconds})) for seconds in (0.6, 0.02)]
        await asyncio.sleep(0.3)  # the second input has waited 0.3 s behind the first
        started = time.monotonic()
        refused = await http.post(url, json={"input": 0.02})
        waited = time.monotonic() - started
        assert [r.status_code for r in await asyncio.gather(*first)] == [200, 200]
        after = await http.post(url, json={"input": 0.02})  # the backlog is gone: admitted again
        listed = next(m for m in (await http.get("/v1/models")).json()["models"] if m["name"] == "sleeps")
    assert listed["max_queue_wait_ms"] == 200.0
    assert listed["queue_wait_bound_ms"] >= 200.0
    assert refused.status_code == 503, refused.text
    assert waited < 0.25, "refused only after waiting (queued, it would take >= 0.3 s), not at once"
    assert refused.headers["retry-after"] == "1"
    assert "have waited" in refused.json()["error"]["message"]
    assert after.status_code == 200


async def test_an_unexpected_error_is_a_json_500_and_logged(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server: Server = client.server  # type: ignore[attr-defined]

    def broken() -> Any:
        raise ValueError("listing bug")

    monkeypatch.setattr(server.engine, "models", broken)
    with caplog.at_level(logging.ERROR, logger="batchery.app"):
        response = await client.get("/v1/models")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {"code": "internal_error", "message": "internal error: ValueError('listing bug')"}
    }
    assert "x-request-id" in response.headers
    [record] = [r for r in caplog.records if r.name == "batchery.app"]
    assert record.getMessage() == "GET /v1/models failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)  # logged with its traceback
    monkeypatch.undo()
    assert (await client.get("/v1/models")).status_code == 200


class _Recorded(socket.socket):
    """A socket that remembers itself, to check that bind() closes what it opened."""

    made: ClassVar[list[socket.socket]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.made.append(self)


@pytest.mark.parametrize(
    ("host", "says"),
    [
        (
            "127.0.0.1",
            "cannot listen on 127.0.0.1:{port}: address already in use (another server running? pick --port)",
        ),
        ("999.1.1.1", "cannot listen on 999.1.1.1:{port}: the host does not resolve"),
    ],
)
def test_bind_refuses_with_a_config_error_and_closes_its_socket(
    host: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(_Recorded, "made", [])
        monkeypatch.setattr(socket, "socket", _Recorded)
        with pytest.raises(ConfigError) as caught:
            bind(host, port)
    assert caught.value.message.startswith(says.format(port=port))
    assert [sock.fileno() for sock in _Recorded.made] == [-1]  # made by bind() and closed again


def test_serve_on_a_taken_port_exits_2_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "batchery.cli", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"batchery: cannot listen on 127.0.0.1:{port}: address already in use " + (
        "(another server running? pick --port)\n"
    )


class _FailingMiddleware:
    """Raises before the app for one path, as a buggy outer middleware (auth, rate limit) would."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/boom"):
            raise RuntimeError("middleware bug")
        await self.app(scope, receive, send)


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/models/echo/boom", {"error": {"code": "internal_error", "message": "internal error: RuntimeError"}}),
        ("/v2/models/echo/boom", {"error": "internal error: RuntimeError"}),
    ],
)
async def test_an_error_in_an_outer_middleware_is_still_a_json_500(path: str, shape: dict[str, Any]) -> None:
    server = Server([EchoModel()], Settings.load({"port": 0, "log_level": "error"}))
    server.app.add_middleware(_FailingMiddleware)  # outside every middleware of the app
    task = asyncio.create_task(server.serve(bind("127.0.0.1", 0)))
    try:
        await server.started.wait()
        await server.app.state.loading
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.get(path)
            after = await http.post("/v1/models/echo/predict", json={"input": 1})
    finally:
        server.stop()
        await task
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    message = body["error"]["message"] if isinstance(body["error"], dict) else body["error"]
    expected = shape["error"]["message"] if isinstance(shape["error"], dict) else shape["error"]
    assert message.startswith(expected), body
    assert after.status_code == 200

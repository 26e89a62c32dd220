"""Pipelines: stages with their own batchers, fan-out/fan-in, async remote steps, over the engine and HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from batchery import Engine, Model
from batchery.errors import ConfigError, ModelNotFound, RemoteError
from batchery.pipeline import AsyncStep, Pipeline, RemoteClient, Sequential, fan_out
from batchery.server import bind
from batchery.spec import ModelSpec, Served
from batchery.testing import running_server


class Double(Model):
    name = "double"
    workers = 1

    def decode_request(self, item: Any) -> Any:
        if not isinstance(item, int):
            raise TypeError(f"expected an integer, got {type(item).__name__}")
        return item

    def predict(self, batch: list[Any]) -> list[Any]:
        return [x * 2 for x in batch]


class Tag(Model):
    name = "tag"
    workers = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        return [f"#{x}" for x in batch]


class Upper(Model):
    """Upper-cases words; holds its batch while `gate` is closed and records every batch it saw."""

    name = "upper"
    workers = 1
    max_batch_size = 64

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[list[str]] = []

    def __deepcopy__(self, memo: dict[int, Any]) -> Upper:
        return self  # one worker: the test reads the lane's own instance

    def predict(self, batch: list[Any]) -> list[Any]:
        self.entered.set()
        self.gate.wait()
        self.batches.append(list(batch))
        return [word.upper() for word in batch]


class Words(Pipeline):
    """Fan-out: a sentence becomes its words, upper-cased by one stage; fan-in: the words joined back."""

    name = "words"

    def __init__(self) -> None:
        self.upper = Upper()

    def stages(self) -> list[Any]:
        return [self.upper]

    def decode_request(self, item: Any) -> Any:
        if not isinstance(item, str):
            raise TypeError("expected a sentence")
        return item.split()

    async def run(self, engine: Engine, payloads: list[Any], deadline: float | None) -> list[Any]:
        groups = await fan_out(engine, "upper", payloads, deadline)
        return [" ".join(words) for words in groups]


async def test_sequential_stages_without_http() -> None:
    engine = Engine([Sequential("double_tag", [Double(), Tag()])])
    await engine.start()
    try:
        assert await engine.infer("double_tag", [1, 2, 3]) == ["#2", "#4", "#6"]
        assert await engine.infer("double", [5]) == [10]  # each stage is also a model of its own
        infos = {info.name: info for info in engine.models()}
        assert set(infos) == {"double", "tag", "double_tag"}
        assert infos["double_tag"].status == "ready"
        assert infos["double_tag"].batching == "pipeline: double -> tag"
    finally:
        await engine.stop()


async def test_fan_out_batches_mix_children_of_several_requests() -> None:
    pipeline = Words()
    engine = Engine([pipeline])
    await engine.start()
    try:
        upper = pipeline.upper
        upper.gate.clear()
        upper.entered.clear()
        blocker = asyncio.create_task(engine.infer("words", ["hold"]))
        await asyncio.to_thread(upper.entered.wait)  # the lone worker is now busy with "hold"
        first = asyncio.create_task(engine.infer("words", ["a b c"]))
        second = asyncio.create_task(engine.infer("words", ["d e", ""]))
        await asyncio.sleep(0)  # both tasks run up to their first wait: their children are queued
        assert engine.handles["upper"].batcher.queued == 5
        upper.gate.set()
        assert await first == ["A B C"]
        assert await second == ["D E", ""]
        assert await blocker == ["HOLD"]
        assert ["a", "b", "c", "d", "e"] in upper.batches  # one batch held children of both requests
    finally:
        await engine.stop()


def test_pipeline_names_must_not_clash() -> None:
    with pytest.raises(ConfigError, match="both named"):
        Engine([Sequential("double", [Double()])])
    with pytest.raises(ConfigError, match="no steps"):
        Sequential("empty", [])


async def test_pipeline_over_http() -> None:
    async with (
        running_server([Sequential("double_tag", [Double(), Tag()])]) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        one = await http.post("/v1/models/double_tag/predict", json={"input": 4})
        assert one.status_code == 200
        assert one.json() == {"model": "double_tag", "version": "1", "output": "#8"}
        many = await http.post("/v1/models/double_tag/predict", json={"inputs": [1, 2]})
        assert many.json()["outputs"] == ["#2", "#4"]
        bad = await http.post("/v1/models/double_tag/predict", json={"input": "x"})
        assert bad.status_code == 422
        assert "expected an integer" in bad.json()["error"]["message"]
        stage = await http.post("/v1/models/double/predict", json={"input": 4})  # a stage, on the native route
        assert stage.json()["output"] == 8
        names = {m["name"] for m in (await http.get("/v1/models")).json()["models"]}
        assert names == {"double", "tag", "double_tag"}


class Remote:
    """A small remote service on a real socket: /ok answers, /hang waits for `release`, /fail answers 500."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.hanging = asyncio.Event()
        self.fail_hits = 0
        self.url = ""

    async def ok(self, request: Request) -> Response:
        return JSONResponse({"value": int(request.query_params["x"]) + 1})

    async def hang(self, request: Request) -> Response:
        self.hanging.set()
        await self.release.wait()
        return JSONResponse({"value": int(request.query_params["x"])})

    async def fail(self, request: Request) -> Response:
        self.fail_hits += 1
        return JSONResponse({"detail": "boom"}, status_code=500)

    async def drip(self, request: Request) -> Response:
        """Answers at once, then trickles its body a byte every 0.1 s: no single read ever times out."""

        async def trickle() -> AsyncIterator[bytes]:
            for _ in range(600):
                await asyncio.sleep(0.1)
                yield b" "

        return StreamingResponse(trickle(), media_type="application/json")


@pytest.fixture
async def remote() -> AsyncIterator[Remote]:
    service = Remote()
    app = Starlette(
        routes=[Route(f"/{n}", getattr(service, n), methods=["GET", "POST"]) for n in ("ok", "hang", "fail", "drip")]
    )
    sock = bind("127.0.0.1", 0)  # listening already: requests wait in the backlog until uvicorn accepts
    service.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield service
    finally:
        service.release.set()
        server.should_exit = True
        await task


def _caller(path: str) -> Any:
    async def call(value: Any, remote: RemoteClient) -> Any:
        body = await remote.get_json(f"{_caller.base}/{path}", params={"x": value})  # type: ignore[attr-defined]
        return body["value"]

    return call


async def test_async_remote_steps(remote: Remote) -> None:
    _caller.base = remote.url  # type: ignore[attr-defined]
    pipelines = [
        Sequential("enrich", [Double(), AsyncStep(_caller("ok")), Tag()]),
        Sequential("waits", [AsyncStep(_caller("hang"))], remote=RemoteClient(timeout=60)),
        Sequential("times_out", [AsyncStep(_caller("hang"))], remote=RemoteClient(timeout=0.2, retries=0)),
        Sequential("broken", [AsyncStep(_caller("fail"))], remote=RemoteClient(retries=2, backoff=0.001)),
    ]
    async with running_server(pipelines) as server, httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        assert (await http.post("/v1/models/enrich/predict", json={"inputs": [1, 2]})).json()["outputs"] == [
            "#3",
            "#5",
        ]

        # A remote that hangs holds only its own request: others are answered meanwhile.
        waiting = asyncio.create_task(http.post("/v1/models/waits/predict", json={"input": 7}))
        await remote.hanging.wait()
        for _ in range(3):
            assert (await http.post("/v1/models/enrich/predict", json={"input": 5})).json()["output"] == "#11"
        assert not waiting.done()
        remote.release.set()
        assert (await waiting).json()["output"] == 7
        remote.release.clear()

        timed_out = await http.post("/v1/models/times_out/predict", json={"input": 1})
        assert timed_out.status_code == 504
        assert timed_out.json()["error"]["code"] == "gateway_timeout"

        failed = await http.post("/v1/models/broken/predict", json={"input": 1})
        assert failed.status_code == 502
        assert failed.json()["error"]["code"] == "bad_gateway"
        assert remote.fail_hits == 3  # a GET is idempotent: tried once and retried twice
        remote.release.set()


async def test_remote_time_limits_bound_the_whole_call(remote: Remote) -> None:
    """`timeout` is wall time for the call, retries and a trickling body included; a deadline cuts it shorter."""
    _caller.base = remote.url  # type: ignore[attr-defined]
    pipelines = [
        Sequential("hangs", [AsyncStep(_caller("hang"))], remote=RemoteClient(timeout=1.0, retries=3)),
        Sequential("drips", [AsyncStep(_caller("drip"))], remote=RemoteClient(timeout=1.0)),
        Sequential("patient", [AsyncStep(_caller("hang"))], remote=RemoteClient(timeout=60)),
    ]
    async with running_server(pipelines) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for name, headers in (("hangs", {}), ("drips", {}), ("patient", {"X-Request-Timeout-Ms": "1000"})):
            started = time.monotonic()
            answer = await http.post(f"/v1/models/{name}/predict", json={"input": 1}, headers=headers)
            took = time.monotonic() - started
            assert answer.status_code == 504, (name, answer.text)
            # Before: 4 s for "hangs" (a 1 s timeout per attempt, 4 attempts), never for "drips" and "patient".
            assert took < 3.0, (name, took)
        message = answer.json()["error"]["message"]
        assert "deadline" in message or "timed out" in message, message
    remote.release.set()


async def test_remote_client_does_not_retry_a_post(remote: Remote) -> None:
    client = RemoteClient(retries=3, backoff=0.001)
    try:
        with pytest.raises(RemoteError, match="answered 500"):
            await client.post_json(f"{remote.url}/fail", {"x": 1})
        assert remote.fail_hits == 1
    finally:
        await client.aclose()


async def test_an_unknown_name_lists_the_pipelines_too() -> None:
    async with running_server([Sequential("only", [Double()])]) as server, httpx.AsyncClient(base_url=server.url) as h:
        answer = await h.post("/v1/models/nope/predict", json={"input": 1})
    assert answer.status_code == 404
    assert "this server serves: double, only" in answer.json()["error"]["message"]
    with pytest.raises(ModelNotFound, match="'only' is a pipeline: send its inputs to POST /v1/models/only/predict"):
        server.engine.handle("only")  # what the KServe V2 and OpenAI routes ask


async def test_a_config_sets_a_pipelines_name_and_version_and_nothing_else() -> None:
    with pytest.raises(ConfigError, match="takes only name and version, not max_batch_size, workers"):
        Engine([Served(Sequential("p", [Double()]), ModelSpec(workers=7, max_batch_size=3))], cores_available=2)
    renamed = Served(Sequential("p", [Double()]), ModelSpec(name="q", version="7"))
    async with running_server([renamed]) as server, httpx.AsyncClient(base_url=server.url) as h:
        answer = await h.post("/v1/models/q/predict", json={"input": 2})
        listed = {m["name"]: m for m in (await h.get("/v1/models")).json()["models"]}
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Model-Version"] == "7"
    assert listed["q"]["version"] == "7"


def _client_answering(handler: Any, **settings: Any) -> RemoteClient:
    client = RemoteClient(**settings)
    client._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return client


async def test_a_connect_timeout_is_retried_and_5xx_stays_a_502_when_time_runs_out() -> None:
    calls: list[int] = []

    async def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectTimeout("no SYN-ACK", request=request)
        return httpx.Response(200, json={"ok": True})

    client = _client_answering(flaky, backoff=0.001)
    try:
        assert await client.get_json("http://remote/x") == {"ok": True}
        assert len(calls) == 2
    finally:
        await client.aclose()

    async def unavailable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    client = _client_answering(unavailable, timeout=1.0, retries=3, backoff=0.5)  # no time for a third try
    try:
        with pytest.raises(RemoteError, match="answered 503"):
            await client.get_json("http://remote/x")
    finally:
        await client.aclose()

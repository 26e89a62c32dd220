"""The protocol review's findings, over real sockets with the official clients: KServe readiness after a worker
gave up, exact UINT64 tensors, usage counted off the event loop, route errors in protocol shape with
`models.retrieve`, compressed KServe bodies, duplicate tensor names, and 413s the adapters answer counted."""

from __future__ import annotations

import gzip
import os
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from _golden import Letters
from batchery.model import Model
from batchery.server import Server
from batchery.testing import EchoModel, running_server, server_thread
from batchery.workers.process import ProcessModel, given_up

INFER = "/v2/models/echo/infer"
MAX_BODY = 4096
#: How long SlowCounter's tokenizer holds its thread: the event loop's stall if it ran there.
COUNTING_SECONDS = 1.5


class Crashy(Model):
    """Echoes its input in a worker process; the input "crash" kills that process, as a segfault would."""

    name = "crashy"
    workers = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        if "crash" in batch:
            os._exit(1)
        return list(batch)


COUNTING = threading.Event()
COUNTED: list[float] = []  # seconds each count_tokens call took


class SlowCounter(Model):
    """A two-float embedding model whose token counter takes COUNTING_SECONDS, as a tokenizer on 256 long texts."""

    name = "slow-counter"
    example = "warm-up"

    def predict(self, batch: list[Any]) -> list[Any]:
        return [np.array([len(text), 1.0], dtype=np.float32) for text in batch]

    def count_tokens(self, texts: list[str]) -> list[int]:
        started = time.monotonic()
        COUNTING.set()
        time.sleep(COUNTING_SECONDS)
        COUNTED.append(time.monotonic() - started)
        return [len(text.split()) for text in texts]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    settings = {"max_body_bytes": MAX_BODY, "max_items": 4}
    async with (
        running_server([EchoModel(), Letters()], **settings) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def served() -> Iterator[Server]:
    with server_thread([EchoModel(), Letters()], max_body_bytes=MAX_BODY) as server:
        yield server


def rejected_too_large(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("batchery_rejected_total{") and 'reason="too_large"' in line
    )


# Finding 1: one readiness test for /ready and KServe's.


async def test_kserve_readiness_turns_false_with_ready_once_a_worker_gives_up() -> None:
    model = ProcessModel(Crashy(), max_restarts=0)
    async with (
        running_server([model, EchoModel()]) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        probes = ("/ready", "/v2/health/ready", "/v2/models/crashy/ready", "/v2/models/crashy/versions/1/ready")
        assert [(await http.get(path)).status_code for path in probes] == [200, 200, 200, 200]
        crashed = await http.post("/v1/models/crashy/predict", json={"input": "crash"})
        assert crashed.status_code == 503
        assert given_up(server.engine.handle("crashy"))
        ready, server_ready, model_ready, versioned = [await http.get(path) for path in probes]
        other = await http.get("/v2/models/echo/ready")
    assert ready.status_code == 503
    assert (server_ready.status_code, server_ready.json()) == (400, {"ready": False})
    assert (model_ready.status_code, model_ready.json()) == (400, {"name": "crashy", "ready": False})
    assert versioned.status_code == 400
    assert (other.status_code, other.json()) == (200, {"name": "echo", "ready": True})  # the other model serves


# Finding 3: integer tensors read and written exactly.


async def test_uint64_json_data_past_2_to_the_63_round_trips_exactly(http: httpx.AsyncClient) -> None:
    for data in ([2**64 - 1, 1], [2**63, 1]):
        tensor = {"name": "x", "shape": [2], "datatype": "UINT64", "data": data}
        response = await http.post(INFER, json={"inputs": [tensor]})
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert (output["datatype"], output["data"]) == ("UINT64", data)
    floats = {"name": "x", "shape": [2], "datatype": "UINT64", "data": [2**63, 1.5]}  # read exactly, not loosely
    response = await http.post(INFER, json={"inputs": [floats]})
    assert response.json() == {"error": "input 'x' is UINT64, but its data holds floats"}


@pytest.mark.parametrize(("datatype", "data"), [("INT64", [2**63, 1]), ("UINT64", [-1, 2**63])])
async def test_integers_out_of_their_datatypes_range_are_a_400(
    http: httpx.AsyncClient, datatype: str, data: list[int]
) -> None:
    tensor = {"name": "x", "shape": [len(data)], "datatype": datatype, "data": data}
    response = await http.post(INFER, json={"inputs": [tensor]})
    assert response.status_code == 400
    assert response.json() == {"error": f"input 'x': a value is out of range for {datatype}"}


def test_binary_uint64_comes_back_uint64_with_every_digit(served: Server) -> None:
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    values = np.array([[2**64 - 1, 2], [3, 4]], dtype=np.uint64)
    tensor = triton.InferInput("x", [2, 2], "UINT64")
    tensor.set_data_from_numpy(values)
    echoed = client.infer("echo", [tensor]).as_numpy("OUTPUT")
    assert echoed is not None
    assert echoed.dtype == np.uint64
    assert echoed.tolist() == values.tolist()


# Finding 4: usage is counted off the event loop.


def test_usage_is_counted_off_the_event_loop_so_probes_answer_meanwhile() -> None:
    COUNTING.clear()
    COUNTED.clear()
    with (
        server_thread([SlowCounter()]) as server,
        httpx.Client(base_url=server.url, timeout=60) as embedder,
        httpx.Client(base_url=server.url, timeout=60) as prober,
        ThreadPoolExecutor(1) as pool,
    ):
        texts = ["word " * 1000, "word " * 1000]  # past INLINE_COUNT_CHARS: short ones are counted inline
        body = {"model": "slow-counter", "input": texts}
        embedding = pool.submit(embedder.post, "/v1/embeddings", json=body)
        assert COUNTING.wait(60), "the tokenizer never ran"
        started = time.monotonic()
        probe = prober.get("/health")
        probe_seconds = time.monotonic() - started
        response = embedding.result()
    assert probe.status_code == 200
    assert response.status_code == 200
    assert response.json()["usage"] == {"prompt_tokens": 2000, "total_tokens": 2000}
    # On the loop, the probe would wait for the rest of the count: nearly all of it. Off it, a small fraction.
    (blocking,) = COUNTED
    assert probe_seconds < blocking / 3, (probe_seconds, blocking)


# Finding 5: route errors in the route family's shape, and GET /v1/models/{name}.


async def test_unknown_routes_and_wrong_methods_answer_in_the_protocols_shape(http: httpx.AsyncClient) -> None:
    embeddings = await http.get("/v1/embeddings")
    assert embeddings.status_code == 405
    assert embeddings.headers["allow"] == "POST"
    assert embeddings.json()["error"] == {
        "message": "/v1/embeddings does not take GET; it takes POST",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }
    infer = await http.get(INFER)
    assert (infer.status_code, infer.json()) == (405, {"error": f"{INFER} does not take GET; it takes POST"})
    config = await http.get("/v2/models/echo/config")
    assert config.status_code == 404
    assert config.json() == {"error": "no route GET /v2/models/echo/config; /docs lists this server's routes"}
    native = await http.get("/v1/models/echo/predict")
    assert native.status_code == 405
    assert native.json()["error"]["code"] == "method_not_allowed"
    elsewhere = await http.get("/nowhere")  # outside /v1 and /v2 (users' own routes): FastAPI's answer
    assert (elsewhere.status_code, elsewhere.json()) == (404, {"detail": "Not Found"})


async def test_route_errors_match_the_openapi_document(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    cases = [
        ("get", "/v1/models/{name}", "/v1/models/nope", 404),
        ("post", "/v1/embeddings", "/v1/embeddings", 405),
        ("post", "/v2/models/{name}/infer", INFER, 405),
    ]
    for method, route, path, status in cases:
        response = await http.request("GET", path)
        assert response.status_code == status
        schema = document["paths"][route][method]["responses"][str(status)]["content"]["application/json"]["schema"]
        jsonschema.validate(response.json(), schema)
    found = await http.get("/v1/models/echo")
    schema = document["paths"]["/v1/models/{name}"]["get"]["responses"]["200"]["content"]["application/json"]
    jsonschema.validate(found.json(), schema["schema"])


def test_openai_models_retrieve(served: Server) -> None:
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    model = client.models.retrieve("letters")
    assert (model.id, model.object, model.owned_by) == ("letters", "model", "batchery")
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("nope")
    assert raised.value.code == "model_not_found"
    assert raised.value.type == "invalid_request_error"
    assert "does not exist; this server serves: echo, letters" in raised.value.message


def test_tritonclient_reads_an_unserved_route_as_an_error_message(served: Server) -> None:
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match="no route GET /v2/models/echo/config") as raised:
        client.get_model_config("echo")
    assert raised.value.status() == "404"


# Finding 6: compressed KServe bodies.


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_request_compression(served: Server, algorithm: str) -> None:
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    for binary in (True, False):
        tensor = triton.InferInput("text", [2], "BYTES")
        tensor.set_data_from_numpy(np.array([b"one", b"two three"], dtype=object), binary_data=binary)
        result = client.infer("letters", [tensor], request_compression_algorithm=algorithm)
        output = result.as_numpy("OUTPUT")
        assert output is not None
        assert output.tolist() == [[3.0, 2.0, 0.0], [9.0, 3.0, 1.0]]


async def test_a_compressed_body_is_limited_once_decompressed_and_counted(http: httpx.AsyncClient) -> None:
    data = "x" * (MAX_BODY * 50)  # 200 KB that compresses to a few hundred bytes
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["' + data.encode() + b'"]}]}'
    for packed, encoding in ((gzip.compress(body), "gzip"), (zlib.compress(body), "deflate")):
        assert len(packed) < MAX_BODY
        response = await http.post(INFER, content=packed, headers={"Content-Encoding": encoding})
        assert response.status_code == 413
        assert response.json() == {"error": f"the request body is over the limit of {MAX_BODY} bytes once decompressed"}
    assert rejected_too_large((await http.get("/metrics")).text) == 2


@pytest.mark.parametrize(
    ("encoding", "body", "status", "says"),
    [
        ("br", b"{}", 415, "Content-Encoding 'br' is not supported; send the body uncompressed, or as gzip or deflate"),
        ("gzip", gzip.compress(b'{"inputs": []}')[:-6], 400, "the gzip body ends early; send all of it"),
        ("gzip", b'{"inputs": []}', 400, "the body is not valid gzip data"),
        ("deflate", zlib.compress(b"{}") + b"junk", 400, "the deflate body has bytes after its end"),
    ],
)
async def test_bad_compressed_bodies_say_what_is_wrong(
    http: httpx.AsyncClient, encoding: str, body: bytes, status: int, says: str
) -> None:
    response = await http.post(INFER, content=body, headers={"Content-Encoding": encoding})
    assert response.status_code == status
    assert says in response.json()["error"]


async def test_a_compressed_embeddings_body_is_a_415_naming_the_encoding(http: httpx.AsyncClient) -> None:
    body = gzip.compress(b'{"model": "letters", "input": "hi"}')
    response = await http.post("/v1/embeddings", content=body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 415
    assert response.json()["error"]["message"].startswith("Content-Encoding 'gzip' is not supported")


# Finding 8: one tensor per name.


async def test_two_input_tensors_with_the_same_name_are_a_400(http: httpx.AsyncClient) -> None:
    tensors = [{"name": "a", "shape": [1], "datatype": "INT32", "data": [n]} for n in (1, 2)]
    response = await http.post(INFER, json={"inputs": tensors})
    assert response.status_code == 400
    assert response.json() == {"error": "input 'a' is given twice; send each input tensor once, under its own name"}


# The 413s the OpenAI and KServe adapters answer themselves are counted as the native route's are.


async def test_413s_answered_by_the_adapters_are_counted_as_too_large(http: httpx.AsyncClient) -> None:
    too_many = await http.post("/v1/embeddings", json={"model": "letters", "input": ["a", "b", "c", "d", "e"]})
    assert too_many.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length for the middleware to check first
        for _ in range(10):
            yield b" " * 1000

    streamed = await http.post(INFER, content=chunks())
    assert streamed.status_code == 413
    tensor = {"name": "x", "shape": [5], "datatype": "INT32", "data": [1, 2, 3, 4, 5]}
    batch = await http.post(INFER, json={"inputs": [tensor]})  # 5 inputs, max_items=4
    assert batch.status_code == 413
    metrics = (await http.get("/metrics")).text
    assert rejected_too_large(metrics) == 3
    assert 'batchery_rejected_total{model="echo",reason="too_large"} 2.0' in metrics

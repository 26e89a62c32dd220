"""OpenAI embeddings over real sockets, with the official `openai` client and raw HTTP."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from _golden import Letters, cases, replay
from batchery.models.embedding import SentenceEmbedder
from batchery.protocols import openai_compat
from batchery.server import Server
from batchery.testing import EchoModel, SleepModel, running_server, server_thread


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with running_server([Letters(), EchoModel()]) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


@pytest.fixture(scope="module")
def embedder_server() -> Iterator[Server]:
    model = SentenceEmbedder()
    model.workers = 1
    model.max_batch_size = 4  # a list of ten texts needs three batches
    with server_thread([model]) as server:
        yield server


@pytest.fixture(scope="module")
def client(embedder_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=embedder_server.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("case", cases("openai"), ids=lambda p: p.stem)
async def test_golden(http: httpx.AsyncClient, case: Path) -> None:
    await replay(http, case)


def test_one_string(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="all-minilm-l6-v2", input="The cat sat on the mat.")
    assert result.model == "all-minilm-l6-v2"
    assert len(result.data) == 1
    vector = np.array(result.data[0].embedding)
    assert vector.shape == (384,)
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-4
    # [CLS] the cat sat on the mat . [SEP]
    assert result.usage.prompt_tokens == result.usage.total_tokens == 9


def test_a_list_split_across_batches_comes_back_in_order(client: openai.OpenAI, embedder_server: Server) -> None:
    texts = [f"Sentence number {i} is about {topic}." for i, topic in enumerate("abcdefghij")]
    one_by_one = [client.embeddings.create(model="all-minilm-l6-v2", input=t).data[0].embedding for t in texts]
    batcher = embedder_server.engine.handle("all-minilm-l6-v2").batcher  # type: ignore[union-attr]
    batches_before = batcher.stats.batches
    together = client.embeddings.create(model="all-minilm-l6-v2", input=texts)
    assert batcher.stats.batches - batches_before >= 3  # 10 inputs, at most 4 per batch
    assert [d.index for d in together.data] == list(range(10))
    for single, batched in zip(one_by_one, together.data, strict=True):
        assert np.allclose(single, batched.embedding, atol=1e-5)
    tokens = sum(client.embeddings.create(model="all-minilm-l6-v2", input=t).usage.prompt_tokens for t in texts)
    assert together.usage.prompt_tokens == tokens


def test_float_and_base64_encodings_agree(client: openai.OpenAI, embedder_server: Server) -> None:
    floats = client.embeddings.create(model="all-minilm-l6-v2", input="hello", encoding_format="float")
    # The client asks for base64 by itself when no format is given; check the raw form too.
    raw = httpx.post(
        embedder_server.url + "/v1/embeddings",
        json={"model": "all-minilm-l6-v2", "input": "hello", "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, np.array(floats.data[0].embedding, dtype=np.float32))
    default = client.embeddings.create(model="all-minilm-l6-v2", input="hello")
    assert np.array_equal(np.array(default.data[0].embedding, dtype=np.float32), decoded)


def test_native_dimensions_are_accepted_and_others_refused(client: openai.OpenAI) -> None:
    ok = client.embeddings.create(model="all-minilm-l6-v2", input="hi", dimensions=384)
    assert len(ok.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="all-minilm-l6-v2", input="hi", dimensions=128)
    assert caught.value.status_code == 400
    assert "set it to 384" in caught.value.message
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "dimensions"
    assert body["type"] == "invalid_request_error"


def test_unknown_model_and_bad_input_raise_the_clients_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="no model named 'text-embedding-3-small'"):
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    with pytest.raises(openai.BadRequestError, match="the text is empty"):
        client.embeddings.create(model="all-minilm-l6-v2", input=["fine", " "])


def test_models_list_in_openai_shape(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["all-minilm-l6-v2"]
    assert models.data[0].owned_by == "batchery"


async def test_too_many_inputs_is_413_in_openai_shape() -> None:
    async with running_server([Letters()], max_items=3) as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post("/v1/embeddings", json={"model": "letters", "input": ["a", "b", "c", "d"]})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["param"] == "input"
    assert "limit is 3" in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (b"nope", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b'{"input": "x"}', "model", "provide a model"),
        (b'{"model": "letters"}', "input", "provide an input"),
        (b'{"model": "letters", "input": []}', "input", "non-empty"),
        (b'{"model": "letters", "input": [1, 2]}', "input", "token arrays"),
        (b'{"model": "letters", "input": "x", "encoding_format": "int8"}', "encoding_format", "'float' or 'base64'"),
        (b'{"model": "letters", "input": "x", "encoding_format": ""}', "encoding_format", "not ''"),
        (b'{"model": "letters", "input": "x", "encoding_format": {}}', "encoding_format", "not {}"),
        (b'{"model": "letters", "input": "x", "encoding_format": 0}', "encoding_format", "not 0"),
        (b'{"model": "letters", "input": "x", "encoding_format": false}', "encoding_format", "not False"),
        (b'{"model": "letters", "input": [true]}', "input", "input 0: expected a string"),
        (b'{"model": "letters", "input": "x", "dimensions": "4"}', "dimensions", "positive integer"),
        (b'{"model": "letters", "input": ["a", 3]}', "input", "input 1: expected a string"),
        (b'{"model": "echo", "input": "x"}', "model", "does not return embeddings"),
    ],
)
async def test_bad_requests_get_openai_error_bodies(
    http: httpx.AsyncClient, body: bytes, param: str | None, says: str
) -> None:
    response = await http.post("/v1/embeddings", content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"]


async def test_encoding_format_absent_or_null_is_float(http: httpx.AsyncClient) -> None:
    for extra in (b"", b', "encoding_format": null', b', "encoding_format": "float"'):
        response = await http.post("/v1/embeddings", content=b'{"model": "letters", "input": "ab"' + extra + b"}")
        assert response.status_code == 200, response.text
        assert response.json()["data"][0]["embedding"] == [2.0, 1.0, 0.0]


async def test_an_unexpected_error_is_a_json_500_in_openai_shape(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(body: bytes, *, max_items: int) -> Any:
        raise KeyError("decoder bug")

    monkeypatch.setattr(openai_compat, "decode", broken)
    with caplog.at_level(logging.ERROR, logger="batchery.app"):
        response = await http.post("/v1/embeddings", json={"model": "letters", "input": "x"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "message": "internal error: KeyError('decoder bug')",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    [record] = [r for r in caplog.records if r.name == "batchery.app"]
    assert record.getMessage() == "POST /v1/embeddings failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)  # logged with its traceback


async def test_the_response_cache_and_deadlines_apply_here_too() -> None:
    slow = SleepModel(0.5)
    slow.workers = 1
    async with (
        running_server([Letters(), slow], cache="letters=memory") as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        body = {"model": "letters", "input": ["a", "bb"], "encoding_format": "base64"}
        first = await http.post("/v1/embeddings", json=body)
        second = await http.post("/v1/embeddings", json=body)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
        assert first.content == second.content
        late = await http.post(
            "/v1/embeddings", json={"model": "sleep", "input": "x"}, headers={"X-Request-Timeout-Ms": "50"}
        )
    assert late.status_code == 504
    assert late.json()["error"]["type"] == "server_error"
    assert late.json()["error"]["code"] == "deadline_exceeded"

"""KServe V2 over real sockets, with `tritonclient.http` (JSON and binary tensors) and raw HTTP."""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from _golden import Letters, cases, replay
from batchery.model import Model
from batchery.models.embedding import SentenceEmbedder
from batchery.protocols import kserve_v2, tensors
from batchery.testing import EchoModel, running_server, server_thread


class Pairs(Model):
    """Takes two tensors per input, `{"a": [...], "b": [...]}`, returns `{"sum": [...], "label": "..."}`."""

    name = "pairs"
    tensor_inputs = (
        {"name": "a", "datatype": "INT32", "shape": [-1, 2]},
        {"name": "b", "datatype": "INT32", "shape": [-1, 2]},
    )

    def predict(self, batch: list[dict[str, Any]]) -> list[Any]:
        return [{"sum": np.add(x["a"], x["b"]).astype(np.int32), "label": f"{x['a'][0]}+{x['b'][0]}"} for x in batch]


@pytest.fixture(scope="module")
def client() -> Iterator[triton.InferenceServerClient]:
    embedder = SentenceEmbedder()
    embedder.workers = 1
    with server_thread([embedder, Letters(), EchoModel(), Pairs()]) as server:
        yield triton.InferenceServerClient(server.url.removeprefix("http://"))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with running_server([Letters(), EchoModel()]) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


@pytest.mark.parametrize("case", cases("kserve_v2"), ids=lambda p: p.stem)
async def test_golden(http: httpx.AsyncClient, case: Path) -> None:
    await replay(http, case)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("all-minilm-l6-v2")
    assert client.is_model_ready("all-minilm-l6-v2", model_version="1")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    metadata = client.get_model_metadata("all-minilm-l6-v2")
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="has no version '7'"):
        client.get_model_metadata("all-minilm-l6-v2", model_version="7")


@pytest.mark.parametrize("binary", [True, False])
def test_text_embeddings_binary_and_json(client: triton.InferenceServerClient, binary: bool) -> None:
    texts = np.array([b"The cat sat on the mat.", "Caf\u00e9 au lait.".encode()], dtype=object)
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(texts, binary_data=binary)
    wanted = [triton.InferRequestedOutput("embedding", binary_data=binary)]
    result = client.infer("all-minilm-l6-v2", [text], outputs=wanted, request_id="r-1")
    embeddings = result.as_numpy("embedding")
    assert embeddings is not None
    assert embeddings.dtype == np.float32
    assert embeddings.shape == (2, 384)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    assert result.get_response()["id"] == "r-1"


def test_text_as_n_by_1_like_pytriton_sends_it(client: triton.InferenceServerClient) -> None:
    text = triton.InferInput("text", [2, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"one two"], [b"three"]], dtype=object))
    result = client.infer("letters", [text])
    assert result.as_numpy("OUTPUT").tolist() == [[7.0, 3.0, 1.0], [5.0, 2.0, 0.0]]


def test_typed_numbers_and_several_tensors(client: triton.InferenceServerClient) -> None:
    a = triton.InferInput("a", [2, 2], "INT32")
    a.set_data_from_numpy(np.array([[1, 2], [3, 4]], dtype=np.int32))
    b = triton.InferInput("b", [2, 2], "INT32")
    b.set_data_from_numpy(np.array([[10, 20], [30, 40]], dtype=np.int32), binary_data=False)
    result = client.infer("pairs", [a, b])
    assert result.as_numpy("sum").tolist() == [[11, 22], [33, 44]]
    assert result.as_numpy("sum").dtype == np.int32
    assert result.as_numpy("label").tolist() == [b"1+10", b"3+30"]


def test_wrong_datatype_gets_the_protocols_error(client: triton.InferenceServerClient) -> None:
    numbers = triton.InferInput("text", [2], "FP32")
    numbers.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("all-minilm-l6-v2", [numbers])
    assert caught.value.status() == "400"
    assert "input 'text' has datatype FP32; model 'all-minilm-l6-v2' expects BYTES" in caught.value.message()


def test_wrong_shape_gets_the_protocols_error(client: triton.InferenceServerClient) -> None:
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"a", b"b"], dtype=object))
    text.set_shape([3])  # the data holds two elements
    with pytest.raises(InferenceServerException, match=r"shape \[3\] needs 3") as caught:
        client.infer("all-minilm-l6-v2", [text])
    assert caught.value.status() == "400"
    grid = triton.InferInput("text", [1, 2], "BYTES")
    grid.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=object))
    with pytest.raises(InferenceServerException, match=r"expects \[-1\]"):
        client.infer("all-minilm-l6-v2", [grid])


def test_bad_input_value_is_a_400(client: triton.InferenceServerClient) -> None:
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"   "], dtype=object))
    with pytest.raises(InferenceServerException, match="input 0: the text is empty") as caught:
        client.infer("all-minilm-l6-v2", [text])
    assert caught.value.status() == "400"


def _infer(name: str, inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": [{"name": name, **spec} for spec in inputs], **extra})


def _deep(datatype: str, value: str, depth: int) -> bytes:
    """One value of shape [1] under `depth` lists, deeper than orjson.dumps writes (orjson.loads reads ~1,024)."""
    data = "[" * depth + value + "]" * depth
    return f'{{"inputs": [{{"name": "x", "datatype": "{datatype}", "shape": [1], "data": {data}}}]}}'.encode()


@pytest.mark.parametrize(
    ("body", "headers", "says"),
    [
        (b"{", {}, "not valid"),
        (b'{"inputs": []}', {}, "non-empty"),
        (_infer("x", [{"shape": [1], "datatype": "STRING", "data": ["a"]}]), {}, "datatype 'STRING'"),
        (_infer("x", [{"shape": [-1], "datatype": "BYTES", "data": ["a"]}]), {}, "non-negative"),
        (_infer("x", [{"shape": [2], "datatype": "BYTES", "data": ["a", 1]}]), {}, "must be strings"),
        (_infer("x", [{"shape": [1], "datatype": "FP32", "data": ["1.5"]}]), {}, "holds strings"),
        (_infer("x", [{"shape": [1], "datatype": "INT8", "data": [1.5]}]), {}, "holds floats"),
        (_infer("x", [{"shape": [1], "datatype": "INT8", "data": [300]}]), {}, "out of range"),
        (_infer("x", [{"shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3]]}]), {}, "regular array"),
        (_infer("x", [{"shape": [1], "datatype": "INT32"}]), {}, "has no data"),
        (_infer("x", [{"shape": [1], "datatype": ["BYTES"], "data": ["a"]}]), {}, "datatype ['BYTES']; use one of"),
        (_infer("x", [{"shape": [1], "datatype": {"a": 1}, "data": ["a"]}]), {}, "datatype {'a': 1}; use one of"),
        (
            _infer("x", [{"shape": [1] * 65, "datatype": "BYTES", "data": ["a"]}]),
            {},
            "the most a tensor may have is 64",
        ),
        (_deep("BYTES", '"a"', 990), {}, "nested deeper than its shape [1] allows"),
        (_deep("BYTES", '"a"', 1020), {}, "nested deeper than its shape [1] allows"),
        (_deep("FP32", "1.5", 1020), {}, "nested deeper than its shape [1] allows"),
        (_infer("x", [{"shape": [1], "datatype": "BYTES", "data": [["a"]]}]), {}, "nested deeper"),
        (_infer("x", [{"shape": [1], "datatype": "FP32", "data": [[1.5]]}]), {}, "nested deeper"),
        (_infer("x", [{"shape": [1, 2, 2], "datatype": "BYTES", "data": [["a", "b", "c", "d"]]}]), {}, "2 lists deep"),
        (_infer("x", [{"shape": [1, 2, 2], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]), {}, "2 lists deep"),
        (_infer("x", [{"shape": [1], "datatype": "BYTES", "data": "a"}]), {}, "data must be a list"),
        (_infer("x", [{"shape": [1], "datatype": "FP32", "data": 1.5}]), {}, "data must be a list"),
        (_infer("x", [{"shape": [3, 1], "datatype": "BYTES", "data": [["a", "b"], ["c"]]}]), {}, "regular array"),
        (_infer("x", [{"shape": [2, 1], "datatype": "BYTES", "data": [["a"], "b"]}]), {}, "regular array"),
        (_infer("x", [{"shape": [2, 1], "datatype": "BYTES", "data": ["a", ["b"]]}]), {}, "regular array"),
        (_infer("x", [{"shape": [], "datatype": "INT32", "data": [1]}]), {}, "first (batch) dimension"),
        (
            _infer("x", [{"shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]),
            {"inference-header-content-length": "nine"},
            "JSON header's size",
        ),
    ],
)
async def test_bad_requests_get_error_strings(
    http: httpx.AsyncClient, body: bytes, headers: dict[str, str], says: str
) -> None:
    response = await http.post("/v2/models/echo/infer", content=body, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert isinstance(error, str)
    assert says in error


async def test_truncated_binary_bytes_are_refused(http: httpx.AsyncClient) -> None:
    header = _infer("x", [{"shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}])
    binary = struct.pack("<I", 10) + b"ab"  # says ten bytes, has two
    response = await http.post(
        "/v2/models/echo/infer", content=header + binary, headers={"inference-header-content-length": str(len(header))}
    )
    assert response.status_code == 400
    assert "data ends first" in response.json()["error"]


async def test_unknown_model_and_output(http: httpx.AsyncClient) -> None:
    body = _infer("x", [{"shape": [1], "datatype": "INT64", "data": [1]}])
    missing = await http.post("/v2/models/nope/infer", content=body)
    assert missing.status_code == 404
    assert "no model named 'nope'" in missing.json()["error"]
    asked = _infer("x", [{"shape": [1], "datatype": "INT64", "data": [1]}], outputs=[{"name": "LOGITS"}])
    wrong = await http.post("/v2/models/echo/infer", content=asked)
    assert wrong.status_code == 400
    assert "no output 'LOGITS'" in wrong.json()["error"]


def test_json_data_is_flat_or_nested_as_deep_as_the_shape() -> None:
    for datatype, value in (("BYTES", "a"), ("FP32", 1.5)):
        flat = tensors.from_json("t", datatype, [2, 2], [value] * 4)
        nested = tensors.from_json("t", datatype, [2, 2], [[value] * 2] * 2)
        assert flat.shape == nested.shape == (2, 2)
        assert tensors.from_json("t", datatype, [2, 0], [[], []]).shape == (2, 0)
        assert tensors.from_json("t", datatype, [], [value]).shape == ()
        deepest = orjson.loads("[" * 64 + orjson.dumps(value).decode() + "]" * 64)
        assert tensors.from_json("t", datatype, [1] * 64, deepest).shape == (1,) * 64


async def test_an_unexpected_error_is_a_json_500_in_the_protocols_shape(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(body: bytes, header_length: str | None) -> Any:
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(kserve_v2, "decode", broken)
    with caplog.at_level(logging.ERROR, logger="batchery.app"):
        response = await http.post("/v2/models/echo/infer", content=_infer("x", [{"shape": [1], "datatype": "INT64"}]))
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "internal error: RuntimeError('decoder bug')"}
    assert "x-request-id" in response.headers  # answered inside the production middleware
    [record] = [r for r in caplog.records if r.name == "batchery.app"]
    assert record.getMessage() == "POST /v2/models/echo/infer failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)  # logged with its traceback
    assert (await http.post("/v2/models/nope/infer", content=b"{}")).status_code == 404  # still serving


def test_tensor_round_trips() -> None:
    for datatype in ("BOOL", "UINT8", "INT16", "INT64", "FP16", "FP32", "FP64"):
        array = np.arange(6).reshape(2, 3).astype(tensors.DATATYPES[datatype])
        tensor = tensors.Tensor("t", datatype, array)
        assert np.array_equal(tensors.from_binary("t", datatype, [2, 3], tensors.to_binary(tensor)), array)
        as_json = orjson.loads(orjson.dumps(tensors.to_json(tensor), option=orjson.OPT_SERIALIZE_NUMPY))
        assert np.array_equal(tensors.from_json("t", datatype, [2, 3], as_json), array)
    text = tensors.from_values("t", ["\u00e9", b"\xff"])
    assert tensors.rows(tensors.from_binary("t", "BYTES", [2], tensors.to_binary(text))) == ["\u00e9", b"\xff"]


async def test_binary_responses_are_cached_whole() -> None:
    async with running_server([Letters()], cache="memory") as server, httpx.AsyncClient(base_url=server.url) as http:
        header = _infer("text", [{"shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}])
        header = header[:-1] + b',"parameters":{"binary_data_output":true}}'
        body = header + struct.pack("<I", 2) + b"hi"
        sent = {"inference-header-content-length": str(len(header))}
        first = await http.post("/v2/models/letters/infer", content=body, headers=sent)
        second = await http.post("/v2/models/letters/infer", content=body, headers=sent)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.content == second.content
    split = int(second.headers["inference-header-content-length"])
    assert np.frombuffer(second.content[split:], dtype="<f4").tolist() == [2.0, 1.0, 0.0]

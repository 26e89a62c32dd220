"""Streaming over real sockets: SSE framing, batched streams, errors, and a client leaving mid-stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from _golden import cases, replay
from batchery import Engine
from batchery.batching.streaming import DONE, END, Stream, StreamingModel
from batchery.model import Model
from batchery.models.words import WordStreamer
from batchery.testing import EchoModel, running_server


class FailsMidStream(Model):
    """Yields one partial per input, then raises."""

    name = "midfail"
    stream = True

    def predict(self, batch: list[Any]) -> Iterator[list[Any]]:
        yield ["first" for _ in batch]
        raise RuntimeError("the decoder broke")


class ReturnsAList(Model):
    """Says `stream = True` but returns a list: the mistake batchery must name."""

    name = "notagenerator"
    stream = True

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)


def events(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]


async def read_stream(http: httpx.AsyncClient, name: str, text: str) -> list[str]:
    async with http.stream("POST", f"/v1/models/{name}/stream", json={"input": text}) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        return events((await response.aread()).decode())


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    models = [WordStreamer(), EchoModel(), FailsMidStream()]
    async with running_server(models) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("case", cases("streaming"), ids=lambda p: p.stem)
async def test_golden(http: httpx.AsyncClient, case: Path) -> None:
    await replay(http, case)


async def test_streams_one_event_per_word_then_done(http: httpx.AsyncClient) -> None:
    data = await read_stream(http, "words", "one two three")
    assert data[-1] == "[DONE]"
    assert [orjson.loads(d) for d in data[:-1]] == [
        {"index": 0, "word": "one"},
        {"index": 1, "word": "two"},
        {"index": 2, "word": "three"},
    ]


async def test_events_arrive_before_the_stream_ends() -> None:
    model = WordStreamer(step_seconds=0.02)
    async with running_server([model]) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        text = " ".join(f"w{i}" for i in range(200))
        async with http.stream("POST", "/v1/models/words/stream", json={"input": text}) as response:
            lines = response.aiter_lines()
            first = await anext(line async for line in lines if line.startswith("data: "))
            assert orjson.loads(first[6:]) == {"index": 0, "word": "w0"}
        # Leaving early is fine: the server drops the stream and stays healthy.
        assert (await http.get("/ready")).status_code == 200


async def test_several_streams_advance_together_in_one_batch() -> None:
    model = WordStreamer()
    # "fixed" batching with a long delay flushes on size alone: four streams make one batch of four.
    model.batching, model.max_batch_size, model.max_delay_ms, model.workers = "fixed", 4, 60_000, 1
    texts = ["a b c", "d e", "f", "g h i j"]
    async with running_server([model]) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        results = await asyncio.gather(*(read_stream(http, "words", text) for text in texts))
        lane_model = server.engine.handle("words").lanes[0].model.model  # type: ignore[union-attr]
    for text, data in zip(texts, results, strict=True):
        assert [orjson.loads(d)["word"] for d in data[:-1]] == text.split()
        assert data[-1] == "[DONE]"
    assert 4 in lane_model.batch_sizes
    assert lane_model.steps_run[-1] == 4  # the longest stream's length: all four stepped together


async def test_a_client_that_disconnects_frees_its_slot() -> None:
    model = WordStreamer(step_seconds=0.01)
    model.workers, model.max_batch_size = 1, 1  # one slot: the next stream can start only once it is freed
    endless = " ".join("w" for _ in range(50_000))  # ~500 s if the stream were not closed
    async with running_server([model]) as server, httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        async with http.stream("POST", "/v1/models/words/stream", json={"input": endless}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    break
        # The next stream gets the only slot because the first one's generator was closed.
        data = await asyncio.wait_for(read_stream(http, "words", "after the disconnect"), 60)
        assert [orjson.loads(d)["word"] for d in data[:-1]] == ["after", "the", "disconnect"]
        lane_model = server.engine.handle("words").lanes[0].model.model  # type: ignore[union-attr]
    closed_early = [steps for steps in lane_model.steps_run if steps < 50_000]
    assert len(closed_early) >= 2  # warm-up aside, the endless stream stopped early


async def test_error_mid_stream_is_an_error_event(http: httpx.AsyncClient) -> None:
    async with http.stream("POST", "/v1/models/midfail/stream", json={"input": "x"}) as response:
        body = (await response.aread()).decode()
    assert 'data: "first"' in body
    assert "event: error" in body
    error = orjson.loads(events(body)[-1])["error"]
    assert error["code"] == "predict_failed"
    assert "the decoder broke" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/v1/models/echo/stream", {"input": "x"}, 400, "does not stream"),
        ("/v1/models/nope/stream", {"input": "x"}, 404, "no model named"),
        ("/v1/models/words/stream", {"inputs": ["x"]}, 400, '"input" field'),
        ("/v1/models/words/stream", {"input": 5}, 422, "expected a string"),
        ("/v1/models/words/stream", {"input": "   "}, 422, "no words"),
    ],
)
async def test_bad_requests_get_json_errors_before_any_event(
    http: httpx.AsyncClient, path: str, body: Any, status: int, says: str
) -> None:
    response = await http.post(path, json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert says in response.json()["error"]["message"]


async def test_predict_on_a_streaming_model_returns_every_partial(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/models/words/predict", json={"inputs": ["a b", "c"]})
    assert response.json()["outputs"] == [
        [{"index": 0, "word": "a"}, {"index": 1, "word": "b"}],
        [{"index": 0, "word": "c"}],
    ]


# Engine level, no HTTP: the adapter's contract.


async def test_streaming_model_queues_partials_then_end_per_stream() -> None:
    engine = Engine([WordStreamer()], workers=1)
    await engine.start()
    try:
        handle = engine.handle("words")
        loop = asyncio.get_running_loop()
        streams = [Stream(p, loop) for p in engine.decode(handle, ["x y z", "q"])]  # type: ignore[arg-type]
        counts = await engine.infer_decoded(handle, streams)  # type: ignore[arg-type]
    finally:
        await engine.stop()
    assert counts == [3, 1]
    received = []
    for stream in streams:
        messages = []
        while not stream.queue.empty():
            messages.append(stream.queue.get_nowait())
        received.append(messages)
    assert received[0][-1] is END
    assert [m["word"] for m in received[0][:-1]] == ["x", "y", "z"]
    assert received[1] == [{"index": 0, "word": "q"}, END]


async def test_a_predict_that_is_not_a_generator_fails_to_load_with_a_hint() -> None:
    from batchery.errors import ModelLoadError

    model = ReturnsAList()
    model.example = "x"
    engine = Engine([model], workers=1)
    with pytest.raises(ModelLoadError, match="must yield steps"):
        await engine.start()


def test_streaming_model_copies_the_batching_settings() -> None:
    model = WordStreamer()
    model.max_batch_size = 3
    wrapped = StreamingModel(model)
    assert (wrapped.name, wrapped.max_batch_size, wrapped.example) == ("words", 3, "warm up")
    assert wrapped.predict(wrapped_batch := [["a", "b"], ["c"]]) == [
        [{"index": 0, "word": "a"}, {"index": 1, "word": "b"}],
        [{"index": 0, "word": "c"}],
    ]
    assert len(wrapped_batch) == 2
    assert DONE is not END

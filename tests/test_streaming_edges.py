"""Streams at their edges: failures in a shared batch, batches mixing streams and predicts, partials JSON cannot
hold, deadlines while queued, refusals before the first event, priorities, and versions across a reload."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from batchery.batching.streaming import DONE
from batchery.model import Model
from batchery.testing import running_server
from test_streaming import events


class Steps(Model):
    """Streams `{"n": steps, "fail_at": step, "bad_at": step, "pause": seconds}`: partial i is the number i.

    Batches of up to 2 wait 300 ms to fill, on one lane, so two requests sent together share a batch.
    `runs` counts the generators started, to tell a batch computed again from one computed once.
    """

    name = "steps"
    version = "1"
    stream = True
    workers = 1
    max_batch_size = 2
    batching = "fixed"
    max_delay_ms = 300
    runs = 0

    def predict(self, batch: list[Any]) -> Iterator[list[Any]]:
        Steps.runs += 1
        for step in range(max(item.get("n", 3) for item in batch)):
            time.sleep(max(item.get("pause", 0.02) for item in batch))
            partials: list[Any] = []
            for item in batch:
                if item.get("fail_at") == step:
                    raise RuntimeError("the decoder broke")
                if step >= item.get("n", 3):
                    partials.append(DONE)
                else:
                    partials.append({1, 2} if item.get("bad_at") == step else step)
            yield partials


class StepsV2(Steps):
    version = "2"


async def stream(http: httpx.AsyncClient, item: dict[str, Any], **headers: str) -> tuple[int, dict[str, str], str]:
    async with http.stream("POST", "/v1/models/steps/stream", json={"input": item}, headers=headers) as response:
        return response.status_code, dict(response.headers), (await response.aread()).decode()


@pytest.fixture
async def served() -> Any:
    Steps.runs = 0
    async with (
        running_server([Steps()], admin_api_key="admin") as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        yield server, http


async def test_a_stream_failing_in_a_shared_batch_ends_both_streams_once(served: Any) -> None:
    _, http = served
    healthy, failing = await asyncio.gather(stream(http, {"n": 4}), stream(http, {"n": 4, "fail_at": 2}))
    assert Steps.runs == 1  # before the fix the batch was bisected and each half streamed its partials again
    for status, _, text in (healthy, failing):
        assert status == 200
        assert events(text)[:2] == ["0", "1"]
        assert "event: error" in text
        assert "failed mid-stream" in text
        assert text.count("data: 0\n") == 1


async def test_a_stream_sharing_a_batch_with_a_predict_gets_its_partials(served: Any) -> None:
    _, http = served
    predicted, streamed = await asyncio.gather(
        http.post("/v1/models/steps/predict", json={"input": {"n": 2}}), stream(http, {"n": 3})
    )
    assert predicted.json()["output"] == [0, 1]
    assert events(streamed[2]) == ["0", "1", "2", "[DONE]"]  # before the fix: only [DONE], or a failed batch
    assert Steps.runs == 2  # one generator each, not a failed batch split in two


async def test_a_partial_json_cannot_hold_ends_the_stream_with_an_error_event(served: Any) -> None:
    _, http = served
    status, _, text = await stream(http, {"n": 3, "bad_at": 1})
    assert status == 200
    assert events(text)[0] == "0"  # the good partial before it arrives
    assert "event: error" in text
    assert "cannot be sent as JSON" in text


async def test_a_stream_deadline_bounds_the_wait_not_the_stream(served: Any) -> None:
    _, http = served
    for _ in range(5):  # long streams: the cost model must not take them for the cost of starting one
        assert (await stream(http, {"n": 8, "pause": 0.1}))[0] == 200
    await asyncio.sleep(0.1)
    status, _, text = await stream(http, {"n": 2}, **{"X-Request-Timeout-Ms": "500"})
    assert status == 200, text  # the lane is idle: it starts at once (before the fix: 504 at once)
    assert events(text) == ["0", "1", "[DONE]"]


async def test_a_queued_stream_whose_deadline_passes_is_an_ordinary_504(served: Any) -> None:
    _, http = served
    busy = asyncio.create_task(stream(http, {"n": 20, "pause": 0.1}))
    await asyncio.sleep(0.5)  # the lane streams for 2 s
    started = time.monotonic()
    status, headers, text = await stream(http, {"n": 2}, **{"X-Request-Timeout-Ms": "300"})
    waited = time.monotonic() - started
    await busy
    assert status == 504, text  # before the fix: 200, then an error event after the busy stream ended
    assert headers["content-type"].startswith("application/json")
    assert waited < 1.5


async def test_a_stream_header_names_the_version_that_computes_it(served: Any) -> None:
    server, http = served
    batcher = server.engine.handle("steps").batcher
    async with http.stream("POST", "/v1/models/steps/stream", json={"input": {"n": 10, "pause": 0.1}}) as busy:
        lines = busy.aiter_lines()
        while not (await anext(lines)).startswith("data:"):  # its batch is computing on version 1 now
            pass
        queued = asyncio.create_task(stream(http, {"n": 1}))
        for _ in range(500):  # queued behind it, on version 1's watch
            if batcher.queued:
                break
            await asyncio.sleep(0.01)
        assert batcher.queued == 1
        await server.engine.reload("steps", StepsV2())
        async for _ in lines:  # the busy stream ends on version 1
            pass
    _, headers, _ = await queued
    assert headers["x-model-version"] == "2"


async def test_a_streams_priority_header_is_read_and_checked(served: Any) -> None:
    _, http = served
    status, _, text = await stream(http, {"n": 1}, **{"X-Priority": "nope"})
    assert status == 400
    assert "X-Priority" in text


async def test_a_stream_whose_batch_started_is_not_cut_short_by_its_deadline(served: Any) -> None:
    _, http = served
    # Dispatched after the 300 ms batch window, its first step takes 500 ms: past the 400 ms deadline.
    status, _, text = await stream(http, {"n": 2, "pause": 0.5}, **{"X-Request-Timeout-Ms": "400"})
    assert status == 200, text  # before the fix: 504 at 400 ms, the computation thrown away
    assert events(text) == ["0", "1", "[DONE]"]


async def test_a_stream_swapped_out_before_its_first_partial_names_the_version_computing_it(served: Any) -> None:
    server, http = served
    running = asyncio.create_task(stream(http, {"n": 1, "pause": 0.6}))
    await asyncio.sleep(0.45)  # dispatched at 0.3 s on version 1; its first partial comes at 0.9 s
    await server.engine.reload("steps", StepsV2())
    _, headers, _ = await running
    assert headers["x-model-version"] == "1"


class Closing(Steps):
    """Counts the copies closed (each worker closes its own after its last batch)."""

    closed = 0

    def close(self) -> None:
        Closing.closed += 1


async def test_a_streaming_models_close_is_called_when_a_reload_retires_it() -> None:
    Closing.closed = 0
    async with running_server([Closing()], admin_api_key="admin") as server:
        await server.engine.reload("steps", StepsV2())
        for _ in range(500):  # the retired worker closes its copy on its own thread
            if Closing.closed:
                break
            await asyncio.sleep(0.01)
    assert Closing.closed == 1

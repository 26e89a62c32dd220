"""Review of pipelines, image inputs and uploads: each test drives a real server and failed before its fix."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from batchery import Engine, Model, images
from batchery.errors import PayloadTooLarge
from batchery.pipeline import Pipeline, Sequential, fan_out
from batchery.testing import running_server


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether `condition` holds within `seconds` (polled: the server runs in this loop)."""
    ends = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > ends:
            return False
        await asyncio.sleep(0.01)
    return True


class Gate(Model):
    """Echoes; holds its batch while `gate` is closed. One worker, and that worker's copy is this object."""

    name = "gate"
    workers = 1
    example = "warm-up"

    def __init__(self, version: str = "1", max_batch_size: int = 64) -> None:
        self.version = version
        self.max_batch_size = max_batch_size
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __deepcopy__(self, memo: dict[int, Any]) -> Gate:
        return self

    def predict(self, batch: list[Any]) -> list[Any]:
        self.entered.set()
        self.gate.wait()
        return [f"{self.version}:{x}" if x != "warm-up" else x for x in batch]


class Seen(Model):
    """Records every input it computes."""

    name = "seen"
    workers = 1
    example = "warm-up"

    def __init__(self) -> None:
        self.inputs: list[Any] = []

    def __deepcopy__(self, memo: dict[int, Any]) -> Seen:
        return self

    def predict(self, batch: list[Any]) -> list[Any]:
        self.inputs.extend(x for x in batch if x != "warm-up")
        return list(batch)


async def test_a_client_that_hangs_up_mid_pipeline_leaves_its_later_stages_uncomputed() -> None:
    first, later = Gate(), Seen()
    async with running_server([Sequential("chain", [first, later])]) as server:
        handle = server.engine.pipelines["chain"]
        first.gate.clear()
        first.entered.clear()
        async with httpx.AsyncClient(base_url=server.url) as http:
            call = asyncio.ensure_future(http.post("/v1/models/chain/predict", json={"input": "x"}))
            assert await _until(first.entered.is_set)
            call.cancel()  # the client hangs up while its input is in the first stage
            await asyncio.gather(call, return_exceptions=True)
        # The server notices the hang-up and stops the pipeline while its first stage still computes.
        noticed = await _until(lambda: handle.in_flight == 0)
        first.gate.set()
        assert await _until(lambda: handle.in_flight == 0)
        await asyncio.sleep(0.05)
        assert noticed
        assert later.inputs == []  # the second stage never computed for nobody


class Split(Model):
    """Its `decode_request` turns a text into its words (and needs `setup`); `predict` counts them."""

    name = "split"
    workers = 1
    example = "warm up"

    def setup(self, device: str) -> None:
        self.max_words = 5

    def decode_request(self, item: Any) -> Any:
        if not isinstance(item, str):
            raise TypeError(f"expected a text, got {type(item).__name__}")
        words = item.split()
        if len(words) > self.max_words:
            raise ValueError(f"{len(words)} words; at most {self.max_words}")
        return words

    def predict(self, batch: list[Any]) -> list[Any]:
        return [len(words) for words in batch]


class SplitAlone(Split):
    name = "split_alone"


class Same(Model):
    name = "same"
    workers = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)


async def test_sequential_model_steps_decode_their_inputs_as_their_routes_do() -> None:
    pipelines = [Sequential("first", [SplitAlone()]), Sequential("second", [Same(), Split()])]
    async with running_server(pipelines) as server, httpx.AsyncClient(base_url=server.url) as http:
        direct = await http.post("/v1/models/split/predict", json={"input": "one two three"})
        assert direct.json()["output"] == 3
        # The first step decodes with the copy that was set up (the prototype has no `max_words`: it was a 500).
        first = await http.post("/v1/models/first/predict", json={"input": "one two three"})
        assert first.status_code == 200, first.text
        assert first.json()["output"] == 3
        too_long = await http.post("/v1/models/first/predict", json={"input": "a b c d e f"})
        assert too_long.status_code == 422, too_long.text
        # A later step's decode_request runs too: it counted the 13 characters of the text, not its 3 words.
        second = await http.post("/v1/models/second/predict", json={"input": "one two three"})
        assert second.status_code == 200, second.text
        assert second.json()["output"] == 3
        refused = await http.post("/v1/models/second/predict", json={"input": 7})  # was a 500 from predict
        assert refused.status_code == 422, refused.text
        assert "split" in refused.json()["error"]["message"]


class Words(Pipeline):
    """A text fans out into its words, each echoed by the `gate` stage."""

    name = "words"

    def __init__(self, stage: Gate) -> None:
        self.stage = stage

    def stages(self) -> list[Any]:
        return [self.stage]

    def decode_request(self, item: Any) -> Any:
        return str(item).split()

    async def run(self, engine: Engine, payloads: list[Any], deadline: float | None) -> list[Any]:
        return await fan_out(engine, "gate", payloads, deadline)


async def test_a_fan_out_larger_than_its_stage_queue_is_413_not_a_503_retried_forever() -> None:
    async with running_server([Words(Gate())]) as server, httpx.AsyncClient(base_url=server.url) as http:
        limit = server.engine.handles["gate"].batcher.max_queue
        huge = await http.post("/v1/models/words/predict", json={"input": " ".join(["w"] * (limit + 1))})
        assert huge.status_code == 413, huge.text
        assert "retry-after" not in huge.headers
        assert str(limit) in huge.json()["error"]["message"]
        fits = await http.post("/v1/models/words/predict", json={"input": "a b"})
        assert fits.json()["output"] == ["1:a", "1:b"]
        empty = await http.post("/v1/models/words/predict", json={"input": ""})
        assert empty.json()["output"] == []


async def test_a_stage_reloaded_mid_fan_out_answers_the_request_from_one_version() -> None:
    old = Gate("1", max_batch_size=2)
    async with running_server([Words(old)]) as server, httpx.AsyncClient(base_url=server.url) as http:
        old.gate.clear()
        old.entered.clear()
        call = asyncio.ensure_future(http.post("/v1/models/words/predict", json={"input": "a b c d"}))
        assert await _until(old.entered.is_set)  # "a b" computing on version 1, "c d" queued
        await server.engine.reload("gate", Gate("2", max_batch_size=2))
        old.gate.set()
        response = await call
        assert response.status_code == 200, response.text
        assert response.json()["output"] == ["2:a", "2:b", "2:c", "2:d"]  # not ["1:a", "1:b", "2:c", "2:d"]


class Shape(Pipeline):
    """Answers each uploaded image's [height, width] as decoded."""

    name = "shape"

    def stages(self) -> list[Any]:
        return [Same()]

    def decode_request(self, item: Any) -> Any:
        return images.from_json(item)

    async def run(self, engine: Engine, payloads: list[Any], deadline: float | None) -> list[Any]:
        return [list((await images.decode_async(data)).shape[:2]) for data in payloads]


def _with_orientation(image: Image.Image, orientation: int, fmt: str = "PNG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, fmt, exif=exif.tobytes())
    return buffer.getvalue()


async def test_images_are_turned_as_their_exif_orientation_says() -> None:
    stored = Image.new("RGB", (40, 20), "white")
    stored.putpixel((0, 0), (255, 0, 0))
    for orientation in range(1, 9):
        data = _with_orientation(stored, orientation)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        assert np.array_equal(images.decode(data), expected), orientation
    phone = _with_orientation(stored, 6, "JPEG")  # a phone photo held upright: stored sideways, tagged 6
    async with running_server([Shape()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        upload = await http.post("/v1/models/shape/predict", files={"file": ("p.jpg", phone, "image/jpeg")})
        assert upload.json()["output"] == [40, 20]  # as viewers show it, not [20, 40]
    broken = io.BytesIO()
    stored.save(broken, "PNG", exif=b"not exif at all")
    assert images.decode(broken.getvalue()).shape == (20, 40, 3)  # a broken EXIF block is ignored, not a 422


async def test_base64_broken_into_lines_is_accepted() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (30, 10), "white").save(buffer, "PNG")
    wrapped = base64.encodebytes(buffer.getvalue() * 3).decode()  # what `base64 file` prints: 76 chars a line
    assert "\n" in wrapped
    assert images.from_json(wrapped) == buffer.getvalue() * 3
    async with running_server([Shape()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        body = {"inputs": [base64.encodebytes(buffer.getvalue()).decode(), "data:image/png;base64,\n" + wrapped]}
        response = await http.post("/v1/models/shape/predict", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"] == [[10, 30], [10, 30]]
        bad = await http.post("/v1/models/shape/predict", json={"input": "not base64 at all!"})
        assert bad.status_code == 422


def test_base64_broken_into_lines_is_held_to_the_limit_of_its_data_not_its_text() -> None:
    limits = images.ImageLimits(max_bytes=10_000)
    data = bytes(range(256)) * 38 + bytes(180)  # 9,908 bytes: under the limit
    assert images.from_json(base64.encodebytes(data).decode(), limits) == data  # was 413: the newlines counted
    with pytest.raises(PayloadTooLarge):
        images.from_json(base64.encodebytes(data + bytes(100)).decode(), limits)


async def test_an_upload_to_a_model_queues_as_its_client_for_fair_sharing() -> None:
    model = Gate()
    async with running_server([model]) as server, httpx.AsyncClient(base_url=server.url) as http:
        queue = server.engine.handles["gate"].batcher._queue
        model.gate.clear()
        model.entered.clear()
        busy = asyncio.ensure_future(http.post("/v1/models/gate/predict", json={"input": "busy"}))
        assert await _until(model.entered.is_set)
        upload = asyncio.ensure_future(http.post("/v1/models/gate/predict", files={"f": ("a.bin", b"x", "")}))
        assert await _until(lambda: len(queue) == 1)
        # Queued under the caller's address, like the JSON route's inputs, not under one shared anonymous client.
        assert queue.waiting_since("127.0.0.1", 0) is not None
        model.gate.set()
        assert (await busy).json()["output"] == "1:busy"
        assert (await upload).json()["output"] == "1:b'x'"

"""Out-of-memory recovery: split and retry, alone-too-large gets 413, the cap converges below the hidden limit."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from batchery._http_client import post_many
from batchery.batching.oom import BatchCap, ItemError, is_out_of_memory, predict_splitting
from batchery.errors import PayloadTooLarge
from batchery.model import Model
from batchery.testing import running_server


class HiddenLimitModel(Model):
    """Raises MemoryError for batches above a size the server is not told; inputs 'huge' never fit."""

    name = "hidden"
    max_batch_size = 32
    workers = 1
    example = 1

    def __init__(self, fits: int = 5) -> None:
        self.fits = fits
        self.sizes: list[int] = []

    def predict(self, batch: list[Any]) -> list[Any]:
        if len(batch) > self.fits or "huge" in batch:
            raise MemoryError("simulated: out of memory")
        self.sizes.append(len(batch))
        return [x * 2 if isinstance(x, int) else x for x in batch]


def test_recognises_out_of_memory_errors() -> None:
    class OutOfMemoryError(RuntimeError):
        pass

    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer"))
    assert not is_out_of_memory(ValueError("bad input"))


def test_split_and_retry_keeps_order_and_fails_only_the_huge_input() -> None:
    model = HiddenLimitModel(fits=3)
    failed: list[int] = []
    outputs = predict_splitting(model.predict, [1, 2, 3, 4, "huge", 6, 7], failed)
    assert outputs[:4] == [2, 4, 6, 8]
    assert isinstance(outputs[4], ItemError)
    assert isinstance(outputs[4].error, PayloadTooLarge)
    assert outputs[5:] == [12, 14]


def test_only_sizes_that_failed_for_their_size_are_recorded() -> None:
    failed: list[int] = []
    assert predict_splitting(HiddenLimitModel(fits=3).predict, [1, 2, 3, 4, 5, 6, 7], failed) == [
        2,
        4,
        6,
        8,
        10,
        12,
        14,
    ]
    assert failed == [4, 7]  # [4..7] failed and both its halves fit: its size was too big, then the whole batch
    # One input too large even alone explains every failure on its way down: the cap must not learn 8, 4, 2, 1
    # from it (a single client's huge input cut everyone's batches to 1 and throughput by 60%).
    failed.clear()
    outputs = predict_splitting(HiddenLimitModel(fits=8).predict, [1, 2, 3, "huge", 5, 6, 7, 8], failed)
    assert isinstance(outputs[3], ItemError)
    assert failed == []


def test_cap_decreases_multiplicatively_and_grows_back_below_the_failing_size() -> None:
    cap = BatchCap(32, grow_after=2)
    cap.failed(12)
    assert cap.value == 6
    for _ in range(50):
        cap.succeeded(cap.value)
    assert cap.value == 11  # back up to just below the size that failed, not past it


async def test_every_request_succeeds_and_the_cap_converges_below_the_hidden_size() -> None:
    model = HiddenLimitModel(fits=5)
    async with running_server([model]) as server:
        bodies = [orjson.dumps({"input": i}) for i in range(400)]
        responses = await post_many(server.url, "/v1/models/hidden/predict", bodies, connections=64)
        huge = await post_many(server.url, "/v1/models/hidden/predict", [b'{"inputs": [1, "huge", 3]}'])
        batcher = server.engine.handle("hidden").batcher
        await asyncio.sleep(0)
    assert [orjson.loads(r.body)["output"] for r in responses] == [i * 2 for i in range(400)]
    assert batcher.stats.oom_events > 0
    assert batcher.cap.value <= 5
    assert huge[0].status == 413
    assert "too large to compute even alone" in orjson.loads(huge[0].body)["error"]["message"]
    lane_model = server.engine.handle("hidden").lanes[0].model
    assert max(lane_model.sizes) <= 5

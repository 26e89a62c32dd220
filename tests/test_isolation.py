"""One bad input never fails the requests that shared its batch: a failing batch is bisected down to it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from batchery._http_client import post_many
from batchery.batching.isolate import predict_isolating
from batchery.batching.oom import ItemError
from batchery.engine import Engine
from batchery.errors import BatcheryError, NotReady, PredictError
from batchery.model import Model
from batchery.testing import running_server


class Choosy(Model):
    """Doubles numbers; any batch holding the string 'poison' raises, as a model choking on one input does."""

    name = "choosy"
    max_batch_size = 64
    max_delay_ms = 50
    workers = 1
    example = 1

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.failed_batches: list[int] = []

    def predict(self, batch: list[Any]) -> list[Any]:
        self.calls.append(len(batch))
        if "wait" in batch:
            time.sleep(0.3)  # holds the only lane while the test's other requests queue up behind it
            return [0 if x == "wait" else x * 2 for x in batch]
        if "poison" in batch:
            self.failed_batches.append(len(batch))
            raise ValueError("cannot double 'poison'")
        return [x * 2 for x in batch]


def test_only_the_failing_input_fails_and_the_order_is_kept() -> None:
    model = Choosy()
    outputs, bisected = predict_isolating(model.predict, [1, 2, 3, "poison", 5, 6, 7, 8], [], "choosy")
    assert bisected
    assert outputs[:3] == [2, 4, 6]
    assert outputs[4:] == [10, 12, 14, 16]
    assert isinstance(outputs[3], ItemError)
    assert isinstance(outputs[3].error, PredictError)
    assert "failed on this input" in str(outputs[3].error)
    assert isinstance(outputs[3].error.__cause__, ValueError)
    assert len(model.calls) <= 1 + 2 * 3  # the batch, then two halves per level down to the bad input


def test_a_batch_of_one_raises_as_before_and_deliberate_errors_are_not_retried() -> None:
    with pytest.raises(ValueError, match="poison"):
        predict_isolating(Choosy().predict, ["poison"], [], "choosy")

    calls: list[int] = []

    def unavailable(batch: list[Any]) -> list[Any]:
        calls.append(len(batch))
        raise NotReady("the worker process died")

    with pytest.raises(BatcheryError):
        predict_isolating(unavailable, [1, 2, 3, 4], [], "choosy")
    assert calls == [4]


async def test_a_poisoned_batch_answers_every_other_request_over_http() -> None:
    model = Choosy()
    bodies = [orjson.dumps({"input": "poison" if i == 17 else i}) for i in range(40)]
    async with running_server([model]) as server:
        path = "/v1/models/choosy/predict"
        blocker = asyncio.ensure_future(post_many(server.url, path, [orjson.dumps({"input": "wait"})]))
        await asyncio.sleep(0.1)
        responses = await post_many(server.url, path, bodies, connections=40)
        assert (await blocker)[0].status == 200
        lane_model = server.engine.handle("choosy").lanes[0].model
    for i, response in enumerate(responses):
        if i == 17:
            assert response.status == 500
            assert "failed on this input" in orjson.loads(response.body)["error"]["message"]
        else:
            assert response.status == 200, response.body
            assert orjson.loads(response.body)["output"] == i * 2
    assert max(lane_model.failed_batches) > 1  # the poison did share a batch with others


class Steady(Model):
    """10 ms a call whatever the batch; raises for a batch holding 'poison'."""

    name = "steady"
    max_batch_size = 8
    max_delay_ms = 30
    workers = 1
    example = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(0.01)
        if "poison" in batch:
            raise ValueError("poison")
        return list(batch)


async def test_a_bisected_batch_teaches_the_cost_model_nothing() -> None:
    # Its time covers the failed call and every half retried: learnt as one batch's cost, a client sending bad
    # inputs would inflate the cost model that queue-time limits, deadline shedding and flushing rely on.
    engine = Engine([Steady()], cores_available=2)
    await engine.start()
    try:
        costs = engine.handle("steady").batcher.costs
        for _ in range(6):
            await asyncio.gather(*(engine.infer("steady", [i]) for i in range(8)))
        clean = costs.cost(8)
        for _ in range(4):
            batch = (engine.infer("steady", ["poison" if i == 3 else i]) for i in range(8))
            await asyncio.gather(*batch, return_exceptions=True)
        assert costs.cost(8) < 2 * clean, (clean, costs.cost(8))
    finally:
        await engine.stop(1)

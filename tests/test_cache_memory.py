"""The memory response cache over real HTTP: hits, only successes, per-model choice, in-flight de-duplication."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from batchery.model import Model
from batchery.testing import EchoModel, FailingModel, running_server


class CountingSleep(Model):
    """Sleeps per batch and counts the inputs it computed."""

    name = "counting"
    example = "warm-up"

    def __init__(self) -> None:
        self.inputs = 0

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(0.2)
        self.inputs += len(batch)
        return list(batch)


def computed(server: Any, name: str) -> int:
    return sum(lane.model.inputs for lane in server.engine.handle(name).lanes)


def cache_events(text: str) -> dict[tuple[str, str, str], float]:
    events = {}
    for family in text_string_to_metric_families(text):
        if family.name == "batchery_cache_events":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    events[(labels["model"], labels["backend"], labels["event"])] = sample.value
    return events


async def test_second_identical_request_is_a_hit_whatever_the_key_order() -> None:
    async with running_server([EchoModel()], cache="memory") as server, httpx.AsyncClient(base_url=server.url) as http:
        first = await http.post("/v1/models/echo/predict", json={"input": {"a": 1, "b": 2}})
        again = await http.post("/v1/models/echo/predict", content=b'{"input": {"b": 2, "a": 1}}')
        other = await http.post("/v1/models/echo/predict", json={"inputs": [{"a": 1, "b": 2}]})
        assert (first.headers["x-cache"], again.headers["x-cache"], other.headers["x-cache"]) == ("miss", "hit", "miss")
        assert first.content == again.content
        assert other.json()["outputs"] == [{"a": 1, "b": 2}]
        events = cache_events((await http.get("/metrics")).text)
        assert events == {("echo", "memory", "miss"): 2, ("echo", "memory", "hit"): 1}


async def test_only_successes_are_cached_and_bad_input_is_still_a_4xx() -> None:
    async with (
        running_server([FailingModel()], cache="memory") as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        for _ in range(2):
            failed = await http.post("/v1/models/failing/predict", json={"input": "fail"})
            assert failed.status_code == 500
            assert "x-cache" not in failed.headers
        assert (await http.post("/v1/models/failing/predict", content=b"{nope")).status_code == 400
        ok = [await http.post("/v1/models/failing/predict", json={"input": "fine"}) for _ in range(2)]
        assert [r.headers["x-cache"] for r in ok] == ["miss", "hit"]


async def test_cache_is_chosen_per_model() -> None:
    async with (
        running_server([EchoModel(), FailingModel()], cache="echo=memory") as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        cached = await http.post("/v1/models/echo/predict", json={"input": 1})
        uncached = await http.post("/v1/models/failing/predict", json={"input": 1})
        assert cached.headers["x-cache"] == "miss"
        assert "x-cache" not in uncached.headers


async def test_identical_requests_in_flight_are_computed_once() -> None:
    async with (
        running_server([CountingSleep()], cache="memory", workers=2) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        body = {"input": "same"}
        before = computed(server, "counting")  # the warm-up batches count too
        responses = await asyncio.gather(*(http.post("/v1/models/counting/predict", json=body) for _ in range(20)))
        assert {r.status_code for r in responses} == {200}
        assert {r.json()["output"] for r in responses} == {"same"}
        assert computed(server, "counting") - before == 1
        assert sorted(r.headers["x-cache"] for r in responses).count("miss") == 1

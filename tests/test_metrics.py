"""Prometheus metrics: histograms alone, then every agreed name and value from a real server's /metrics."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchery.app.access import access_log
from batchery.metrics import NAMES, TIME_BUCKETS, Histogram, Metrics
from batchery.testing import EchoModel, running_server


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def test_histogram_buckets_are_less_than_or_equal_and_cumulative() -> None:
    histogram = Histogram((1.0, 2.0))
    for observed in (0.5, 1.0, 1.5, 3.0):
        histogram.observe(observed)
    assert histogram.cumulative() == [("1.0", 2), ("2.0", 3), ("+Inf", 4)]
    assert histogram.total == 6.0


def test_each_metrics_object_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.rejected("m", "queue_full", 3)
    assert one.registry is not two.registry
    assert b'reason="queue_full"} 3.0' in one.render()[0]
    assert b"queue_full" not in two.render()[0]
    assert b"batchery_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


async def test_a_real_server_exposes_every_agreed_metric() -> None:
    async with running_server([EchoModel()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        for _ in range(3):
            assert (await http.post("/v1/models/echo/predict", json={"inputs": [1, 2]})).status_code == 200
        assert (await http.post("/v1/models/unknown-model-x/predict", json={"input": 1})).status_code == 404
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    route = "/v1/models/{name}/predict"
    assert value(text, "batchery_requests_total", model="echo", route=route, status="200") == 3
    assert value(text, "batchery_request_duration_seconds_count", model="echo", route=route) == 3
    assert value(text, "batchery_queue_wait_seconds_count", model="echo") >= 6  # warm-up batches count too
    assert value(text, "batchery_compute_seconds_count", model="echo") >= 3
    assert value(text, "batchery_batch_size_sum", model="echo") >= 6
    assert value(text, "batchery_queue_depth", model="echo") == 0
    assert value(text, "batchery_in_flight_requests") == 1  # the scrape itself
    assert value(text, "batchery_model_load_seconds", model="echo") > 0
    assert "unknown-model-x" not in text  # unknown names never become label values
    declared = {line.split()[2].removesuffix("_total") for line in text.splitlines() if line.startswith("# TYPE")}
    gpu = {"batchery_gpu_utilization_ratio", "batchery_gpu_memory_used_bytes"}
    assert {name.removesuffix("_total") for name in set(NAMES) - gpu} <= declared
    assert len(TIME_BUCKETS) + 1 == sum(1 for line in text.splitlines() if "compute_seconds_bucket" in line)


async def test_metrics_off_means_no_route() -> None:
    async with running_server([EchoModel()], metrics="off") as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/metrics")).status_code == 404
        assert (await http.post("/v1/models/echo/predict", json={"input": 1})).status_code == 200


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access_lines() -> Any:
    handler = Records()
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        access_log.removeHandler(handler)


async def test_json_access_log_and_request_ids(access_lines: list[str]) -> None:
    async with (
        running_server([EchoModel()], access_log="json") as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        given = await http.post("/v1/models/echo/predict", json={"input": 1}, headers={"X-Request-ID": "trace-42"})
        made = await http.get("/health")
        absurd = await http.get("/health", headers={"X-Request-ID": "x" * 500})
        spaced = await http.get("/health", headers={"X-Request-ID": "two words"})
    assert given.headers["x-request-id"] == "trace-42"
    assert made.headers["x-request-id"]
    for replaced in (absurd, spaced):
        assert replaced.status_code == 200
        assert replaced.headers["x-request-id"] not in ("x" * 500, "two words")
    records = [orjson.loads(line) for line in access_lines]
    first = records[0]
    assert first["request_id"] == "trace-42"
    assert (first["method"], first["path"], first["status"], first["model"]) == (
        "POST", "/v1/models/echo/predict", 200, "echo"
    )  # fmt: skip
    assert first["duration_ms"] >= 0
    assert [r["request_id"] for r in records[1:]] == [made.headers["x-request-id"], *(
        r.headers["x-request-id"] for r in (absurd, spaced)
    )]  # fmt: skip


async def test_no_access_log_unless_asked(access_lines: list[str]) -> None:
    async with running_server([EchoModel()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/health")).headers["x-request-id"]
    assert access_lines == []

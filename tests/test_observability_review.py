"""Observability and deployment review (seventh session): metrics, access logs and manifests against real servers.

Each test reproduces a defect found by driving a real server (or rendering the real manifests) and fails without
its fix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from batchery.app.access import access_log
from batchery.config import Settings, unknown_variables
from batchery.model import Model
from batchery.pipeline import Sequential
from batchery.testing import running_server
from batchery.workers.process import ProcessModel
from test_metrics import value

KUBE = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


class Inc(Model):
    name = "inc"
    workers = 1
    example = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        return [x + 1 for x in batch]


class Twice(Model):
    name = "twice"
    workers = 1
    example = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        return [x * 2 for x in batch]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_pipeline_requests_are_counted_and_logged_under_the_pipeline_name() -> None:
    """A pipeline is served on /v1/models/{name}/predict like a model, but its requests were counted with an empty
    `model` label and logged with `"model": null`: its traffic, latency and errors were invisible per model in
    /metrics, Grafana and the built-in dashboard, while its stages showed up."""
    lines, level = Lines(), access_log.level
    access_log.addHandler(lines)
    access_log.setLevel(logging.INFO)
    try:
        pipeline = Sequential("chain", [Inc(), Twice()])
        async with (
            running_server([pipeline], access_log="json") as server,
            httpx.AsyncClient(base_url=server.url) as http,
        ):
            for value_ in range(3):
                response = await http.post("/v1/models/chain/predict", json={"input": value_})
                assert response.status_code == 200, response.text
                assert response.json()["output"] == (value_ + 1) * 2
            assert (await http.post("/v1/models/chain/predict", json={"inputs": []})).status_code == 422
            text = (await http.get("/metrics")).text
            dashboard = (await http.get("/dashboard/data")).json()
    finally:
        access_log.removeHandler(lines)
        access_log.setLevel(level)
    route = "/v1/models/{name}/predict"
    assert value(text, "batchery_requests_total", model="chain", route=route, status="200") == 3
    assert value(text, "batchery_requests_total", model="chain", route=route, status="422") == 1
    assert value(text, "batchery_request_duration_seconds_count", model="chain", route=route) == 4
    assert value(text, "batchery_queue_wait_seconds_count", model="inc") >= 3  # the stages, as before
    assert dashboard["models"]["chain"]["requests"] == {"200": 3, "422": 1}
    logged = [orjson.loads(line) for line in lines.lines]
    assert [entry["model"] for entry in logged if entry["path"] == "/v1/models/chain/predict"] == ["chain"] * 4


class Mortal(Model):
    """Echoes in a worker process; "crash" makes the process exit as a segfault would."""

    name = "mortal"
    workers = 1
    example = "warm-up"

    def predict(self, batch: list[Any]) -> list[Any]:
        if "crash" in batch:
            os._exit(139)
        return list(batch)


async def test_worker_restarts_counter_never_goes_down_across_a_reload() -> None:
    """`batchery_worker_restarts_total` was the sum over the *current* lanes' restarts: a hot reload builds new
    lanes, so the counter fell back to 0, a counter going down without a process restart."""
    async with (
        running_server([ProcessModel(Mortal())], admin_api_key="admin") as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        first_load = value((await http.get("/metrics")).text, "batchery_model_load_seconds", model="mortal")
        assert (await http.post("/v1/models/mortal/predict", json={"input": "crash"})).status_code == 503
        assert (await http.post("/v1/models/mortal/predict", json={"input": "ok"})).status_code == 200
        # No scrape between the restart and the reload: the count is the model's, not what a scraper last saw.
        reload = await http.post("/admin/models/mortal/reload", headers={"X-API-Key": "admin"})
        assert reload.status_code == 200, reload.text
        text = (await http.get("/metrics")).text
        assert value(text, "batchery_worker_restarts_total", model="mortal") == 1
        # The load time is the serving version's (it was the first version's for ever).
        assert value(text, "batchery_model_load_seconds", model="mortal") != first_load
        assert (await http.post("/v1/models/mortal/predict", json={"input": "crash"})).status_code == 503
        assert (await http.post("/v1/models/mortal/predict", json={"input": "ok"})).status_code == 200
        text = (await http.get("/metrics")).text
    assert value(text, "batchery_worker_restarts_total", model="mortal") == 2
    assert value(text, "batchery_model_reloads_total", model="mortal", result="ok") == 1


def service_link_variables(services: list[dict[str, Any]]) -> dict[str, str]:
    """The Docker-link variables the kubelet gives a pod for each Service in its namespace (enableServiceLinks)."""
    env: dict[str, str] = {}
    for index, service in enumerate(services):
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        address = f"10.96.0.{index + 10}"
        ports = service["spec"]["ports"]
        env[f"{prefix}_SERVICE_HOST"] = address
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        env[f"{prefix}_PORT"] = f"tcp://{address}:{ports[0]['port']}"
        for port in ports:
            proto = port.get("protocol", "TCP")
            if "name" in port:
                env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
            base = f"{prefix}_PORT_{port['port']}_{proto}"
            env[base] = f"{proto.lower()}://{address}:{port['port']}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(port["port"])
            env[f"{base}_ADDR"] = address
    return env


@pytest.mark.parametrize("overlay", ["base", "overlays/dev", "overlays/production"])
def test_kubernetes_pods_get_no_batchery_variables_from_service_links(overlay: str) -> None:
    """The Service is named `batchery`, so by default every pod got BATCHERY_SERVICE_HOST, BATCHERY_PORT_80_TCP and
    five more: batchery warned about seven "misspelt" settings at each start-up (drowning a real typo's warning),
    and BATCHERY_PORT=tcp://... stood in for the port whenever the manifest did not set it explicitly."""
    from test_deploy_kubernetes import render  # its renderer (and its skip when kubernetes-validate is missing)

    objects = render(KUBE / overlay)
    (deployment,) = (o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env: dict[str, str] = {}
    if pod.get("enableServiceLinks", True):
        env |= service_link_variables([o for o in objects if o["kind"] == "Service"])
    (config,) = (o for o in objects if o["kind"] == "ConfigMap")
    env |= config["data"]
    (container,) = pod["containers"]
    env |= {e["name"]: e.get("value", "from-a-reference") for e in container["env"]}
    env["BATCHERY_WORKERS"] = "2"
    assert unknown_variables({k: v for k, v in env.items()}) == []
    Settings.load(env={k: v for k, v in env.items() if k != "BATCHERY_REDIS_URL"} | {"BATCHERY_REDIS_URL": "x"})

"""Every batchery metric that the autoscaler, the adapter rules, the Grafana dashboard and the alerts query is one
that a real server's `/metrics` exposes: a renamed metric must break this test, not a production dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml

from batchery.testing import EchoModel, running_server

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"

#: The agreed metric names (issue 4). The GPU gauges appear only on machines with an NVIDIA GPU.
AGREED = {
    "batchery_requests_total",
    "batchery_request_duration_seconds",
    "batchery_queue_wait_seconds",
    "batchery_compute_seconds",
    "batchery_batch_size",
    "batchery_queue_depth",
    "batchery_in_flight_requests",
    "batchery_cache_events_total",
    "batchery_rejected_total",
    "batchery_model_load_seconds",
    "batchery_gpu_utilization_ratio",
    "batchery_gpu_memory_used_bytes",
}
SERIES_SUFFIXES = ("_bucket", "_sum", "_count", "_created")
NAME = re.compile(r"\bbatchery_[a-z0-9_]+")


async def exposed() -> set[str]:
    """Metric names from a live server's exposition (HELP/TYPE lines too, so unobserved families count)."""
    async with running_server([EchoModel()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/v1/models/echo/predict", json={"inputs": [1, 2]})
        response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    names = set()
    for line in response.text.splitlines():
        if line.startswith("# TYPE ") or line.startswith("# HELP "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def used() -> dict[str, set[str]]:
    """batchery metric names each deploy artifact refers to, by file."""
    texts = {
        "kubernetes HPA": (DEPLOY / "kubernetes" / "base" / "hpa.yaml").read_text(),
        "prometheus-adapter rules": (DEPLOY / "kubernetes" / "prometheus-adapter" / "rules.yaml").read_text(),
        "alerts": (DEPLOY / "prometheus" / "alerts.yaml").read_text(),
        "grafana": (DEPLOY / "grafana" / "batchery-dashboard.json").read_text(),
    }
    return {where: set(NAME.findall(text)) for where, text in texts.items()}


def known(name: str, names: set[str]) -> bool:
    if name in names:
        return True
    return any(name.endswith(s) and name.removesuffix(s) in names for s in SERIES_SUFFIXES)


async def test_deploy_artifacts_use_only_exposed_metrics() -> None:
    names = await exposed()
    for where, refs in used().items():
        assert refs, f"{where} uses no batchery metric: has the file moved?"
        unknown = sorted(n for n in refs if not known(n, names))
        assert not unknown, f"{where} uses metrics that /metrics does not expose: {unknown}"


async def test_the_agreed_names_are_exposed() -> None:
    missing = {n for n in AGREED if "gpu" not in n} - await exposed()
    assert not missing, f"/metrics lacks agreed metrics that dashboards and alerts rely on: {sorted(missing)}"


async def test_autoscaler_metric_is_the_queue_gauge() -> None:
    hpa = yaml.safe_load((DEPLOY / "kubernetes" / "base" / "hpa.yaml").read_text())
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == ["batchery_queue_depth"]
    assert "batchery_queue_depth" in await exposed()


def test_dashboard_covers_every_agreed_family_but_gpu() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "batchery-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    missing = {n for n in AGREED if "gpu" not in n and n not in exprs}
    assert not missing, f"no dashboard panel shows {sorted(missing)}"

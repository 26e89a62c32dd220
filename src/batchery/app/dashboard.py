"""`GET /dashboard`: a live page of batchery's own metrics, and `GET /dashboard/data`, the snapshot it polls.

The page is one static HTML file (package data, no build step, no external scripts). The snapshot holds the
app's cumulative counters and histogram buckets per model; the page turns two snapshots into rates, percentiles
and ratios, so the server does O(models) work per poll and keeps no history. With API keys on, the snapshot
needs the admin key (the page itself holds no data and asks for the key).
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from batchery.config import Settings
from batchery.engine import Engine
from batchery.errors import BatcheryError
from batchery.protocols.responses import error_response, json_response


class DashboardForbidden(BatcheryError):
    """The dashboard's data needs the admin key when API keys are configured."""

    status = 403
    code = "forbidden"


class MetricsOff(BatcheryError):
    """The dashboard reads the metrics, and they are switched off."""

    status = 404
    code = "metrics_off"


def routes(engine: Engine, settings: Settings) -> APIRouter:
    """`GET /dashboard` and `GET /dashboard/data`; no routes at all when `settings.dashboard` is off."""
    router = APIRouter(tags=["dashboard"])
    if not settings.dashboard:
        return router
    page = resources.files("batchery.app").joinpath("static/dashboard.html").read_bytes()
    may_read = _admin_check(settings)

    async def dashboard() -> Response:
        # The page holds no data, so it needs no key; `no-store` keeps an old page from outliving an upgrade.
        return Response(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    async def data(request: Request) -> Response:
        if not may_read(request):
            if not settings.admin_api_key.strip():
                why = "no admin key is configured: set BATCHERY_ADMIN_API_KEY, then send it as 'X-API-Key: <key>'"
            else:
                why = "send the admin key as 'X-API-Key: <key>'"
            message = f"with API keys on, the dashboard's data needs the admin key; {why}"
            return error_response(DashboardForbidden(message))
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is None:
            return error_response(MetricsOff("metrics are off; set BATCHERY_METRICS=open (or auth) to see them here"))
        body = orjson.dumps(snapshot(engine, metrics), option=orjson.OPT_NON_STR_KEYS)
        return json_response(body, headers={"Cache-Control": "no-store"})

    router.add_api_route("/dashboard", dashboard, methods=["GET"], summary="Live dashboard (HTML)")
    router.add_api_route("/dashboard/data", data, methods=["GET"], summary="The dashboard's metrics snapshot")
    return router


def _admin_check(settings: Settings) -> Any:
    """A function telling whether a request may read the data: any with API keys off, else one with the admin key.

    Whether keys are on is asked per request, of the app's key ring: a rotation of `api_keys_file` can turn them on
    after start-up, and then a user key must not read the data (it could, when this was decided at start-up).
    """
    from batchery.app.auth import ApiKeys, KeyRing

    admin_only = ApiKeys([], settings.admin_api_key.strip())

    def may_read(request: Request) -> bool:
        ring: KeyRing = request.app.state.keys  # set by app/production.py, shared with the Auth middleware
        keys = ring.current()
        if not (keys.users or keys.admin):
            return True
        presented = request.headers.get("x-api-key", "")
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if not presented and scheme.lower() == "bearer":
            presented = bearer
        found = admin_only.check(presented.strip().encode()) if admin_only.admin and presented else None
        return found is not None and found[0] == "admin"

    return may_read


def snapshot(engine: Engine, metrics: Any) -> dict[str, Any]:
    """Cumulative counters and histogram buckets per model, with the time they were read (monotonic seconds)."""
    models: dict[str, dict[str, Any]] = {}

    def model(name: str) -> dict[str, Any]:
        entry = models.get(name)
        if entry is None:
            entry = models[name] = {
                "requests": {},
                "latency": None,
                "batch_size": None,
                "queue_depth": 0,
                "cache": {"hit": 0, "miss": 0, "error": 0},
                "rejected": {},
            }
        return entry

    for handle in engine.handles.values():
        model(handle.name)["queue_depth"] = handle.batcher.queued
    # Requests outside any model (probes, /metrics, this page's own polling) are not model traffic.
    for (name, _route, status), count in metrics.requests.items():
        if name:
            requests = model(name)["requests"]
            requests[status] = requests.get(status, 0) + count
    for (name, _route), histogram in metrics.durations.items():
        if name:
            entry = model(name)
            entry["latency"] = _add(entry["latency"], histogram)
    for name, histogram in metrics.batch_size.items():
        model(name)["batch_size"] = _add(None, histogram)
    for (name, _backend, event), count in metrics.cache_events.items():
        cache = model(name)["cache"]
        cache[event] = cache.get(event, 0) + count
    for (name, reason), count in metrics.rejections.items():
        rejected = model(name or "(any)")["rejected"]
        rejected[reason] = rejected.get(reason, 0) + count
    return {"time": time.monotonic(), "in_flight": metrics.in_flight, "models": models}


def _add(total: dict[str, Any] | None, histogram: Any) -> dict[str, Any]:
    """Sum `histogram` (bounds, per-bucket counts, sum) into `total`; the last count is the +Inf bucket."""
    if total is None:
        return {"bounds": list(histogram.bounds), "counts": list(histogram.counts), "sum": histogram.total}
    total["counts"] = [a + b for a, b in zip(total["counts"], histogram.counts, strict=True)]
    total["sum"] += histogram.total
    return total

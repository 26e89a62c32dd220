"""Wires the production features into an app: metrics, API keys, rate limits, access logs, response cache.

Each is configured by `Settings` and off or safe by default (docs/production.md). Middleware order, outermost
first: Telemetry (request id, metrics, access log) > Auth > RateLimit > BodyLimit > the app, so refusals are
counted and logged too, and rate limits apply per authenticated key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.responses import Response

from batchery.app.access import Telemetry
from batchery.app.auth import Auth, KeyRing
from batchery.app.proxy import PROBES
from batchery.app.ratelimit import Limiter, RateLimit, TokenBuckets
from batchery.cache.link import RedisLink
from batchery.cache.responses import ResponseCache
from batchery.config import Settings, cache_backends
from batchery.engine import Engine
from batchery.errors import ConfigError
from batchery.metrics import Metrics, ServedNames
from batchery.protocols.responses import json_response


@dataclass(slots=True)
class Production:
    """What `install` set up and the app's lifespan must close."""

    metrics: Metrics | None
    responses: ResponseCache | None
    redis: RedisLink | None

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()


def install(app: FastAPI, engine: Engine, settings: Settings, metrics: Metrics | None) -> Production:
    """Add the configured middleware and the /metrics and /admin routes to `app`."""
    names = list(engine.handles)
    _check_cache_names(settings, names)
    limited = settings.rate_limit > 0
    needs_redis = (limited and settings.rate_limit_backend == "redis") or any(
        settings.cache_backend(name) == "redis" for name in names
    )
    redis = RedisLink(settings.redis_url, timeout=settings.redis_timeout_ms / 1000) if needs_redis else None
    responses = ResponseCache.from_settings(settings, names, redis=redis, metrics=metrics)

    if metrics is not None:
        metrics.watch(engine)
        _add_metrics_route(app, metrics)
    if limited:
        app.add_middleware(
            RateLimit, limiter=_limiter(settings, redis), exempt_paths=PROBES | {"/metrics"}, metrics=metrics
        )
    # /dashboard is a static page; its data route checks the admin key itself (app/dashboard.py).
    open_paths = PROBES | {"/dashboard"} | ({"/metrics"} if settings.metrics == "open" else set())
    # Always installed, even with no keys: it refuses /admin routes unless an admin key is configured. The ring is
    # the app's, so that routes checking keys themselves (/dashboard/data) follow a rotation of api_keys_file too.
    app.state.keys = KeyRing.from_settings(settings)
    app.add_middleware(Auth, keys=app.state.keys, open_paths=open_paths, metrics=metrics)
    if metrics is not None or settings.access_log != "off":
        app.add_middleware(Telemetry, metrics=metrics, log=settings.access_log, models=ServedNames(engine))
    if settings.cors_origins:  # off unless configured: browsers on other origins may not call this server
        _add_cors(app, settings.cors_origins)
    _add_admin_routes(app, responses)
    return Production(metrics, responses, redis)


def _add_cors(app: FastAPI, origins: str) -> None:
    from starlette.middleware.cors import CORSMiddleware

    allowed = [origin.strip() for origin in origins.split(",") if origin.strip()]
    headers = ["Authorization", "X-API-Key", "Content-Type", "X-Request-ID", "X-Request-Timeout-Ms", "X-Priority"]
    # Outside Auth: a browser's preflight carries no key. Credentials (cookies) are never used by batchery.
    app.add_middleware(CORSMiddleware, allow_origins=allowed, allow_methods=["GET", "POST"], allow_headers=headers)


def _limiter(settings: Settings, redis: RedisLink | None) -> Limiter:
    burst = settings.rate_limit_burst or max(1, math.ceil(settings.rate_limit))
    if settings.rate_limit_backend == "redis" and redis is not None:
        from batchery.app.ratelimit_redis import RedisBuckets

        return RedisBuckets(redis, settings.rate_limit, burst)
    return TokenBuckets(settings.rate_limit, burst)


def _add_metrics_route(app: FastAPI, metrics: Metrics) -> None:
    @app.get("/metrics", tags=["probes"], summary="Prometheus metrics")
    async def scrape() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)


def _add_admin_routes(app: FastAPI, responses: ResponseCache | None) -> None:
    @app.post("/admin/cache/clear", tags=["admin"], summary="Empty the response cache (needs the admin key)")
    async def clear_cache() -> Response:
        if responses is not None:
            await responses.clear()
        return json_response(b'{"cleared":true}')


def _check_cache_names(settings: Settings, names: list[str]) -> None:
    """A `cache` setting that names a model this server does not serve (a typo) would leave caching off unseen."""
    unknown = sorted(set(cache_backends(settings.cache)) - {"*"} - set(names))
    if unknown:
        raise ConfigError(
            f"cache names {', '.join(map(repr, unknown))}, which this server does not serve as a model (it serves "
            f"{', '.join(names)}; pipelines' responses are not cached)"
        )

"""The web layer: a FastAPI app around an engine. Users can add their own routes to it and get `/docs`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from batchery import protocols
from batchery._version import __version__
from batchery.app import admin, dashboard, failures, openapi, proxy
from batchery.app.limits import BodyLimit
from batchery.app.production import install
from batchery.config import Settings
from batchery.engine import Engine
from batchery.errors import BatcheryError
from batchery.metrics import Metrics
from batchery.protocols import DEFAULT_PROTOCOLS, Protocol
from batchery.protocols.responses import json_response

log = logging.getLogger("batchery.app")


def create_app(
    engine: Engine,
    settings: Settings | None = None,
    protocols: Sequence[Protocol] = DEFAULT_PROTOCOLS,
    *,
    metrics: Metrics | None = None,
) -> FastAPI:
    """An app that loads `engine`'s models in the background at start-up and drains them at shutdown.

    `app.state.loading` is the loading task: `/ready` turns 200 once it has finished without error.
    Each protocol adapter contributes its routes. Pass the `metrics` given to `Engine(observer=...)` so batch
    metrics are served too; without it one is made here (when settings.metrics is on) for request metrics.
    """
    settings = settings or Settings()
    if metrics is None and settings.metrics != "off":
        metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.loading = asyncio.create_task(engine.start(), name="batchery-load")
        try:
            yield
        finally:
            if not app.state.loading.done():
                app.state.loading.cancel()
            # The grace period counts from the signal (server.py), not from here: connections drained first.
            started = app.state.drain_started or time.monotonic()
            await engine.stop(max(0.0, settings.drain_seconds - (time.monotonic() - started)))
            await app.state.production.close()

    app = FastAPI(title="batchery", version=__version__, lifespan=lifespan)
    app.state.engine = engine
    app.state.settings = settings
    app.add_exception_handler(BatcheryError, _handle_error)
    app.add_exception_handler(HTTPException, _route_error)  # no such route, or not this method
    app.add_exception_handler(Exception, _outermost_failure)  # a middleware that raised: Unexpected is inside it
    app.add_middleware(failures.Unexpected)  # added first: innermost, inside every other middleware
    app.state.drain_started = None
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.state.production = install(app, engine, settings, metrics)
    proxy.install(app, settings)  # outermost: everything after it sees the real client address
    app.state.metrics = metrics
    app.state.responses = app.state.production.responses

    @app.get("/health", tags=["probes"], summary="Liveness: the process is up")
    async def health() -> Response:
        return json_response(b'{"status":"ok"}')

    @app.get("/ready", tags=["probes"], summary="Readiness: every model is loaded and warmed up")
    async def ready() -> Response:
        if engine.is_ready():  # the same test as KServe's /v2/health/ready
            return json_response(b'{"ready":true}')
        return json_response(b'{"ready":false}', 503, {"Retry-After": "1"})

    for protocol in protocols:
        app.include_router(protocol.routes(engine, settings))
    app.include_router(admin.routes(engine, settings))
    app.include_router(dashboard.routes(engine, settings))
    openapi.describe(app)  # real shapes for the routes that render bytes by hand (/docs, schemathesis)
    return app


async def _outermost_failure(request: Request, exc: Exception) -> Response:
    """The last resort, outside every middleware (Starlette's ServerErrorMiddleware, which then re-raises it for the
    server's log): a JSON 500 in the route's protocol shape instead of a text/plain one."""
    return protocols.error_response(request.url.path, BatcheryError(f"internal error: {exc!r}"))


async def _route_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 (no such route) and 405 (not this method) under /v1 and /v2 in the protocol's error shape,
    which its clients parse and /openapi.json promises; elsewhere (users' own routes) FastAPI's `{"detail"}`."""
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    path = request.url.path
    if not path.startswith(("/v1/", "/v2/")) and path not in ("/v1", "/v2"):
        return await http_exception_handler(request, exc)
    error = BatcheryError(_route_message(request, exc))
    error.status = exc.status_code
    error.code = _ROUTE_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
    response = protocols.error_response(path, error)
    response.headers.update(exc.headers or {})  # the 405's Allow
    return response


_ROUTE_CODES = {404: "not_found", 405: "method_not_allowed"}


def _route_message(request: Request, exc: HTTPException) -> str:
    allowed = (exc.headers or {}).get("Allow")
    if exc.status_code == 405 and allowed:
        return f"{request.url.path} does not take {request.method}; it takes {allowed}"
    if exc.status_code == 404 and exc.detail == "Not Found":  # the router's own: no route matched
        return f"no route {request.method} {request.url.path}; /docs lists this server's routes"
    return str(exc.detail)


async def _handle_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatcheryError)  # registered for BatcheryError only
    return failures.answer(
        exc,
        metrics=request.app.state.metrics,
        engine=request.app.state.engine,
        model=request.path_params.get("name", ""),
        method=request.method,
        path=request.url.path,
    )

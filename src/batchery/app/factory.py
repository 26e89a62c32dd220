"""The web layer: a FastAPI app around an engine. Users can add their own routes to it and get `/docs`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from batchery._version import __version__
from batchery.app.limits import BodyLimit
from batchery.config import Settings
from batchery.engine import Engine
from batchery.errors import BatcheryError
from batchery.protocols import DEFAULT_PROTOCOLS, Protocol
from batchery.protocols.responses import error_response, json_response

log = logging.getLogger("batchery.app")


def create_app(
    engine: Engine, settings: Settings | None = None, protocols: Sequence[Protocol] = DEFAULT_PROTOCOLS
) -> FastAPI:
    """An app that loads `engine`'s models in the background at start-up and drains them at shutdown.

    `app.state.loading` is the loading task: `/ready` turns 200 once it has finished without error.
    Each protocol adapter contributes its routes.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.loading = asyncio.create_task(engine.start(), name="batchery-load")
        try:
            yield
        finally:
            if not app.state.loading.done():
                app.state.loading.cancel()
            await engine.stop(settings.drain_seconds)

    app = FastAPI(title="batchery", version=__version__, lifespan=lifespan)
    app.state.engine = engine
    app.state.settings = settings
    app.add_exception_handler(BatcheryError, _handle_error)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.get("/health", tags=["probes"], summary="Liveness: the process is up")
    async def health() -> Response:
        return json_response(b'{"status":"ok"}')

    @app.get("/ready", tags=["probes"], summary="Readiness: every model is loaded and warmed up")
    async def ready() -> Response:
        if engine.ready:
            return json_response(b'{"ready":true}')
        return json_response(b'{"ready":false}', 503, {"Retry-After": "1"})

    for protocol in protocols:
        app.include_router(protocol.routes(engine, settings))
    return app


async def _handle_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatcheryError)  # registered for BatcheryError only
    if exc.status >= 500 and exc.status not in (503, 504):
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message, exc_info=exc.__cause__)
    return error_response(exc)

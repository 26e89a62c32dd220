"""The native predict route beside the framework: pure ASGI, raw body in, ready bytes out.

`FastDispatch` is what the server runs: a request for `POST /v1/models/{name}/predict` (JSON, a model) goes
through the app's own production middleware (request ids, metrics, auth, rate limits, body limit) straight to
the predict endpoint, skipping FastAPI's routing, exception, telemetry and dependency layers, which cost more
than the rest of such a request. Every other request goes to the FastAPI app unchanged; served without the
dispatcher (e.g. by another ASGI server), the app answers predict through its regular route, identically.

An inference request whose client hangs up before its answer has started is cancelled there and then (the HTTP
protocol calls the request's `ON_HANGUP`): its inputs still queued are not computed for nobody, an identical
request that shared its computation computes on by itself, and access logs and metrics record 499. (With HTTP
pipelining, requests read behind the one being answered wait their turn in uvicorn, and only the last one read
is cancelled this way.)
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from batchery.app import failures
from batchery.app.scope import DISCONNECTED, ON_HANGUP
from batchery.config import Settings
from batchery.engine import Engine
from batchery.errors import BatcheryError, PredictError
from batchery.metrics import Metrics
from batchery.protocols import native
from batchery.protocols.responses import error_response

log = logging.getLogger("batchery.app")

_PREFIX = "/v1/models/"
_SUFFIX = "/predict"
_MULTIPART = b"multipart/"
#: Paths of the inference routes, whose requests are cancelled when their client hangs up (never /admin).
_INFERENCE = ("/v1/models/", "/v1/embeddings", "/v2/models/")
_JSON = [(b"content-type", b"application/json")]


class _Route:
    path = "/v1/models/{name}/predict"


_PREDICT_ROUTE = _Route()


class FastDispatch:
    """The ASGI app to serve: native predict requests take the short way, the rest go to `app`."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.engine: Engine = app.state.engine
        self.endpoint = PredictEndpoint(self.engine, app.state.settings, app.state.metrics)
        self._stack: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(_INFERENCE):
            await self._dispatch(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None  # the server runs each request in a task
        hung_up = False

        def on_hangup() -> None:
            nonlocal hung_up
            hung_up = True
            scope[DISCONNECTED] = True  # recorded as 499 by the telemetry middleware, which the cancel goes through
            task.cancel()

        scope[ON_HANGUP] = on_hangup
        try:
            await self._dispatch(scope, receive, send)
        except asyncio.CancelledError:
            if not hung_up or task.uncancel() > 0:  # cancelled for another reason too (a shutdown): let it end
                raise
        finally:
            scope.pop(ON_HANGUP, None)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self.endpoint.model(scope) if scope["type"] == "http" else None
        if name is None:
            await self.app(scope, receive, send)
            return
        # What the framework's router would have put in the scope, for the middleware that reads it.
        scope["app"] = self.app
        scope["route"] = _PREDICT_ROUTE
        scope["path_params"] = {"name": name}
        if self._stack is None:
            self._stack = self._build()
        await self._stack(scope, receive, send)

    def _build(self) -> ASGIApp:
        # The app's own middleware, in the app's order, around the endpoint: every feature still applies.
        stack: ASGIApp = self.endpoint
        for cls, args, kwargs in reversed(self.app.user_middleware):
            if cls is failures.Unexpected:  # the endpoint answers its own unexpected errors (and costs less)
                continue
            stack = cls(stack, *args, **kwargs)
        return stack


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class PredictEndpoint:
    """Answers `POST /v1/models/{name}/predict` for JSON bodies and models (not pipelines)."""

    def __init__(self, engine: Engine, settings: Settings, metrics: Metrics | None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.predict = native.predictor(engine, settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self.model(scope)
        assert name is not None  # FastDispatch sends only requests that model() takes
        try:
            raw = await _read_body(receive)
            if raw is None:  # the client went away
                scope[DISCONNECTED] = True
                return
            body, headers = await self.predict(scope, name, raw, scope["app"].state.responses)
        except BatcheryError as exc:
            response = failures.answer(
                exc, metrics=self.metrics, engine=self.engine, model=name, method="POST", path=scope["path"]
            )
            await response(scope, receive, send)
            return
        except Exception as exc:  # what ServerErrorMiddleware does for the app's routes
            log.exception("POST %s failed", scope["path"])
            await error_response(PredictError(f"internal error: {exc!r}"))(scope, receive, send)
            return
        raw_headers = [*_JSON, (b"content-length", b"%d" % len(body))]
        raw_headers.extend((key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in headers.items())
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    def model(self, scope: Scope) -> str | None:
        """The model name when this request is one the fast path takes, else None."""
        if scope["method"] != "POST":
            return None
        path: str = scope["path"]
        if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
            return None
        name = path[len(_PREFIX) : -len(_SUFFIX)]
        if not name or "/" in name or name in self.engine.pipelines:
            return None
        for key, value in scope["headers"]:
            if key == b"content-type" and value.startswith(_MULTIPART):
                return None
        return name

"""Request ids, request metrics and access logs, in one pure ASGI middleware (one `send` wrapper per request).

The request id is the caller's `X-Request-ID` when it is printable ASCII of at most 128 characters, else one
made here (a random per-process prefix and a counter); it is echoed in the response's `X-Request-ID`.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import time
from collections.abc import Container

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchery.app.scope import CLIENT, DISCONNECTED, MODEL, REQUEST_ID
from batchery.metrics import Metrics

_VALID_ID = re.compile(rb"[!-~]{1,128}")
access_log = logging.getLogger("batchery.access")


#: The status recorded (never sent) for a request whose client went away before its response: nginx's 499.
CLIENT_CLOSED = 499


class Telemetry:
    """Give each request an id, count it in `metrics` (when given) and log it (`log`: "off", "text", "json").

    `models` holds the served model names (the engine's live mapping will do).
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics | None, log: str, models: Container[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.log = log
        # Only served model names become label values: a request for /v1/models/<anything> must not add series.
        self.models = models
        self._prefix = os.urandom(4).hex().encode()
        self._counter = itertools.count(1)
        if log != "off":
            _configure(access_log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = b""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                if _VALID_ID.fullmatch(value):
                    request_id = value
                break
        if not request_id:
            request_id = b"%s-%d" % (self._prefix, next(self._counter))
        scope[REQUEST_ID] = request_id
        header = (b"x-request-id", request_id)
        status = 500  # what the client gets if the app fails before it starts a response
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not responded and scope.get(DISCONNECTED):
                status = CLIENT_CLOSED  # the client left before its answer: not a server error
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_path: str = getattr(route, "path", "")
            model = scope.get(MODEL) or scope.get("path_params", {}).get("name") or ""
            if model not in self.models:
                model = ""
            if metrics is not None:
                metrics.in_flight -= 1
                metrics.request_done(model, route_path, status, elapsed)
            if self.log != "off":
                self._log(scope, request_id, status, elapsed, model)

    def _log(self, scope: Scope, request_id: bytes, status: int, elapsed: float, model: str) -> None:
        client = scope.get("client")
        address = client[0] if client else ""
        if self.log == "json":
            record = {
                "ts": round(time.time(), 6),
                "request_id": request_id.decode(),
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "client": address,
                "key": scope.get(CLIENT),
                "model": model or None,
            }
            access_log.info(orjson.dumps(record).decode())
        else:
            # The raw path: the decoded one may hold a line break (%0A) that would forge a second log line.
            path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
            access_log.info(
                '%s "%s %s" %d %.1fms id=%s key=%s',
                address, scope["method"], path, status, elapsed * 1000, request_id.decode(), scope.get(CLIENT),
            )  # fmt: skip


def _configure(logger: logging.Logger) -> None:
    """Access lines go to stdout as they are (one JSON object a line), unless the user set up this logger."""
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

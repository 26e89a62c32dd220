"""How the web layer answers errors: a BatcheryError is counted, logged when a fault, and rendered as JSON;
any other exception is logged with its traceback and answered as a JSON 500 in the route's protocol shape.
"""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchery import protocols
from batchery.app.scope import DISCONNECTED
from batchery.engine import Engine
from batchery.errors import BatcheryError
from batchery.metrics import Metrics, model_label
from batchery.protocols.responses import error_response

log = logging.getLogger("batchery.app")

#: Refusals the web layer counts in batchery_rejected_total, by error code.
_REJECTION_REASONS = {"payload_too_large": "too_large", "not_ready": "not_ready"}


def answer(
    exc: BatcheryError, *, metrics: Metrics | None, engine: Engine, model: str, method: str, path: str
) -> Response:
    """The error response for `exc`; queue_full and deadline refusals are counted by the engine itself."""
    if metrics is not None and exc.code in _REJECTION_REASONS:
        metrics.rejected(model_label(engine, model), _REJECTION_REASONS[exc.code], 1)
    if exc.status >= 500 and exc.status not in (503, 504):
        log.error("%s %s failed: %s", method, path, exc.message, exc_info=exc.__cause__)
    return error_response(exc)


class Unexpected:
    """Innermost middleware: an exception no handler took becomes a JSON 500, not the server's text/plain one.

    Inside the production middleware, so the answer carries a request id and is counted and logged like any
    other. The body says no more than the exception's type and message, as the native fast path's does.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            scope[DISCONNECTED] = True  # the client went away mid-body: nobody to answer, nothing failed here
            return
        except Exception as exc:
            if started:  # too late for an error response: the server logs it and closes the connection
                raise
            log.exception("%s %s failed", scope["method"], scope["path"])
            error = BatcheryError(f"internal error: {exc!r}")
            await protocols.error_response(scope["path"], error)(scope, receive, send)

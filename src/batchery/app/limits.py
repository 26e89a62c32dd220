"""Request body size limit, as pure ASGI middleware: 413 before the body is read when it declares too much."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchery import protocols
from batchery.errors import BadRequest, BatcheryError, PayloadTooLarge
from batchery.metrics import Metrics


class BodyLimit:
    """Refuse bodies over `max_bytes`: by `Content-Length` at once, or while streaming a chunked body."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, metrics: Metrics | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    if self.metrics is not None and declared > limit:
                        self.metrics.rejected("", "too_large", 1)
                    await protocols.error_response(scope["path"], self._error(declared))(scope, receive, send)
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)

    def _error(self, declared: int) -> BatcheryError:
        if declared < 0:
            return BadRequest("the Content-Length header is not a valid size")
        return PayloadTooLarge(f"the request body has {declared} bytes; the limit is {self.max_bytes}")

"""Server-Sent Events for streaming models: `POST /v1/models/{name}/stream` with `{"input": x}`.

Each partial result is one event, `data: <json>`; the stream ends with `data: [DONE]`, or with
`event: error` and `data: {"error": {"code", "message"}}` when the model fails mid-stream.
Errors found before the first event (unknown model, bad input, full queue) are ordinary JSON errors.
A client that disconnects is dropped from its batch's later steps.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from batchery.app.deadline import request_priority
from batchery.batching.streaming import END, Stream, StreamingModel
from batchery.config import Settings
from batchery.engine import Engine
from batchery.errors import BadRequest, BatcheryError, DeadlineExceeded, PredictError
from batchery.protocols.responses import error_response, numpy_as_json
from batchery.protocols.serving import Serving, requesting_client

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # keeps reverse proxies such as nginx from holding events back
]
DONE_EVENT = b"data: [DONE]\n\n"

REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {}},
    "required": ["input"],
    "example": {"input": "stream these words back one by one"},
}


@dataclass(slots=True)
class _Failed:
    error: BatcheryError


_DISCONNECTED = object()
_EXPIRED = object()  # the deadline passed (it matters only before the stream's first message)


def decode(body: bytes) -> Any:
    """The one input of a stream request."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "input" not in data:
        raise BadRequest('the body must be a JSON object with an "input" field: {"input": ...}')
    return data["input"]


def encode(partial: Any) -> bytes:
    """One partial result as one SSE event."""
    return b"data: " + orjson.dumps(partial, default=numpy_as_json, option=_DUMPS_OPTIONS) + b"\n\n"


def encode_error(error: BatcheryError) -> bytes:
    body = orjson.dumps({"error": {"code": error.code, "message": error.message}})
    return b"event: error\ndata: " + body + b"\n\n"


class EventStream(Response):
    """Sends a `Stream`'s partials as they come; watches for the client leaving and cancels the stream then.

    The status line waits for the stream's first message: an input refused or dropped while it waited for a
    batch (full queue, shed, its deadline) is an ordinary JSON error with its own status (503 with Retry-After,
    504), not a 200 followed by an error event. `X-Model-Version` is read then, from the version computing it.
    """

    def __init__(self, stream: Stream, task: asyncio.Future[list[Any]], deadline: float | None) -> None:
        super().__init__()
        self.stream = stream
        self.task = task
        self.deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream, task = self.stream, self.task
        queue = stream.queue
        task.add_done_callback(lambda done: queue.put_nowait(_outcome(done)))
        watcher = asyncio.create_task(_wait_for_disconnect(receive))
        watcher.add_done_callback(lambda _: queue.put_nowait(_DISCONNECTED))
        timer = None
        if self.deadline is not None:  # it bounds the wait for a batch; a running stream is not cut short
            loop = asyncio.get_running_loop()
            timer = loop.call_at(loop.time() + max(0.0, self.deadline - time.monotonic()), queue.put_nowait, _EXPIRED)
        started = complete = False  # complete: the lane is done with this stream (END or an error came)
        try:
            while not complete:
                messages = [await queue.get()]
                while not queue.empty():  # partials that arrived together leave in one write
                    messages.append(queue.get_nowait())
                chunks: list[bytes] = []
                unsendable = False
                for message in messages:
                    if message is _DISCONNECTED:
                        return
                    if message is _EXPIRED:
                        if started or chunks or stream.started:  # its batch is computing: not cut short
                            continue
                        message = _Failed(DeadlineExceeded("the request's deadline passed before its stream started"))
                    if message is END:
                        chunks.append(DONE_EVENT)
                        complete = True
                        break
                    if isinstance(message, _Failed):
                        if not started and not chunks:  # nothing sent yet: an ordinary error response
                            await error_response(message.error)(scope, receive, send)
                            return
                        chunks.append(encode_error(message.error))
                        complete = True
                        break
                    try:
                        chunks.append(encode(message))
                    except TypeError as exc:  # orjson cannot encode it: end this stream with an error event
                        chunks.append(encode_error(PredictError(f"a partial result cannot be sent as JSON: {exc}")))
                        unsendable = True
                        break
                if not started:
                    started = True
                    # A partial or END came from a lane, which set the version when its batch was dispatched.
                    headers = [*_HEADERS, (b"x-model-version", stream.version.encode("latin-1"))]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                last = complete or unsendable
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": not last})
                if unsendable:
                    return
        except OSError:
            return  # the client went away while we wrote (ASGI 2.4 servers raise here)
        finally:
            if timer is not None:
                timer.cancel()
            if not complete:
                stream.cancelled = True  # the lane skips this stream from its next step on
                task.cancel()
            watcher.cancel()


def _outcome(task: asyncio.Future[Any]) -> Any:
    if task.cancelled():
        return _DISCONNECTED
    error = task.exception()
    if error is None:
        return END  # the lane already queued this stream's END; a second one is never read
    if not isinstance(error, BatcheryError):
        error = PredictError(f"the stream failed: {error!r}")
    return _Failed(error)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def routes(engine: Engine, settings: Settings) -> APIRouter:
    """`POST /v1/models/{name}/stream`."""
    router = APIRouter(tags=["models"])
    serving = Serving(engine, settings, "stream")

    async def stream(request: Request) -> Response:
        handle = engine.handle(request.path_params["name"])
        if not isinstance(handle.prototype, StreamingModel):
            raise BadRequest(
                f"model '{handle.name}' does not stream; call POST /v1/models/{handle.name}/predict instead, "
                "or give the model `stream = True` and a predict that yields steps"
            )
        (payload,) = engine.decode(handle, [decode(await request.body())])
        item = Stream(payload, asyncio.get_running_loop())
        scope = request.scope
        client, priority = requesting_client(scope), request_priority(scope)
        # The deadline bounds the wait for a batch (504 before any event); a running stream is not cut short.
        deadline = serving.deadline(request)
        task = asyncio.ensure_future(
            engine.infer_decoded(handle, [item], deadline=deadline, client=client, priority=priority)
        )
        # One turn of the loop runs the task up to its queueing, so a full queue is a 503 at once.
        await asyncio.sleep(0)
        error = task.exception() if task.done() else None
        if error is not None:
            raise error
        return EventStream(item, task, deadline)

    router.add_api_route(
        "/v1/models/{name}/stream",
        stream,
        methods=["POST"],
        summary="Stream a streaming model's partial results as Server-Sent Events",
        response_class=Response,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}}},
    )
    return router

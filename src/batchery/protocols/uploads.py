"""File uploads and pipelines on the native route: `POST /v1/models/{name}/predict`.

This router is placed before the native one and takes a request only when its body is `multipart/form-data`
(one or several files, each an input, in form order) or when `{name}` is a pipeline (JSON as in the native
protocol). Every other request falls through to the native route. Needs `python-multipart` for uploads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from batchery.app.deadline import infer_pipeline_until, infer_until, request_deadline, request_priority
from batchery.config import Settings
from batchery.engine import Engine
from batchery.errors import BadRequest, BatcheryError, InvalidInput, PayloadTooLarge
from batchery.images import DEFAULT_LIMITS, ImageLimits, check_media_type
from batchery.protocols import native
from batchery.protocols.responses import json_response
from batchery.protocols.serving import requesting_client

MULTIPART = b"multipart/form-data"
T = TypeVar("T")


def is_multipart(scope: Scope) -> bool:
    for key, value in scope["headers"]:
        if key == b"content-type":
            return bool(value.lower().startswith(MULTIPART))
    return False


def _route_class(takes: Callable[[Scope, str], bool]) -> type[APIRoute]:
    class UploadRoute(APIRoute):
        """Matches only the requests this adapter takes, so that the others reach the native route."""

        def matches(self, scope: Scope) -> tuple[Match, Scope]:
            match, child = super().matches(scope)
            if match is Match.FULL and not takes(scope, child["path_params"]["name"]):
                return Match.NONE, {}
            return match, child

    return UploadRoute


def routes(engine: Engine, settings: Settings) -> APIRouter:
    """The upload route for models and pipelines, and the JSON route for pipelines."""
    pipelines = engine.pipelines
    router = APIRouter(tags=["uploads"], route_class=_route_class(lambda s, name: name in pipelines or is_multipart(s)))
    max_items = settings.max_items
    timeout = settings.request_timeout_ms / 1000.0

    async def predict(request: Request) -> Response:
        name = request.path_params["name"]
        target = pipelines[name].pipeline if name in pipelines else engine.handle(name).prototype
        if is_multipart(request.scope):
            limits: ImageLimits = getattr(target, "image_limits", DEFAULT_LIMITS)
            inputs: list[Any] = await read_files(request, limits, max_items=max_items)
            single = len(inputs) == 1
        else:
            inputs, single = native.decode(await request.body(), max_items=max_items)
        deadline = request_deadline(request.scope, timeout)
        priority = request_priority(request.scope)
        client = requesting_client(request.scope)
        # A client that hangs up is cancelled where the connection is lost (app/fastpath.py): its later stages, and
        # its inputs still queued, are not computed for nobody.
        if name in pipelines:
            outputs = await infer_pipeline_until(engine, name, inputs, deadline, client=client, priority=priority)
            version = pipelines[name].version  # a config file may set it
        else:
            compute = infer_until(engine, engine.handle(name), inputs, deadline, client=client, priority=priority)
            outputs, version = await compute
        body = native.encode(outputs, single, model=name, version=version)
        return json_response(body, headers={"X-Model-Version": version})

    router.add_api_route(
        "/v1/models/{name}/predict",
        predict,
        methods=["POST"],
        operation_id="predict_upload",  # shares its path with the native predict route
        summary="Upload one or several files (multipart/form-data): each file is an input",
        openapi_extra={
            "requestBody": {
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                        }
                    }
                }
            }
        },
    )
    return router


async def read_files(request: Request, limits: ImageLimits, *, max_items: int) -> list[bytes]:
    """The uploaded files' bytes in form order; 413/415/422 for too many or too large, the wrong type, none."""
    try:
        form = await request.form(max_files=max_items, max_fields=max_items)
    except AssertionError as exc:  # starlette asserts that python-multipart is installed
        raise ImportError("multipart uploads need python-multipart: pip install 'batchery[images]'") from exc
    except BatcheryError:  # the body limit's 413 (BodyLimit), raised from inside the form parser
        raise
    except ClientDisconnect:
        raise
    except Exception as exc:  # starlette raises MultiPartException (and HTTPException) for a malformed form
        if "Too many" in str(exc):
            raise PayloadTooLarge(f"too many parts in the form; the limit is {max_items}") from exc
        raise BadRequest(f"the multipart body cannot be read: {exc}") from exc
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise InvalidInput("the form has no file; upload at least one file (any field name)")
        inputs = []
        for upload in files:
            check_media_type(upload.content_type, limits)
            if upload.size is not None and upload.size > limits.max_bytes:
                raise PayloadTooLarge(
                    f"file {upload.filename!r} has {upload.size} bytes; the limit is {limits.max_bytes}"
                )
            inputs.append(await upload.read())
        return inputs
    finally:
        await form.close()

"""batchery's own JSON protocol: `POST /v1/models/{name}/predict`.

Request: `{"input": x}` for one input or `{"inputs": [x, y, ...]}` for several.
Response: `{"output": ...}` or `{"outputs": [...]}` to match, plus `"model"` and `"version"`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from batchery.app.deadline import infer_until, request_deadline, request_priority
from batchery.cache import ResponseCache, canonical_json
from batchery.config import Settings
from batchery.engine import Engine, ModelHandle
from batchery.errors import BadRequest, InvalidInput, PayloadTooLarge, PredictError
from batchery.protocols.responses import json_response, numpy_as_json
from batchery.protocols.serving import cached, requesting_client

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

REQUEST_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "object", "properties": {"input": {}}, "required": ["input"]},
        {"type": "object", "properties": {"inputs": {"type": "array", "minItems": 1}}, "required": ["inputs"]},
    ],
    "example": {"inputs": ["A sentence to embed.", "Another one."]},
}


def decode(body: bytes, *, max_items: int) -> tuple[list[Any], bool]:
    """Parse a predict body into its inputs; the flag says whether it was the single-input form."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object: {"input": ...} or {"inputs": [...]}')
    if "input" in data and "inputs" in data:
        raise BadRequest('the body has both "input" and "inputs"; send one: {"input": x} or {"inputs": [x, ...]}')
    if "inputs" in data:
        inputs = data["inputs"]
        if not isinstance(inputs, list):
            raise InvalidInput(f'"inputs" must be a list, got {type(inputs).__name__}')
        if not inputs:
            raise InvalidInput('"inputs" is empty; send at least one input')
        if len(inputs) > max_items:
            raise PayloadTooLarge(f'"inputs" has {len(inputs)} items; the limit is {max_items} per request')
        return inputs, False
    if "input" in data:
        return [data["input"]], True
    raise BadRequest('the body must have an "input" or an "inputs" field')


def encode(outputs: list[Any], single: bool, *, model: str, version: str) -> bytes:
    """Serialise outputs (numpy arrays included) into the response body."""
    body: dict[str, Any] = {"model": model, "version": version}
    if single:
        body["output"] = outputs[0]
    else:
        body["outputs"] = outputs
    try:
        return orjson.dumps(body, default=numpy_as_json, option=_DUMPS_OPTIONS)
    except TypeError as exc:  # orjson.JSONEncodeError: an object JSON cannot hold
        raise PredictError(
            f"model '{model}' returned an output that cannot be sent as JSON ({exc}). Hint: return lists, numbers, "
            "strings, dicts or numpy arrays, or convert outputs in encode_response"
        ) from exc


async def _compute(
    engine: Engine, handle: ModelHandle, inputs: list[Any], single: bool, deadline: float | None, scope: Scope
) -> tuple[bytes, str]:
    client = requesting_client(scope)
    outputs, version = await infer_until(
        engine, handle, inputs, deadline, client=client, priority=request_priority(scope)
    )
    return encode(outputs, single, model=handle.name, version=version), version


Predictor = Callable[[Scope, str, bytes, "ResponseCache | None"], Awaitable[tuple[bytes, dict[str, str]]]]


def predictor(engine: Engine, settings: Settings) -> Predictor:
    """The predict route's work, framework-free: (scope, model name, raw body, cache) to (body, headers)."""
    max_items = settings.max_items
    timeout = settings.request_timeout_ms / 1000.0
    caching = bool(settings.cache)

    async def predict(
        scope: Scope, name: str, raw: bytes, responses: ResponseCache | None
    ) -> tuple[bytes, dict[str, str]]:
        handle = engine.handle(name)
        inputs, single = decode(raw, max_items=max_items)
        deadline = request_deadline(scope, timeout)
        if caching and responses is not None and responses.enabled(handle.name):
            body, hit, version = await cached(
                responses,
                "native",
                handle,
                canonical_json((single, inputs)),
                lambda: _compute(engine, handle, inputs, single, deadline, scope),
                deadline,
            )
            return body, {"X-Model-Version": version, "X-Cache": "hit" if hit else "miss"}
        body, version = await _compute(engine, handle, inputs, single, deadline, scope)
        return body, {"X-Model-Version": version}

    return predict


def routes(engine: Engine, settings: Settings) -> APIRouter:
    """`GET /v1/models` and `POST /v1/models/{name}/predict`."""
    router = APIRouter(tags=["models"])

    async def list_models() -> Response:
        from batchery.protocols.openai_compat import model_objects

        # One body for both clients: OpenAI's list ("object", "data") and batchery's own ("models").
        infos = engine.models()
        return json_response(orjson.dumps({"object": "list", "data": model_objects(infos), "models": infos}))

    predict_bytes = predictor(engine, settings)

    # Normally app/fastpath.py answers this route below the framework; this endpoint serves the same requests
    # (and documents them in /docs) when the app is used without it.
    async def predict(request: Request) -> Response:
        body, headers = await predict_bytes(
            request.scope, request.path_params["name"], await request.body(), request.app.state.responses
        )
        return json_response(body, headers=headers)

    router.add_api_route(
        "/v1/models", list_models, methods=["GET"], summary="The served models, their status and batching settings"
    )
    router.add_api_route(
        "/v1/models/{name}/predict",
        predict,
        methods=["POST"],
        summary="Compute outputs for one input or a list of inputs",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}}},
    )
    return router

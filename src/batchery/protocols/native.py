"""batchery's own JSON protocol: `POST /v1/models/{name}/predict`.

Request: `{"input": x}` for one input or `{"inputs": [x, y, ...]}` for several.
Response: `{"output": ...}` or `{"outputs": [...]}` to match, plus `"model"` and `"version"`.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from batchery.config import Settings
from batchery.engine import Engine
from batchery.errors import BadRequest, InvalidInput, PayloadTooLarge
from batchery.protocols.responses import json_response

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
    if single:
        return orjson.dumps({"model": model, "version": version, "output": outputs[0]}, option=_DUMPS_OPTIONS)
    return orjson.dumps({"model": model, "version": version, "outputs": outputs}, option=_DUMPS_OPTIONS)


def routes(engine: Engine, settings: Settings) -> APIRouter:
    """`GET /v1/models` and `POST /v1/models/{name}/predict`."""
    router = APIRouter(tags=["models"])
    max_items = settings.max_items

    async def list_models() -> Response:
        from batchery.protocols.openai_compat import model_objects

        # One body for both clients: OpenAI's list ("object", "data") and batchery's own ("models").
        infos = engine.models()
        return json_response(orjson.dumps({"object": "list", "data": model_objects(infos), "models": infos}))

    # The predict endpoint reads the raw body and returns ready bytes: no per-request validation framework.
    async def predict(request: Request) -> Response:
        handle = engine.handle(request.path_params["name"])
        inputs, single = decode(await request.body(), max_items=max_items)
        outputs = await engine.infer(handle.name, inputs)
        body = encode(outputs, single, model=handle.name, version=handle.version)
        return json_response(body, headers={"X-Model-Version": handle.version})

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

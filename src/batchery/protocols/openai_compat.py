"""OpenAI-compatible embeddings: `POST /v1/embeddings`, so the official `openai` client works unmodified.

Request: `{"model": name, "input": text | [text, ...], "encoding_format": "float" | "base64", "dimensions": n}`.
Response: `{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": ...}], "model", "usage"}`.
Errors: `{"error": {"message", "type", "param", "code"}}`, as OpenAI sends them.
A list input is batched like any other inputs (split across batches when long) and answered in order.
`GET /v1/models/{name}` is one model object, as the client's `models.retrieve` reads it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from batchery.cache import canonical_json
from batchery.config import Settings
from batchery.engine import Engine
from batchery.errors import (
    BadRequest,
    BatcheryError,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from batchery.protocols.responses import json_response
from batchery.protocols.serving import Serving, count_refusal

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
ENCODINGS = ("float", "base64")

REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
        "encoding_format": {"type": "string", "enum": list(ENCODINGS)},
        "dimensions": {"type": "integer"},
        "user": {"type": "string"},
    },
    "required": ["model", "input"],
    "example": {"model": "all-minilm-l6-v2", "input": ["A sentence to embed.", "Another one."]},
}

MODEL_OBJECT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
    "required": ["id", "object", "created", "owned_by"],
}

_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


class ParamError(BatcheryError):
    """A request field has a value this server cannot honour; `param` names the field, as OpenAI's errors do."""

    def __init__(self, message: str, param: str, *, status: int = 400, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.status = status
        self.code = code


def decode(body: bytes, *, max_items: int) -> tuple[str, list[Any], str, int | None]:
    """Parse an embeddings request into (model, inputs, encoding_format, dimensions)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object such as {"model": "...", "input": "text"}')
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ParamError("you must provide a model parameter: the name of a served model (see GET /v1/models)", "model")
    if "input" not in data:
        raise ParamError("you must provide an input parameter: a string or a list of strings", "input")
    raw = data["input"]
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs:
        raise ParamError("input must be a non-empty string or a non-empty list of strings", "input")
    if len(inputs) > max_items:
        limit = f"input has {len(inputs)} items; the limit is {max_items} per request: split it into several"
        raise ParamError(limit, "input", status=PayloadTooLarge.status, code=PayloadTooLarge.code)
    first = inputs[0]
    if not isinstance(first, str | bool) and isinstance(first, int | list):  # bool is an int, but not a token
        raise ParamError(
            "token arrays are not supported: send the text itself, as a string or list of strings", "input"
        )
    encoding = data.get("encoding_format", "float")
    if encoding is None:  # null is "not given", as for dimensions; any other value must be one of ENCODINGS
        encoding = "float"
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise ParamError(f"encoding_format must be 'float' or 'base64', not {encoding!r}", "encoding_format")
    dimensions = data.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        raise ParamError(f"dimensions must be a positive integer, not {dimensions!r}", "dimensions")
    return model, inputs, encoding, dimensions


def encode(outputs: Sequence[Any], *, model: str, encoding: str, dimensions: int | None, prompt_tokens: int) -> bytes:
    """The response body; raise when an output is not a flat numeric vector of the requested size."""
    data = []
    for index, output in enumerate(outputs):
        vector = output if isinstance(output, np.ndarray) else np.asarray(output)
        if vector.ndim != 1 or vector.dtype.kind not in "fiu":
            raise ParamError(
                f"model '{model}' does not return embeddings (output {index} is not a flat list of numbers); "
                "choose an embedding model from GET /v1/models",
                "model",
            )
        if dimensions is not None and dimensions != vector.shape[0]:
            raise _unsupported_dimensions(model, vector.shape[0], dimensions)
        if encoding == "base64":
            embedding: Any = base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
        else:
            embedding = vector if vector.dtype == np.float32 else vector.astype(np.float32)
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage}, option=_DUMPS_OPTIONS)


def encode_error(error: BatcheryError) -> Response:
    """`{"error": {"message", "type", "param", "code"}}` with the error's status; bad input is a 400, as OpenAI's."""
    status = 400 if isinstance(error, InvalidInput) else error.status
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    param = getattr(error, "param", None)
    if param is None and isinstance(error, InvalidInput) and error.message.startswith("input "):
        param = "input"
    body = orjson.dumps({"error": {"message": error.message, "type": kind, "param": param, "code": error.code}})
    headers = {"Retry-After": str(max(1, round(error.retry_after)))} if error.retry_after is not None else None
    return json_response(body, status, headers)


def model_objects(infos: Sequence[Any], created: int | None = None) -> list[dict[str, Any]]:
    """The served models as OpenAI's `GET /v1/models` lists them.

    Served models carry no creation date; `created` is the time of the listing unless given.
    """
    when = int(time.time()) if created is None else created
    return [{"id": info.name, "object": "model", "created": when, "owned_by": "batchery"} for info in infos]


#: Inputs of more characters than this are counted on a worker thread, not on the event loop.
INLINE_COUNT_CHARS = 4096


def count_tokens(model: Any, texts: Sequence[Any]) -> int:
    """Tokens in `texts` by the model's own `count_tokens(texts)` when it has one, else whitespace-separated words."""
    counter = getattr(model, "count_tokens", None)
    if counter is not None:
        return int(sum(counter(list(texts))))
    return sum(len(text.split()) for text in texts if isinstance(text, str))


def _unsupported_dimensions(model: str, native: int, asked: int) -> ParamError:
    return ParamError(
        f"model '{model}' returns {native}-dimensional embeddings and cannot shorten them; "
        f"omit dimensions or set it to {native}",
        "dimensions",
    )


def routes(engine: Engine, settings: Settings) -> APIRouter:
    """`POST /v1/embeddings` and `GET /v1/models/{name}`. (`GET /v1/models` is the native route; it carries
    OpenAI's fields too.)"""
    router = APIRouter(tags=["openai"])
    max_items = settings.max_items
    serving = Serving(engine, settings, "openai")

    async def embeddings(request: Request) -> Response:
        try:
            encoded = request.headers.get("content-encoding", "identity").strip().lower()
            if encoded != "identity":
                raise UnsupportedMediaType(
                    f"Content-Encoding {encoded!r} is not supported on /v1/embeddings; send the body uncompressed"
                )
            name, inputs, encoding, dimensions = decode(await request.body(), max_items=max_items)
            try:
                handle = engine.handle(name)
            except ModelNotFound as exc:
                raise ParamError(exc.message, "model", status=exc.status, code=exc.code) from exc
            model = handle.decoder
            native = getattr(model, "dimensions", None)
            if dimensions is not None and isinstance(native, int) and native != dimensions:
                raise _unsupported_dimensions(handle.name, native, dimensions)

            async def compute() -> bytes:
                outputs, _ = await serving.infer(request, handle, inputs)
                # A tokenizer over many long texts takes a second or more: off the event loop, which serves
                # every other request (and the probes) meanwhile. A few short texts take microseconds, less
                # than the hop to a thread.
                if sum(len(text) for text in inputs if isinstance(text, str)) > INLINE_COUNT_CHARS:
                    tokens = await asyncio.to_thread(count_tokens, model, inputs)
                else:
                    tokens = count_tokens(model, inputs)
                return encode(
                    outputs, model=handle.name, encoding=encoding, dimensions=dimensions, prompt_tokens=tokens
                )

            canonical = canonical_json((inputs, encoding, dimensions))
            body, cache, version = await serving.cached(request, handle, canonical, compute)
        except BatcheryError as exc:
            count_refusal(request, exc, engine)
            return encode_error(exc)
        headers = {"X-Model-Version": version}  # the version that computed it, shared or stored included
        if cache is not None:
            headers["X-Cache"] = cache
        return json_response(body, headers=headers)

    async def retrieve(request: Request) -> Response:
        name = request.path_params["name"]
        infos = engine.models()
        found = [info for info in infos if info.name == name]
        if not found:
            served = ", ".join(sorted(info.name for info in infos))
            error = ParamError(
                f"the model '{name}' does not exist; this server serves: {served} (GET /v1/models lists them)",
                "model",
                status=ModelNotFound.status,
                code=ModelNotFound.code,
            )
            return encode_error(error)
        return json_response(orjson.dumps(model_objects(found)[0]))

    router.add_api_route(
        "/v1/models/{name}",
        retrieve,
        methods=["GET"],
        summary="One served model, as OpenAI's models.retrieve reads it",
        responses={200: {"description": "The model", "content": {"application/json": {"schema": MODEL_OBJECT}}}},
    )
    router.add_api_route(
        "/v1/embeddings",
        embeddings,
        methods=["POST"],
        summary="OpenAI-compatible embeddings of a string or a list of strings",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}}},
    )
    return router

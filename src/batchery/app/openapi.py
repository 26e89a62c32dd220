"""The OpenAPI document tells the truth about routes that parse and render bytes by hand.

Their handlers return ready `Response`s, so FastAPI cannot infer their shapes: `describe(app)` adds each route's
real success body (by method and path, below) and, to every operation, the error answers any route may give
(`{"error": {"code", "message"}}`, or the protocol's own error shape) with a status that says what went wrong.
Routes it does not know keep what FastAPI generated.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from fastapi import FastAPI

_STRING, _BOOL, _INT = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": {**required, **(optional or {})}, "required": list(required)}


ERROR = _object({"error": _object({"code": _STRING, "message": _STRING})})
#: OpenAI's error shape (its clients parse this one): /v1/embeddings answers errors in it.
OPENAI_ERROR = _object({"error": _object({"message": _STRING, "type": _STRING, "code": _STRING}, {"param": {}})})
#: KServe V2's error shape: /v2 routes answer their own errors in it (the middleware's refusals are batchery's).
KSERVE_ERROR = _object({"error": _STRING})
_ERRORS = {
    "400": "The body or a header cannot be read (malformed JSON, bad header value)",
    "401": "An API key is needed and none was sent",
    "403": "The API key is wrong, or not the admin key an /admin route needs, or the client is not allowed",
    "404": "No model (or route) of that name",
    "405": "The route does not take this method",
    "408": "The request did not arrive in time",
    "409": "Not possible in the current state (e.g. no previous version to roll back to)",
    "413": "The body, an input or the number of inputs is over a limit",
    "415": "A body or upload of a type the model cannot read",
    "422": "The body parsed, but an input is of the wrong type or value",
    "429": "Over the rate limit: retry after Retry-After seconds",
    "431": "The request line and headers are too large",
    "500": "The model failed on this batch",
    "502": "A remote service called by a pipeline failed",
    "503": "Overloaded, starting up or draining: retry after Retry-After seconds",
    "504": "The request's deadline passed",
}

MODEL_INFO = _object(
    {"name": _STRING, "version": _STRING, "status": _STRING},
    {"device": _STRING, "workers": _INT, "max_batch_size": _INT, "max_delay_ms": {"type": "number"}},
)
PREDICTION = {
    "oneOf": [
        _object({"model": _STRING, "version": _STRING, "output": {}}),
        _object({"model": _STRING, "version": _STRING, "outputs": {"type": "array"}}),
    ]
}
EMBEDDINGS = _object(
    {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": _object(
                {"object": {"const": "embedding"}, "index": _INT, "embedding": {"type": ["array", "string"]}}
            ),
        },
        "model": _STRING,
        "usage": _object({"prompt_tokens": _INT, "total_tokens": _INT}),
    }
)
TENSOR = _object({"name": _STRING, "datatype": _STRING, "shape": {"type": "array", "items": _INT}})
TENSOR_META = _object({"name": _STRING, "datatype": _STRING, "shape": {"type": "array", "items": _INT}})
KSERVE_INFER_REQUEST = _object(
    {"inputs": {"type": "array", "items": TENSOR, "minItems": 1}},
    {"id": _STRING, "parameters": {"type": "object"}, "outputs": {"type": "array", "items": {"type": "object"}}},
)
KSERVE_INFER_RESPONSE = _object(
    {"model_name": _STRING, "outputs": {"type": "array", "items": TENSOR}}, {"model_version": _STRING, "id": _STRING}
)
VERSIONS = _object({"model": _STRING, "version": _STRING, "previous_versions": {"type": "array", "items": _STRING}})
RELOAD_REQUEST = {
    "type": "object",
    "properties": {
        "target": {"type": "string", "minLength": 1},
        "version": {"type": "string", "pattern": "^[!-~]{1,64}$"},
    },
    "additionalProperties": False,
    "example": {"target": "my_model.py:MyModel", "version": "2"},
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


#: (method, path) -> (success status, its content, request body content or None).
ROUTES: dict[tuple[str, str], tuple[str, dict[str, Any], dict[str, Any] | None]] = {
    ("get", "/health"): ("200", _json(_object({"status": {"const": "ok"}})), None),
    ("get", "/ready"): ("200", _json(_object({"ready": _BOOL})), None),
    ("get", "/metrics"): ("200", {"text/plain": {"schema": _STRING}}, None),
    ("post", "/admin/cache/clear"): ("200", _json(_object({"cleared": _BOOL})), None),
    ("get", "/v1/models"): (
        "200",
        _json(
            _object(
                {
                    "object": {"const": "list"},
                    "data": {"type": "array"},
                    "models": {"type": "array", "items": MODEL_INFO},
                }
            )
        ),
        None,
    ),
    ("post", "/v1/models/{name}/predict"): ("200", _json(PREDICTION), None),
    ("post", "/v1/embeddings"): ("200", _json(EMBEDDINGS), None),
    ("post", "/v1/models/{name}/stream"): ("200", {"text/event-stream": {"schema": _STRING}}, None),
    ("get", "/v2"): (
        "200",
        _json(_object({"name": _STRING, "version": _STRING, "extensions": {"type": "array"}})),
        None,
    ),
    ("get", "/v2/health/live"): ("200", _json(_object({"live": _BOOL})), None),
    ("get", "/v2/health/ready"): ("200", _json(_object({"ready": _BOOL})), None),
    ("post", "/admin/models/{name}/reload"): ("200", _json(VERSIONS), _json(RELOAD_REQUEST)),
    ("post", "/admin/models/{name}/rollback"): ("200", _json(VERSIONS), None),
    ("get", "/dashboard"): ("200", {"text/html": {"schema": _STRING}}, None),
    ("get", "/dashboard/data"): ("200", _json({"type": "object"}), None),
}
for _prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
    ROUTES[("get", _prefix)] = (
        "200",
        _json(_object({"name": _STRING, "platform": _STRING, "inputs": {"type": "array", "items": TENSOR_META}})),
        None,
    )
    ROUTES[("get", _prefix + "/ready")] = ("200", _json(_object({"name": _STRING, "ready": _BOOL})), None)
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    ROUTES[("post", _prefix + "/infer")] = (
        "200",
        {**_json(KSERVE_INFER_RESPONSE), **binary},
        {**_json(KSERVE_INFER_REQUEST), **binary},
    )


def describe(app: FastAPI) -> None:
    """Make `app.openapi()` return the generated document completed as described in the module docstring."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = copy.deepcopy(generate())
        engine = getattr(app.state, "engine", None)
        served = sorted([*engine.handles, *engine.pipelines]) if engine is not None else []
        for path, operations in document.get("paths", {}).items():
            for method, operation in operations.items():
                _complete(method, path, operation)
                _declare_path_parameters(path, operation, served)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _complete(method: str, path: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    known = ROUTES.get((method, path))
    if known is not None:
        status, content, request = known
        success = responses.pop("200", {"description": "Successful Response"})
        responses[status] = {"description": success.get("description", "Successful Response"), "content": content}
        if request is not None:
            body = operation.setdefault("requestBody", {"content": {}})
            body["content"] = {**request, **body.get("content", {})} if "reload" not in path else request
    if path in ("/ready", "/v2/health/ready"):
        responses["503" if path == "/ready" else "400"] = {
            "description": "Not ready yet (loading) or draining",
            "content": _json(_object({"ready": _BOOL})),
        }
    error = ERROR
    if path == "/v1/embeddings":
        error = {"anyOf": [OPENAI_ERROR, ERROR]}
    elif path.startswith("/v2"):
        error = {"anyOf": [KSERVE_ERROR, ERROR]}
    for status, description in _ERRORS.items():
        responses.setdefault(status, {"description": description, "content": _json(error)})


def _declare_path_parameters(path: str, operation: dict[str, Any], served: list[str]) -> None:
    """Declare the path's `{name}` and `{version}`: handlers that take the bare request declare nothing, which
    leaves the document invalid and /docs without a field for them. `{name}` lists the served models."""
    declared = {p.get("name") for p in operation.get("parameters", []) if p.get("in") == "path"}
    for name in re.findall(r"{(\w+)}", path):
        if name in declared:
            continue
        schema: dict[str, Any] = {"type": "string"}
        if name == "name" and served:
            schema["example"] = served[0]
            description = f"The model (or pipeline) to use; this server serves {', '.join(served)}"
        else:
            description = "The model version (this server answers with the version it serves)"
        parameter = {"name": name, "in": "path", "required": True, "schema": schema, "description": description}
        operation.setdefault("parameters", []).append(parameter)

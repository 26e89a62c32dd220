"""Ready-made responses shared by every protocol adapter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from batchery.errors import BatcheryError


def numpy_as_json(value: Any) -> Any:
    """orjson's `default`: what its numpy support leaves out (arrays of strings or objects, strided arrays, some
    scalar types) as plain lists and numbers. Called only for what orjson cannot write itself."""
    if hasattr(value, "dtype") and callable(getattr(value, "tolist", None)):
        return value.tolist()
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def json_response(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A response around bytes that are already JSON."""
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error_response(error: BatcheryError) -> Response:
    """`{"error": {"code", "message"}}` with the error's status, and `Retry-After` when it has one."""
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    body = orjson.dumps({"error": {"code": error.code, "message": error.message}})
    return json_response(body, error.status, headers)

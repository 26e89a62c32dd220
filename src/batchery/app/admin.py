"""Admin routes: hot reload and rollback of a model, without a restart and without dropping a request.

`POST /admin/models/{name}/reload` with an optional body `{"target": "file.py:Class", "version": "2"}` loads the
new version beside the current one and swaps atomically; `POST /admin/models/{name}/rollback` serves the previous
version again. /admin needs the admin key (BATCHERY_ADMIN_API_KEY); with none configured the auth middleware
refuses it, since a reload can load code from a file path.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from batchery.config import Settings
from batchery.engine import Engine
from batchery.errors import BadRequest, ConfigError, InvalidInput
from batchery.protocols.responses import json_response

_VERSION = re.compile(r"[!-~]{1,64}")


def routes(engine: Engine, settings: Settings) -> APIRouter:
    """The admin router (reload, rollback)."""
    router = APIRouter(prefix="/admin", tags=["admin"])

    async def reload(request: Request) -> Response:
        name = request.path_params["name"]
        handle = engine.handle(name)
        target, version = _reload_body(await request.body())
        if target is None:
            label = await handle.reload(version=version)  # on failure the old version keeps serving (handle.py)
            return _answer(name, label, handle.history)
        from batchery.loader import served

        try:
            # Imported afresh: a file loaded before may have changed since. Later plain reloads, and --watch,
            # rebuild from this target from now on.
            source = served(target, fresh=True)
        except ConfigError as exc:  # the caller's target is wrong, not the server (found by fuzzing)
            raise InvalidInput(f'"target": {exc.message}') from exc
        label = await handle.reload(source.model, version, reimport=source.reimport, files=source.files)
        return _answer(name, label, handle.history)

    async def rollback(request: Request) -> Response:
        name = request.path_params["name"]
        handle = engine.handle(name)
        label = await handle.rollback()
        return _answer(name, label, handle.history)

    router.add_api_route(
        "/models/{name}/reload", reload, methods=["POST"], summary="Load a new version beside the current one, swap"
    )
    router.add_api_route(
        "/models/{name}/rollback", rollback, methods=["POST"], summary="Serve the previous version of a model again"
    )
    return router


def _reload_body(body: bytes) -> tuple[str | None, str | None]:
    if not body.strip():
        return None, None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or set(data) - {"target", "version"}:
        raise BadRequest('the body may only hold "target" (file.py:Class or module:Class) and "version"')
    target, version = data.get("target"), data.get("version")
    for key, value in (("target", target), ("version", version)):
        if value is not None and (not isinstance(value, str) or not value):
            raise BadRequest(f'"{key}" must be a non-empty string')
    # The version travels in the X-Model-Version header: a line break or non-ASCII there was a 500 (fuzzing).
    if version is not None and not _VERSION.fullmatch(version):
        raise BadRequest('"version" must be 1 to 64 printable ASCII characters without spaces, like "2" or "2024-06.1"')
    return target, version


def _answer(name: str, version: str, history: Any) -> Response:
    body = orjson.dumps({"model": name, "version": version, "previous_versions": [s.version for s in history]})
    return json_response(body, headers={"X-Model-Version": version})

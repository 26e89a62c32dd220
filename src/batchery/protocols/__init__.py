"""Protocol adapters: each turns its wire format into `Engine.infer` calls and back, and exposes `routes()`."""

from __future__ import annotations

from typing import Protocol as _Protocol

from fastapi import APIRouter
from starlette.responses import Response

from batchery.config import Settings
from batchery.engine import Engine
from batchery.errors import BatcheryError
from batchery.protocols import kserve_v2, native, openai_compat, responses, streaming, uploads


class Protocol(_Protocol):
    """What an adapter module provides to the app factory."""

    def routes(self, engine: Engine, settings: Settings) -> APIRouter: ...


#: Adapters every app serves, in route order.
# uploads comes before native: it takes multipart bodies and pipeline names, and lets the rest through.
DEFAULT_PROTOCOLS: tuple[Protocol, ...] = (uploads, native, openai_compat, kserve_v2, streaming)


def error_response(path: str, error: BatcheryError) -> Response:
    """`error` as the protocol serving `path` writes errors: KServe V2's, OpenAI's, else batchery's own."""
    if path == "/v2" or path.startswith("/v2/"):
        return kserve_v2.error_response(error)
    if path == "/v1/embeddings":
        return openai_compat.encode_error(error)
    return responses.error_response(error)

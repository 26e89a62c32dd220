"""How the web layer answers a BatcheryError: count the refusal, log server faults, render the JSON body."""

from __future__ import annotations

import logging

from starlette.responses import Response

from batchery.engine import Engine
from batchery.errors import BatcheryError
from batchery.metrics import Metrics
from batchery.protocols.responses import error_response

log = logging.getLogger("batchery.app")

#: Refusals the web layer counts in batchery_rejected_total, by error code.
_REJECTION_REASONS = {"payload_too_large": "too_large", "not_ready": "not_ready"}


def answer(
    exc: BatcheryError, *, metrics: Metrics | None, engine: Engine, model: str, method: str, path: str
) -> Response:
    """The error response for `exc`; queue_full and deadline refusals are counted by the engine itself."""
    if metrics is not None and exc.code in _REJECTION_REASONS:
        metrics.rejected(model if model in engine.handles else "", _REJECTION_REASONS[exc.code], 1)
    if exc.status >= 500 and exc.status not in (503, 504):
        log.error("%s %s failed: %s", method, path, exc.message, exc_info=exc.__cause__)
    return error_response(exc)

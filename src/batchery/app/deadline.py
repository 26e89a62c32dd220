"""Per-request deadlines for protocol adapters: the configured default, shortened by a request header.

A request whose deadline passes before its batch runs gets 504; `infer_until` also stops waiting at the
deadline, so a request stuck behind a long batch is answered on time (its inputs are then skipped).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from starlette.types import Scope

from batchery.engine import Engine, ModelHandle
from batchery.errors import BadRequest, DeadlineExceeded

T = TypeVar("T")

HEADER = "X-Request-Timeout-Ms"
_HEADER_KEY = HEADER.lower().encode()
PRIORITY_HEADER = "X-Priority"
_PRIORITY_KEY = PRIORITY_HEADER.lower().encode()


def request_priority(scope: Scope) -> int:
    """The `X-Priority` header as an integer from -100 to 100 (higher goes first); 0 without it."""
    for key, value in scope["headers"]:
        if key == _PRIORITY_KEY:
            try:
                priority = int(value) if len(value) <= 8 else None
            except ValueError:
                priority = None
            if priority is None or not -100 <= priority <= 100:
                shown = value[:40].decode("latin-1")
                raise BadRequest(f"{PRIORITY_HEADER} must be an integer from -100 to 100, not {shown!r}")
            return priority
    return 0


def request_deadline(scope: Scope, default_seconds: float) -> float | None:
    """A `time.monotonic()` deadline, or None for none; BadRequest when the header is not a positive number."""
    for key, value in scope["headers"]:
        if key == _HEADER_KEY:
            return _shorten(value, default_seconds)
    return time.monotonic() + default_seconds if default_seconds else None


def _shorten(value: bytes, default_seconds: float) -> float:
    try:
        milliseconds = float(value) if len(value) <= 32 else math.nan
    except ValueError:
        milliseconds = math.nan
    if not (milliseconds > 0 and math.isfinite(milliseconds)):
        shown = value[:40].decode("latin-1")
        raise BadRequest(f"{HEADER} must be a positive number of milliseconds, not {shown!r}")
    seconds = milliseconds / 1000.0
    if default_seconds:
        seconds = min(seconds, default_seconds)  # the header may shorten the server's deadline, never extend it
    return time.monotonic() + seconds


async def infer_until(
    engine: Engine,
    handle: ModelHandle,
    inputs: Sequence[Any],
    deadline: float | None,
    *,
    client: str = "",
    priority: int = 0,
) -> tuple[list[Any], str]:
    """`engine.infer_versioned` that answers DeadlineExceeded (504) once `deadline` passes, wherever the inputs are.

    Returns the outputs and the model version that computed them.
    """
    if deadline is None:
        return await engine.infer_versioned(handle.name, inputs, client=client, priority=priority)

    def late() -> None:
        handle.batcher.observer.rejected(handle.name, "deadline", len(inputs))

    compute = engine.infer_versioned(handle.name, inputs, deadline=deadline, client=client, priority=priority)
    return await _by(deadline, compute, late)


async def infer_pipeline_until(
    engine: Engine, name: str, inputs: Sequence[Any], deadline: float | None, *, client: str = "", priority: int = 0
) -> list[Any]:
    """`engine.infer` of the pipeline `name`, answered with DeadlineExceeded (504) once `deadline` passes: its
    stages skip what they had not started, and its async steps' remote calls end by the deadline too. Its stage
    inputs queue as `client`'s at `priority`."""
    compute = engine.infer(name, inputs, deadline=deadline, client=client, priority=priority)
    if deadline is None:
        return await compute
    return await _by(deadline, compute)


async def _by(deadline: float, compute: Coroutine[Any, Any, T], late: Callable[[], None] = lambda: None) -> T:
    """`compute`'s result, or DeadlineExceeded once `deadline` passes (at once if it has: `compute` never runs)."""
    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0:
            compute.close()
            raise TimeoutError
        async with asyncio.timeout(remaining):
            return await compute
    except TimeoutError:
        late()
        raise DeadlineExceeded(
            f"the request's deadline of {max(0.0, remaining) * 1000:.0f} ms passed before its outputs were ready; "
            f"retry with a larger {HEADER}, or later"
        ) from None

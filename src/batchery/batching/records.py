"""The records that cross the boundary between the event loop and the worker lanes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Item:
    """One input waiting for its output; `future` is resolved on the event loop exactly once."""

    payload: Any
    future: asyncio.Future[Any]
    enqueued_at: float
    #: Monotonic time after which computing this item is pointless; None for no deadline.
    deadline: float | None = None


@dataclass(slots=True)
class Batch:
    """Items computed together by one lane. `cores` is how many CPU cores the lane may use for it."""

    items: list[Item]
    cores: int
    formed_at: float
    payloads: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class BatchResult:
    """What a lane hands back: one output per item, in order, or one error for the whole batch."""

    batch: Batch
    outputs: list[Any] | None
    error: BaseException | None
    compute_seconds: float

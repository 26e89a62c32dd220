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
    #: Size of the input in the model's cost unit (1, or tokens, pixels...), counted against the batch cost cap.
    cost: int = 1
    #: The model version that computed it, set when its future is resolved.
    version: str = ""


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
    #: One output per item; an `oom.ItemError` in a slot fails that item alone.
    outputs: list[Any] | None
    error: BaseException | None
    compute_seconds: float
    version: str = ""
    #: Batch sizes that ran out of memory while computing this batch (it was split and retried).
    failed_sizes: list[int] = field(default_factory=list)
    #: True when the batch failed and was bisected to isolate its bad inputs (`isolate.py`): its compute time
    #: covers several calls, so it says nothing about what a batch of this size costs.
    bisected: bool = False

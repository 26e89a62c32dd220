"""The dynamic batcher of one model: a bounded queue on the event loop feeding a set of lanes.

Event-driven, no polling: a batch is formed when an input arrives or a lane finishes.
- "fixed": flush when `max_batch_size` inputs wait, or `max_delay` after the first one arrived.
- "adaptive": a free lane takes what is queued now; while every lane is busy the queue grows into the next
  batch by itself, so batches are as large as the load makes them and a lone request never waits.
Expired and cancelled inputs are dropped before compute; a full queue is refused at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchery.batching.lane import Lane
from batchery.batching.records import Batch, BatchResult, Item
from batchery.errors import DeadlineExceeded, Overloaded, PredictError
from batchery.observer import NullObserver, Observer

POLICIES = ("adaptive", "fixed")


@dataclass(slots=True)
class BatcherStats:
    """Counters read by tests, `/v1/models` and metrics."""

    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    expired: int = 0
    rejected: int = 0


class Batcher:
    """Forms batches from queued items and hands them to idle lanes."""

    def __init__(
        self,
        name: str,
        *,
        max_batch_size: int,
        max_delay: float,
        policy: str,
        max_queue: int,
        cores: int,
        elastic: bool,
        observer: Observer | None = None,
    ) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.policy = policy
        self.max_queue = max_queue
        self.stats = BatcherStats()
        self._cores = cores
        self._elastic = elastic
        self.observer: Observer = observer or NullObserver()
        self._queue: deque[Item] = deque()
        self._lanes: list[Lane] = []
        self._idle: list[Lane] = []
        self._running = 0
        self._wide_running = False
        self._timer: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None

    def attach(self, lanes: Sequence[Lane]) -> None:
        """Start feeding `lanes` (all idle)."""
        self._lanes = list(lanes)
        self._idle = list(lanes)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Items queued or being computed."""
        return len(self._queue) + self._running

    def submit(self, items: Sequence[Item]) -> None:
        """Queue `items` together (all or none); raise Overloaded when the queue cannot take them."""
        if len(self._queue) + len(items) > self.max_queue:
            self.stats.rejected += len(items)
            self.observer.rejected(self.name, "queue_full", len(items))
            raise Overloaded(
                f"model '{self.name}' has {len(self._queue)} inputs queued (limit {self.max_queue}); "
                "retry shortly or add replicas",
                retry_after=1.0,
            )
        self._queue.extend(items)
        self._dispatch()

    def on_result(self, lane: Lane, result: BatchResult) -> None:
        """Called on the loop when `lane` finishes a batch: answer its items, then form the next batch."""
        batch = result.batch
        self._running -= len(batch.items)
        if batch.cores > 1 and len(self._lanes) > 1:
            self._wide_running = False
        self._idle.append(lane)
        if result.error is not None:
            error = result.error
            if not isinstance(error, PredictError):
                wrapped = PredictError(f"model '{self.name}' failed on a batch of {len(batch.items)}: {error!r}")
                wrapped.__cause__ = error
                error = wrapped
            for item in batch.items:
                if not item.future.done():
                    item.future.set_exception(error)
        else:
            assert result.outputs is not None  # a lane returns outputs or an error, never neither
            for item, output in zip(batch.items, result.outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(output)
        self.observer.batch_done(self.name, result)
        self._dispatch()
        if self._drained is not None and self.in_flight == 0:
            self._drained.set()

    async def drain(self) -> None:
        """Wait until nothing is queued or computing."""
        if self.in_flight == 0:
            return
        self._drained = asyncio.Event()
        await self._drained.wait()

    def _dispatch(self) -> None:
        queue = self._queue
        while queue and self._idle and not self._wide_running:
            if self.policy == "fixed" and len(queue) < self.max_batch_size:
                flush_at = queue[0].enqueued_at + self.max_delay
                if time.monotonic() < flush_at:
                    self._arm_timer(flush_at)
                    return
            items = self._take()
            if not items:
                continue
            all_idle = len(self._idle) == len(self._lanes)
            wide = self._elastic and all_idle and not queue and len(self._lanes) > 1
            cores = self._cores if wide or len(self._lanes) == 1 else max(1, self._cores // len(self._lanes))
            if wide:
                self._wide_running = True
            lane = self._idle.pop()
            self._running += len(items)
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.largest_batch = max(self.stats.largest_batch, len(items))
            now = time.monotonic()
            lane.compute(Batch(items, cores, now, [item.payload for item in items]))

    def _take(self) -> list[Item]:
        """Pop up to `max_batch_size` live items; answer expired ones with 504 and skip cancelled ones."""
        queue = self._queue
        items: list[Item] = []
        now = time.monotonic()
        while queue and len(items) < self.max_batch_size:
            item = queue.popleft()
            if item.future.done():  # the client went away
                continue
            if item.deadline is not None and item.deadline <= now:
                self.stats.expired += 1
                self.observer.rejected(self.name, "deadline", 1)
                item.future.set_exception(
                    DeadlineExceeded(f"the request's deadline passed after {now - item.enqueued_at:.3f}s in the queue")
                )
                continue
            items.append(item)
        return items

    def _arm_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + max(0.0, when - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def new_item(self, payload: Any, loop: asyncio.AbstractEventLoop, deadline: float | None = None) -> Item:
        return Item(payload, loop.create_future(), time.monotonic(), deadline)

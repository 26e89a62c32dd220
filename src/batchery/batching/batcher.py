"""The dynamic batcher of one model: a bounded, fair queue on the event loop feeding a set of lanes.

Event-driven, no polling: a batch is formed when an input arrives, a lane finishes or a flush timer fires.
- "fixed": flush when `max_batch_size` inputs wait, or `max_delay` after the first one arrived.
- "adaptive": a free lane takes what is queued now unless waiting pays off (policy.py: the arrivals expected
  during one batch's fixed cost outnumber the queue), bounded by `max_delay` and the queued deadlines; a batch
  stops growing where its expected cost would make it miss the soonest deadline among its items. Clients just
  answered are expected back for a moment (closed loop): with two lanes or more, a free lane takes, and waits
  (at most `max_delay`) for, its even share of every input in play, so the lanes stay evenly loaded.
Expired and cancelled inputs are dropped before compute, inputs that cannot meet their deadline are refused at
once, and a full queue sheds or refuses at once (scheduler.py). With `max_queue_wait` set, the queue is bounded in
time as well as in inputs: once a client's oldest queued input has waited that long (or eight full batches, if
longer), its new requests are refused with 503 at once, so under overload the accepted ones wait a bounded time.
The effective batch cap shrinks on out-of-memory and grows back (oom.py). Lanes can be swapped for a new model
version while batches run.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from batchery.batching.lane import Lane
from batchery.batching.oom import BatchCap, ItemError
from batchery.batching.policy import ArrivalRate, CostModel, ReturningClients, worth_waiting
from batchery.batching.records import Batch, BatchResult, Item
from batchery.batching.scheduler import DEFAULT_CLIENT, Scheduler
from batchery.batching.streaming import Stream
from batchery.errors import BatcheryError, ClientOverloaded, DeadlineExceeded, Overloaded, PredictError
from batchery.observer import NullObserver, Observer

POLICIES = ("adaptive", "fixed")
#: The queue's time bound is never below this many full batches of the model (see `Batcher.queue_wait_bound`).
BATCHES_OF_WAIT = 8


@dataclass(slots=True)
class BatcherStats:
    """Counters read by tests, `/v1/models` and metrics."""

    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    expired: int = 0
    rejected: int = 0
    shed: int = 0
    oom_events: int = 0


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
        max_batch_cost: int | None = None,
        client_weight: Callable[[str], int] | None = None,
        cost_of: Callable[[Any], int] | None = None,
        max_queue_wait: float | None = None,
    ) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.policy = policy
        self.max_queue = max_queue
        #: Seconds a client's oldest queued input may have waited before its new requests are refused; None: no bound.
        self.max_queue_wait = max_queue_wait
        self.max_batch_cost = max_batch_cost
        #: The model's `input_cost(payload)` (tokens, pixels...), counted against `max_batch_cost`; None: 1 each.
        self.cost_of = cost_of
        self.stats = BatcherStats()
        self.observer: Observer = observer or NullObserver()
        self.cap = BatchCap(max_batch_size)
        self.costs = CostModel()
        self.arrivals = ArrivalRate()
        self._cores = cores
        self._elastic = elastic
        self._queue = Scheduler(max_queue, client_weight)
        self._lanes: list[Lane] = []
        self._idle: list[Lane] = []
        self._running = 0
        self._computing: dict[int, Batch] = {}  # the batches the lanes are computing, by id
        self._wide_running = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        #: Inputs just answered whose clients have not sent a new one yet: a closed-loop client sends its next
        #: request as soon as it has its answer. Expected back within `max_delay`, at most their batch's cost.
        self.returning = ReturningClients()
        self._drained: asyncio.Event | None = None

    def attach(self, lanes: Sequence[Lane]) -> list[Lane]:
        """Feed `lanes` from now on; return the previous lanes, which finish their running batch and retire."""
        previous = self._lanes
        idle_previous = [lane for lane in self._idle if lane in previous]
        self._lanes = list(lanes)
        self._idle = list(lanes)
        self._wide_running = False
        for lane in idle_previous:
            lane.stop()
        self._dispatch()
        return previous

    @property
    def lanes(self) -> list[Lane]:
        return self._lanes

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Items queued or being computed."""
        return len(self._queue) + self._running

    def new_item(self, payload: Any, loop: asyncio.AbstractEventLoop, deadline: float | None = None) -> Item:
        cost = max(1, int(self.cost_of(payload))) if self.cost_of is not None else 1
        return Item(payload, loop.create_future(), time.monotonic(), deadline, cost)

    def submit(self, items: Sequence[Item], *, client: str = DEFAULT_CLIENT, priority: int = 0) -> None:
        """Queue all of `items` (one request's inputs) or none: raise Overloaded when there is no room,
        DeadlineExceeded when they cannot make their deadline. A full queue may shed the newest inputs of a
        longer (or lower-priority) backlog to make room; those get 503 through their futures.
        """
        now = time.monotonic()
        self._refuse_hopeless(items, now)
        self._refuse_backlogged(items, client, priority, now)
        shed = self._queue.push(items, client, priority)
        if shed:
            if shed[0] is items[0]:  # refused: no room for this request, and nobody fairer to shed
                self.stats.rejected += len(items)
                self.observer.rejected(self.name, "queue_full", len(items))
                raise self._overloaded()
            for item in shed:
                if not item.future.done():
                    item.future.set_exception(self._overloaded(ClientOverloaded))
            self.stats.shed += len(shed)
            self.observer.rejected(self.name, "queue_full", len(shed))
        self.arrivals.observe(now, len(items))
        self.returning.arrived(len(items), now)
        self._dispatch()

    def _overloaded(self, kind: type[Overloaded] = Overloaded) -> Overloaded:
        return kind(
            f"model '{self.name}' has {len(self._queue)} inputs queued (limit {self.max_queue}); "
            "retry shortly or add replicas",
            retry_after=1.0,
        )

    def queue_wait_bound(self) -> float | None:
        """The queue's bound in seconds: `max_queue_wait`, or `BATCHES_OF_WAIT` full batches if they take longer.

        A slow model (an OCR detector at half a second an image) has seconds of queue at modest concurrency,
        and that queue is its normal state, not overload; a fast one is bounded by `max_queue_wait`.

        None until the cost model is trained (a few batches): a slow model's first batches must not look like a
        stalled queue. A model that never finishes a batch is bounded by the deadlines and the input bound.
        """
        if self.max_queue_wait is None or not self.costs.trained:
            return None
        return max(self.max_queue_wait, BATCHES_OF_WAIT * self.costs.cost(self.cap.value))

    def _refuse_backlogged(self, items: Sequence[Item], client: str, priority: int, now: float) -> None:
        """Refuse at once a request whose client's backlog already waits longer than the queue's time bound."""
        bound = self.queue_wait_bound()
        since = self._queue.waiting_since(client, priority) if bound is not None else None
        if bound is None or since is None or now - since <= bound:
            return
        self.stats.rejected += len(items)
        self.observer.rejected(self.name, "queue_wait", len(items))
        raise ClientOverloaded(
            f"model '{self.name}' is overloaded: queued inputs have waited {(now - since) * 1000:.0f} ms "
            f"(limit {bound * 1000:.0f} ms); retry shortly or add replicas",
            retry_after=1.0,
        )

    def _refuse_hopeless(self, items: Sequence[Item], now: float) -> None:
        """Refuse at once inputs whose deadline is sooner than a batch of one can possibly take."""
        if not self.costs.trained:
            return
        # A stream's deadline bounds its wait for a batch, not the stream, which the cost model measures whole.
        soonest = min(
            (item.deadline for item in items if item.deadline is not None and not _streamed(item)), default=None
        )
        if soonest is not None and soonest - now < self.costs.cost(1):
            self.stats.expired += len(items)
            self.observer.rejected(self.name, "deadline", len(items))
            raise DeadlineExceeded(
                f"the request's deadline ({(soonest - now) * 1000:.1f} ms away) is sooner than model "
                f"'{self.name}' can compute even one input (~{self.costs.cost(1) * 1000:.1f} ms)"
            )

    def on_result(self, lane: Lane, result: BatchResult) -> None:
        """Called on the loop when `lane` finishes a batch: answer its items, then form the next batch."""
        batch = result.batch
        self._running -= len(batch.items)
        self._computing.pop(id(batch), None)
        if lane in self._lanes:
            if batch.cores > 1 and len(self._lanes) > 1:
                self._wide_running = False
            self._idle.append(lane)
        else:
            lane.stop()  # a previous version's lane: its last batch is done, release it
        self._answer(result)
        self._learn(result)
        # Its clients are expected back within `max_delay`, and never for longer than computing them took.
        self.returning.answered(len(batch.items), time.monotonic(), lambda n: min(self.max_delay, self.costs.cost(n)))
        self.observer.batch_done(self.name, result)
        self._dispatch()
        if self._drained is not None and self.in_flight == 0:
            self._drained.set()

    def _answer(self, result: BatchResult) -> None:
        items = result.batch.items
        if result.error is not None:
            error = result.error
            # A deliberate BatcheryError (e.g. a crashed process worker's 503) keeps its status (issue 11).
            if not isinstance(error, BatcheryError):
                wrapped = PredictError(f"model '{self.name}' failed on a batch of {len(items)}: {error!r}")
                wrapped.__cause__ = error
                error = wrapped
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        assert result.outputs is not None  # a lane returns outputs or an error, never neither
        for item, output in zip(items, result.outputs, strict=True):
            item.version = result.version
            if item.future.done():
                continue
            if isinstance(output, ItemError):
                item.future.set_exception(output.error)
            else:
                item.future.set_result(output)

    def _learn(self, result: BatchResult) -> None:
        size = len(result.batch.items)
        if result.failed_sizes:
            for failed in result.failed_sizes:
                self.cap.failed(failed)
            self.stats.oom_events += len(result.failed_sizes)
        elif result.error is None and not result.bisected:
            self.cap.succeeded(size)
            if not any(_streamed(item) for item in result.batch.items):  # a stream's time is its client's pace
                self.costs.observe(size, result.compute_seconds)

    def abort(self, error: BaseException) -> int:
        """Answer every queued and computing input with `error` now (a drain whose time ran out: each client gets
        a retryable answer rather than a dropped connection); return how many were answered. Computing batches
        finish in their lanes, unread."""
        aborted = 0
        waiting = list(self._queue.pop(len(self._queue)))
        for item in [*waiting, *(item for batch in self._computing.values() for item in batch.items)]:
            if not item.future.done():
                item.future.set_exception(error)
                aborted += 1
        if self._drained is not None and self.in_flight == 0:
            self._drained.set()
        return aborted

    async def drain(self) -> None:
        """Wait until nothing is queued or computing."""
        if self.in_flight == 0:
            return
        self._drained = asyncio.Event()
        await self._drained.wait()

    def _dispatch(self) -> None:
        queue = self._queue
        while queue and self._idle and not self._wide_running:
            now = time.monotonic()
            flush_at = self._flush_at(now)
            if flush_at > now:
                self._arm_timer(flush_at)
                return
            queued, idle, lanes = len(queue), len(self._idle), len(self._lanes)
            # A machine-wide grant pays only for a handful of inputs that cannot be spread over lanes anyway.
            wide = self._elastic and idle == lanes > 1 and queued <= lanes
            limit = queued
            if self.policy == "adaptive" and not wide:
                limit = -(-queued // idle)  # spread over the free lanes: halves on two lanes finish sooner
                fair = self._fair_share(now)
                if fair is not None:
                    limit = min(limit, fair)
            items = self._take(now, limit)
            if not items:
                # Only cancelled or expired items were left: a drain may be waiting for exactly this (issue 11).
                if self._drained is not None and self.in_flight == 0:
                    self._drained.set()
                continue
            wide = wide and not queue
            cores = self._cores if wide or lanes == 1 else max(1, self._cores // lanes)
            if wide:
                self._wide_running = True
            lane = self._idle.pop()
            for item in items:
                if isinstance(item.payload, Stream):
                    item.payload.version = lane.version  # its response header names the version computing it
            self._running += len(items)
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.largest_batch = max(self.stats.largest_batch, len(items))
            batch = Batch(items, cores, now, [item.payload for item in items])
            self._computing[id(batch)] = batch
            lane.compute(batch)

    def _flush_at(self, now: float) -> float:
        """When the queued items should be sent to a lane: `now` or later, if waiting for more pays off."""
        queued = len(self._queue)
        cap = self.cap.value
        if queued >= cap:
            return now
        oldest = self._queue.oldest()
        if oldest is None:
            return now
        if self.policy == "fixed":
            # A queued deadline pulls the flush forward: waiting out max_delay would answer it late (issue 11).
            return self._before_deadlines(oldest.enqueued_at + self.max_delay, cap)
        # adaptive: never wait before the cost model is trained. Inputs just answered are likely to come back
        # (closed-loop clients): a free lane waits for its share of them, at most `max_delay` after it became
        # free, rather than start a sliver of a batch that leaves the lanes out of step. Inputs that queued
        # while every lane was busy wait with them: flushing such a straggler alone at once would split one
        # group of clients into two for good.
        if not self.costs.trained:
            return now
        fair = self._fair_share(now)
        if fair is not None and queued < min(cap, fair):
            return self._before_deadlines(self.returning.until, cap)
        # Never wait when every lane is idle (a lone request goes at once), nor when the arrivals expected during
        # one batch's fixed cost would not add up.
        if len(self._idle) == len(self._lanes):
            return now
        if not worth_waiting(queued, cap, self.costs.fixed, self.arrivals.rate(now)):
            return now
        return self._before_deadlines(oldest.enqueued_at + min(self.max_delay, self.costs.fixed), cap)

    def _fair_share(self, now: float) -> int | None:
        """With clients expected back (closed loop), one lane's even share of every input in play: queued,
        computing and returning. Lanes that each take their share stay evenly loaded; one that took more than
        its share would keep that many clients, and the other lanes would run slivers. None: nobody expected
        (policy.ReturningClients), one lane only (nothing to balance), or the cost model is not trained yet.
        """
        returning = self.returning.expected(now)
        if len(self._lanes) < 2 or not self.costs.trained or not returning:
            return None
        return -(-(len(self._queue) + self._running + returning) // len(self._lanes))

    def _before_deadlines(self, latest: float, cap: int) -> float:
        """`latest`, or sooner if a full batch started then would answer a queued input after its deadline
        (until the cost model is trained, a batch counts as taking no time)."""
        soonest_deadline = min((i.deadline for i in self._queue.items() if i.deadline is not None), default=None)
        if soonest_deadline is not None:
            latest = min(latest, soonest_deadline - (self.costs.cost(cap) if self.costs.trained else 0.0))
        return latest

    def _take(self, now: float, limit: int) -> list[Item]:
        """Pop up to `limit` live items within the caps; answer expired ones with 504, skip cancelled ones."""
        items: list[Item] = []
        limit = min(limit, self.cap.value)
        budget = self.max_batch_cost
        cost = 0
        estimate = self.costs.cost(1) if self.costs.trained else 0.0
        # adaptive: the batch grows only while it still finishes before the soonest deadline among its items;
        # a bigger batch would answer them all late (504), wasting the compute.
        fit_deadlines = self.policy == "adaptive" and self.costs.trained
        soonest = math.inf
        for item in self._queue.pop(limit):
            if item.future.done():  # the client went away
                continue
            streamed = _streamed(item)
            if item.deadline is not None and item.deadline <= now + (0.0 if streamed else estimate):
                self.stats.expired += 1
                self.observer.rejected(self.name, "deadline", 1)
                item.future.set_exception(
                    DeadlineExceeded(
                        f"the request's deadline could not be met: it waited {now - item.enqueued_at:.3f}s in the "
                        f"queue of model '{self.name}'"
                    )
                )
                continue
            if budget is not None and items and cost + item.cost > budget:
                self._queue.requeue(item)  # over the cost cap: first in line for the next batch
                break
            if fit_deadlines and not streamed:
                due = soonest if item.deadline is None else min(soonest, item.deadline)
                if items and now + self.costs.cost(len(items) + 1) > due:
                    self._queue.requeue(item)  # would make the batch late: first in line for the next one
                    break
                soonest = due
            cost += item.cost
            items.append(item)
        return items

    def _arm_timer(self, when: float) -> None:
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = when
        self._timer = loop.call_at(loop.time() + max(0.0, when - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()


def _streamed(item: Item) -> bool:
    """Whether `item` is a streamed input (its deadline bounds its wait for a batch, not its computation)."""
    return isinstance(item.payload, Stream)

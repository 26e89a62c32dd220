"""The batcher alone: flush rules, bounds, expiry, with fake lanes and no threads."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from batchery.batching.batcher import Batcher
from batchery.batching.records import Batch, BatchResult
from batchery.errors import DeadlineExceeded, Overloaded, PredictError


class FakeLane:
    """Records the batches it is given; the test decides when they finish."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.got_batch = asyncio.Event()

    def compute(self, batch: Batch) -> None:
        self.batches.append(batch)
        self.got_batch.set()


def make(policy: str = "fixed", *, size: int = 4, delay: float = 1000.0, lanes: int = 1, **kw: Any) -> Batcher:
    batcher = Batcher(
        "m",
        max_batch_size=size,
        max_delay=delay,
        policy=policy,
        max_queue=kw.get("max_queue", 100),
        cores=kw.get("cores", 2),
        elastic=kw.get("elastic", False),
        max_batch_cost=kw.get("max_batch_cost"),
        max_queue_wait=kw.get("max_queue_wait"),
    )
    batcher.attach([FakeLane() for _ in range(lanes)])  # type: ignore[misc]
    return batcher


def lane(batcher: Batcher, index: int = 0) -> FakeLane:
    return batcher._lanes[index]  # type: ignore[return-value]


def submit(batcher: Batcher, *payloads: Any, deadline: float | None = None) -> list[asyncio.Future[Any]]:
    loop = asyncio.get_running_loop()
    items = [batcher.new_item(p, loop, deadline) for p in payloads]
    batcher.submit(items)
    return [item.future for item in items]


def train_slow_costs(batcher: Batcher) -> None:
    """Train the cost model on a slow model: a batch of one takes 0.1 s, a batch of eight 0.17 s."""
    for size, seconds in [(1, 0.1), (2, 0.11), (4, 0.13), (8, 0.17)]:
        batcher.costs.observe(size, seconds)


def finish(batcher: Batcher, index: int = -1, error: BaseException | None = None) -> None:
    fake = lane(batcher)
    batch = fake.batches[index]
    outputs = None if error else [f"out-{p}" for p in batch.payloads]
    batcher.on_result(fake, BatchResult(batch, outputs, error, 0.0))  # type: ignore[arg-type]


async def test_fixed_policy_flushes_when_the_batch_is_full_despite_a_huge_delay() -> None:
    batcher = make(size=4, delay=1000.0)
    submit(batcher, 1, 2, 3)
    assert lane(batcher).batches == []
    futures = submit(batcher, 4)
    assert [b.payloads for b in lane(batcher).batches] == [[1, 2, 3, 4]]
    finish(batcher)
    assert [f.result() for f in futures] == ["out-4"]


async def test_fixed_policy_flushes_a_partial_batch_after_the_delay() -> None:
    delay = 0.05
    batcher = make(size=8, delay=delay)
    started = time.monotonic()
    submit(batcher, "a", "b")
    assert lane(batcher).batches == []
    await asyncio.wait_for(lane(batcher).got_batch.wait(), 5)
    assert time.monotonic() - started >= delay * 0.95
    assert lane(batcher).batches[0].payloads == ["a", "b"]


async def test_fixed_policy_delay_counts_from_the_first_request() -> None:
    batcher = make(size=8, delay=0.1)
    submit(batcher, "first")
    first_at = time.monotonic()
    await asyncio.sleep(0.06)
    submit(batcher, "second")
    await asyncio.wait_for(lane(batcher).got_batch.wait(), 5)
    waited = time.monotonic() - first_at
    assert 0.095 <= waited < 0.16, waited
    assert lane(batcher).batches[0].payloads == ["first", "second"]


async def test_adaptive_policy_sends_a_lone_request_at_once_and_batches_while_busy() -> None:
    batcher = make("adaptive", size=4)
    submit(batcher, 1)
    assert [b.payloads for b in lane(batcher).batches] == [[1]]
    submit(batcher, 2, 3, 4, 5, 6)  # the only lane is busy: these queue up
    assert len(lane(batcher).batches) == 1
    finish(batcher)
    assert [b.payloads for b in lane(batcher).batches] == [[1], [2, 3, 4, 5]]
    finish(batcher)
    assert lane(batcher).batches[-1].payloads == [6]


async def test_a_free_lane_waits_briefly_for_the_clients_it_just_answered() -> None:
    batcher = make("adaptive", size=8, delay=0.05, lanes=2)
    train_slow_costs(batcher)  # a batch of one takes 0.1 s: longer than the 50 ms delay
    submit(batcher, *range(8))  # both lanes idle: spread, four each
    first, second = (lane(batcher, i) for i in (0, 1))
    assert [len(b.payloads) for b in first.batches + second.batches] == [4, 4]
    batcher.on_result(first, BatchResult(first.batches[0], [0] * 4, None, 0.13))  # type: ignore[arg-type]
    for payload in ("r1", "r2", "r3"):  # three of the four answered clients are back: the lane waits
        submit(batcher, payload)
        assert len(first.batches) == 1
    submit(batcher, "r4")  # all four back: one batch of four, not four slivers
    assert first.batches[-1].payloads == ["r1", "r2", "r3", "r4"]
    batcher.on_result(first, BatchResult(first.batches[-1], [0] * 4, None, 0.13))  # type: ignore[arg-type]
    submit(batcher, "lone")  # the others do not come back: it goes once the brief wait is over
    assert len(first.batches) == 2
    await asyncio.sleep(0.08)
    assert first.batches[-1].payloads == ["lone"]


async def test_a_single_lane_never_waits_for_the_clients_it_answered() -> None:
    batcher = make("adaptive", size=8, delay=0.05, lanes=1)
    train_slow_costs(batcher)
    submit(batcher, *range(4))
    only = lane(batcher)
    batcher.on_result(only, BatchResult(only.batches[0], [0] * 4, None, 0.13))  # type: ignore[arg-type]
    submit(batcher, "r1")  # nothing to balance with one lane (a pipeline stage's inputs do not come back)
    assert only.batches[-1].payloads == ["r1"]


async def test_an_input_queued_while_every_lane_was_busy_waits_with_the_answered_clients() -> None:
    batcher = make("adaptive", size=8, delay=0.05, lanes=2)
    train_slow_costs(batcher)
    submit(batcher, *range(8))
    first = lane(batcher, 0)
    submit(batcher, "straggler")  # both lanes busy: it queues, and waits longer than max_delay for a lane
    await asyncio.sleep(0.07)
    assert len(first.batches) == 1
    batcher.on_result(first, BatchResult(first.batches[0], [0] * 4, None, 0.13))  # type: ignore[arg-type]
    assert len(first.batches) == 1  # not a batch of one: its four answered clients are expected back
    for payload in ("r1", "r2", "r3", "r4"):
        submit(batcher, payload)
    assert first.batches[-1].payloads == ["straggler", "r1", "r2", "r3", "r4"]
    batcher.on_result(first, BatchResult(first.batches[-1], [0] * 5, None, 0.13))  # type: ignore[arg-type]
    first.got_batch.clear()
    submit(batcher, "late")  # nobody else comes back: it goes at most max_delay after the lane became free
    started = time.monotonic()
    await asyncio.wait_for(first.got_batch.wait(), 1.0)
    assert first.batches[-1].payloads == ["late"]
    assert time.monotonic() - started < 0.05 + 0.25  # generous: a loaded CI machine is slow


async def test_full_queue_is_refused_at_once_with_retry_after() -> None:
    batcher = make("adaptive", size=1, max_queue=2)
    submit(batcher, "running")
    submit(batcher, "q1", "q2")
    with pytest.raises(Overloaded) as info:
        submit(batcher, "too many")
    assert info.value.retry_after is not None
    assert batcher.stats.rejected == 1


async def test_a_backlog_older_than_the_queue_wait_bound_refuses_new_requests_at_once() -> None:
    batcher = make("adaptive", size=1, max_queue_wait=0.05)
    assert batcher.queue_wait_bound() is None  # not before the model's cost is known
    for _ in range(4):
        batcher.costs.observe(1, 0.001)
    submit(batcher, "running")
    queued = submit(batcher, "q1")
    submit(batcher, "q2")  # the backlog is fresh: admitted
    await asyncio.sleep(0.08)
    with pytest.raises(Overloaded, match="have waited") as info:
        submit(batcher, "late")
    assert info.value.retry_after is not None
    assert batcher.stats.rejected == 1
    finish(batcher)  # the lane takes q1; q2 has waited as long, so still refused
    with pytest.raises(Overloaded):
        submit(batcher, "late again")
    finish(batcher)
    finish(batcher)  # the backlog is gone: admitted again
    assert queued[0].result() == "out-q1"
    submit(batcher, "fresh")
    assert lane(batcher).batches[-1].payloads == ["fresh"]


async def test_the_queue_wait_bound_is_per_client_and_never_below_eight_full_batches() -> None:
    batcher = make("adaptive", size=1, max_queue_wait=0.05)
    for _ in range(4):
        batcher.costs.observe(1, 0.001)
    loop = asyncio.get_running_loop()
    batcher.submit([batcher.new_item("running", loop)], client="a")
    batcher.submit([batcher.new_item("a1", loop)], client="a")
    await asyncio.sleep(0.08)
    with pytest.raises(Overloaded):
        batcher.submit([batcher.new_item("a2", loop)], client="a")
    batcher.submit([batcher.new_item("b1", loop)], client="b")  # b has no backlog: its wait is one turn
    for _ in range(64):
        batcher.costs.observe(1, 0.02)  # a slower model: eight batches take 0.16 s, longer than the 50 ms setting
    assert batcher.queue_wait_bound() == pytest.approx(0.16)
    batcher.submit([batcher.new_item("a3", loop)], client="a")  # a's 80 ms backlog is within 0.16 s now


async def test_expired_items_are_answered_504_and_never_computed() -> None:
    batcher = make("adaptive", size=4)
    submit(batcher, "busy")
    (late,) = submit(batcher, "late", deadline=time.monotonic() - 1)
    (ok,) = submit(batcher, "ok")
    finish(batcher)
    assert lane(batcher).batches[-1].payloads == ["ok"]
    with pytest.raises(DeadlineExceeded):
        late.result()
    assert not ok.done()


async def test_cancelled_items_are_skipped() -> None:
    batcher = make("adaptive", size=4)
    submit(batcher, "busy")
    (gone,) = submit(batcher, "gone")
    submit(batcher, "stays")
    gone.cancel()
    finish(batcher)
    assert lane(batcher).batches[-1].payloads == ["stays"]


async def test_a_failed_batch_fails_its_items_with_a_predict_error() -> None:
    batcher = make("adaptive", size=4)
    futures = submit(batcher, 1, 2)
    finish(batcher, error=RuntimeError("boom"))
    for future in futures:
        with pytest.raises(PredictError, match="boom"):
            future.result()


async def test_elastic_model_gets_every_core_only_when_alone() -> None:
    batcher = make("adaptive", size=2, lanes=2, cores=2, elastic=True)
    submit(batcher, "alone")
    first = batcher._lanes[1]
    assert first.batches[0].cores == 2  # type: ignore[attr-defined]
    submit(batcher, "a", "b", "c")  # the wide batch holds every core: nothing else starts
    assert lane(batcher, 0).batches == []
    batcher.on_result(first, BatchResult(first.batches[0], ["x"], None, 0.0))  # type: ignore[arg-type, attr-defined]
    started = [b for i in range(2) for b in lane(batcher, i).batches[-1:]]
    assert all(b.cores == 1 for b in started if b.payloads != ["alone"])


async def test_adaptive_policy_spreads_a_backlog_over_free_lanes() -> None:
    batcher = make("adaptive", size=32, lanes=2)
    first, second = batcher._lanes
    submit(batcher, "busy-a")
    submit(batcher, "busy-b")  # both lanes now hold one batch each
    submit(batcher, *range(10))
    batcher.on_result(first, BatchResult(first.batches[0], ["x"], None, 0.0))  # type: ignore[arg-type, attr-defined]
    batcher.on_result(second, BatchResult(second.batches[0], ["x"], None, 0.0))  # type: ignore[arg-type, attr-defined]
    # The first free lane took everything (the other was busy): spreading only happens among free lanes.
    sizes = sorted(len(b.payloads) for lane in batcher._lanes for b in lane.batches[1:])  # type: ignore[attr-defined]
    assert sizes == [10]
    fresh = make("adaptive", size=32, lanes=2)
    fresh._idle.clear()
    submit(fresh, *range(10))
    fresh._idle.extend(fresh._lanes)
    fresh._dispatch()
    sizes = sorted(len(b.payloads) for lane in fresh._lanes for b in lane.batches)  # type: ignore[attr-defined]
    assert sizes == [5, 5]


async def test_a_cost_cap_bounds_batches_and_a_huge_input_runs_alone() -> None:
    batcher = make("adaptive", size=32, max_batch_cost=10)
    batcher.cost_of = len
    submit(batcher, "busy")
    submit(batcher, "aaaa", "bbbb", "cccc", "x" * 25, "dd")
    for _ in range(4):  # each finished batch lets the next one form
        finish(batcher)
    formed = [b.payloads for b in lane(batcher).batches[1:]]
    assert formed == [["aaaa", "bbbb"], ["cccc"], ["x" * 25], ["dd"]]


async def test_the_engine_takes_the_cost_from_the_models_input_cost() -> None:
    from batchery.engine import Engine
    from batchery.testing import EchoModel

    class Costed(EchoModel):
        name = "costed"
        max_batch_cost = 8

        def input_cost(self, payload: Any) -> int:
            return len(str(payload))

    engine = Engine([Costed()], cores_available=1)
    await engine.start()
    try:
        assert await engine.infer("costed", ["abcd", "efgh", "ijkl"]) == ["abcd", "efgh", "ijkl"]
        assert engine.handle("costed").batcher.cost_of is not None
        sizes = engine.handle("costed").lanes[0].model.batch_sizes
        assert max(sizes[2:]) <= 2  # after the warm-up batches: never more than 8 characters in a batch
    finally:
        await engine.stop()


async def test_adaptive_batch_grows_only_while_it_still_meets_the_soonest_deadline() -> None:
    batcher = make("adaptive", size=8)
    for size in (1, 2, 4, 8):  # a learned cost of 1 s + 1 s per input
        batcher.costs.observe(size, 1.0 + size)
    futures = submit(batcher, *range(6), deadline=time.monotonic() + 4.5)
    # 3 inputs take ~4 s and make the deadline; a 4th would make the whole batch late.
    assert lane(batcher).batches[0].payloads == [0, 1, 2]
    assert batcher.queued == 3
    finish(batcher)
    assert [f.result() for f in futures[:3]] == ["out-0", "out-1", "out-2"]

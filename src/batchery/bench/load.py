"""The load generator: closed loop (N connections, each sends when its last answer came back) or open loop
(a fixed arrival rate, or a trace of send times; latency counts from the intended send time, so a slow server
cannot hide its queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from batchery._http_client import Connection
from batchery.bench.spec import MAX_RATE, LoadSpec

__all__ = ["BACKLOG_ERROR", "MAX_RATE", "LoadSpec", "Measurement", "Progress", "ProgressCallback", "measure"]

BACKLOG_ERROR = "unsent (client backlog)"
_BACKLOG = 10_000  # arrivals waiting for a free connection; past this they count as unsent, so memory stays bounded
# What a request can fail with short of a bug: the network, a response the client cannot parse (ProtocolError is a
# ValueError), the timeout.
_TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError)


@dataclass(slots=True)
class Progress:
    """A snapshot handed to the progress callback about once a second."""

    elapsed: float
    measuring: bool
    completed: int
    ok: int
    errors: int
    rejected: int
    recent_rate: float
    recent_p50_ms: float


@dataclass(slots=True)
class Measurement:
    """Raw outcome of one run: latencies (ms) by kind, statuses and the client's own CPU time.

    `interrupted`: the run was stopped early (Ctrl-C); it holds what was measured until then.
    """

    spec: LoadSpec
    wall_seconds: float = 0.0
    ok_ms: list[float] = field(default_factory=list)
    rejected_ms: list[float] = field(default_factory=list)
    failed_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    client_cpu_seconds: float = 0.0
    interrupted: bool = False
    #: Open loop at a rate: 2xx answers that arrived within the measured window, whenever they were sent, and
    #: those of them within the deadline. Past saturation, answers to the window's requests go on arriving
    #: after it (a queue drains): counted as the window's, they would make throughput exceed what the server
    #: computes. None in closed loop and for traces, whose window runs to the last answer.
    ok_in_window: int | None = None
    good_in_window: int | None = None

    def record(self, status: int, latency_ms: float) -> None:
        self.statuses[status] += 1
        if 200 <= status < 300:
            self.ok_ms.append(latency_ms)
        elif status in (429, 503):
            self.rejected_ms.append(latency_ms)
        else:
            self.failed_ms.append(latency_ms)


ProgressCallback = Callable[[Progress], None]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Run:
    """State shared by the senders of one run."""

    def __init__(self, spec: LoadSpec, on_progress: ProgressCallback | None) -> None:
        self.spec = spec
        self.result = Measurement(spec)
        if spec.rate is not None:  # traces and closed loops are measured to their last answer: all count
            self.result.ok_in_window = self.result.good_in_window = 0
        self.on_progress = on_progress
        self.start = time.perf_counter()
        self.measure_from = self.start + spec.warmup
        self.stop_at = self.measure_from + spec.duration
        if spec.arrivals is not None:
            self.stop_at = self.start + spec.arrivals[-1] + 1e-6  # the trace sets the length of the run
        self.stopped_at: float | None = None  # when the request limit or an interrupt ended the run early
        self.ended = asyncio.Event()  # set with stopped_at
        self.cpu_before: float | None = None
        self.next_body = 0
        self.completed = 0
        self.window: list[float] = []
        self.window_count = 0
        self.window_since = self.start

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def stop(self) -> None:
        if self.stopped_at is None:
            self.stopped_at = time.perf_counter()
            self.ended.set()

    def body(self) -> bytes:
        bodies = self.spec.bodies
        body = bodies[self.next_body % len(bodies)]
        self.next_body += 1
        return body

    def done(self, sent_at: float, status: int | None, error: str | None) -> None:
        now = time.perf_counter()
        self.window_count += 1
        latency_ms = (now - sent_at) * 1000.0
        success = status is not None and 200 <= status < 300
        if success and len(self.window) < 2000:
            self.window.append(latency_ms)
        if success and self.spec.rate is not None and not self.stopped and self.measure_from <= now <= self.stop_at:
            self._answered_in_window(latency_ms)
        if sent_at < self.measure_from or self.stopped:
            return  # warm-up, or an answer that came after the run had ended
        self.completed += 1
        if error is not None:
            self.result.transport_errors[error] += 1
        elif status is not None:
            self.result.record(status, latency_ms)
        limit = self.spec.max_requests
        if limit is not None and self.completed >= limit:
            self.stop()

    def _answered_in_window(self, latency_ms: float) -> None:
        result = self.result
        result.ok_in_window = (result.ok_in_window or 0) + 1
        deadline = self.spec.deadline_ms
        if deadline is None or latency_ms <= deadline:
            result.good_in_window = (result.good_in_window or 0) + 1

    def finished(self) -> bool:
        return self.stopped or time.perf_counter() >= self.stop_at

    def measured_seconds(self, end: float) -> float:
        """The measured window: to an early stop, else the end of the requested duration (open loop at a rate),
        else the last answer."""
        if self.stopped_at is not None:
            finish = self.stopped_at
        elif self.spec.rate is not None:
            finish = self.stop_at
        else:
            finish = end
        return max(1e-9, finish - self.measure_from)


async def _send(run: _Run, conn: Connection | None, sent_at: float, backoff: float = 0.0) -> Connection | None:
    """Send one request; returns the connection to reuse, or None when it broke (then waits `backoff` seconds)
    or the server closes it."""
    spec = run.spec
    try:
        if conn is None:
            conn = await asyncio.wait_for(Connection.open(spec.url), spec.timeout)
        request = conn.request(spec.method, spec.path, run.body(), dict(spec.headers) if spec.headers else None)
        response = await asyncio.wait_for(request, spec.timeout)
    except _TRANSPORT_ERRORS as exc:
        run.done(sent_at, None, type(exc).__name__)
        await _close(conn)
        # A refused connection would otherwise spin: back off a little before reconnecting.
        await asyncio.sleep(backoff)
        return None
    except asyncio.CancelledError:
        if conn is not None:
            conn.abort()
        raise
    run.done(sent_at, response.status, None)
    if not response.keep_alive:
        await _close(conn)
        return None
    return conn


async def _close(conn: Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()


async def _closed_sender(run: _Run) -> None:
    conn: Connection | None = None
    try:
        while not run.finished():
            conn = await _send(run, conn, time.perf_counter(), backoff=0.01)
    except asyncio.CancelledError:
        if conn is not None:
            conn.abort()
        raise
    await _close(conn)


async def _open_sender(run: _Run, due: asyncio.Queue[float | None]) -> None:
    conn: Connection | None = None
    try:
        while (sent_at := await due.get()) is not None:
            if not run.stopped:
                conn = await _send(run, conn, sent_at)
    except asyncio.CancelledError:
        if conn is not None:
            conn.abort()
        raise
    await _close(conn)


def _offsets(spec: LoadSpec) -> Iterator[float]:
    """Intended send times from the start of the run: the trace, or one every 1/rate seconds."""
    if spec.arrivals is not None:
        return iter(spec.arrivals)
    assert spec.rate is not None  # only called in open loop
    interval = 1.0 / spec.rate
    return (index * interval for index in itertools.count())


async def _schedule(run: _Run, due: asyncio.Queue[float | None]) -> None:
    """Put each intended send time on the queue when it falls due (wrk2's constant-throughput model), then wait
    for the end of the run: open loop offers load for the whole duration, not up to the last send."""
    for offset in _offsets(run.spec):
        at = run.start + offset
        if run.stopped or at >= run.stop_at:
            break
        delay = at - time.perf_counter()
        # Behind schedule, still yield: at a rate above what the client can send, the senders and the progress
        # line must run, or the loop would only ever enqueue.
        await asyncio.sleep(max(0.0, delay))
        # The loop's timers may fire up to a millisecond early (uvloop's resolution): a request that goes out
        # before its intended time is timed from when it really went, never from a moment still to come.
        sent_at = min(at, time.perf_counter())
        try:
            due.put_nowait(sent_at)
        except asyncio.QueueFull:
            run.done(sent_at, None, BACKLOG_ERROR)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(run.ended.wait(), max(0.0, run.stop_at - time.perf_counter()))


def _show_progress(run: _Run) -> None:
    assert run.on_progress is not None  # only called with a callback
    now = time.perf_counter()
    window = sorted(run.window)
    ok = len(run.result.ok_ms)
    run.on_progress(
        Progress(
            elapsed=now - run.start,
            measuring=now >= run.measure_from,
            completed=run.completed,
            ok=ok,
            errors=run.completed - ok - len(run.result.rejected_ms),
            rejected=len(run.result.rejected_ms),
            recent_rate=run.window_count / max(1e-9, now - run.window_since),
            recent_p50_ms=window[len(window) // 2] if window else 0.0,
        )
    )
    run.window.clear()
    run.window_count = 0
    run.window_since = now


async def _report(run: _Run) -> None:
    while True:
        await asyncio.sleep(1.0)
        _show_progress(run)


async def _drive(run: _Run) -> None:
    """Start the senders (and the scheduler, in open loop), wait out the warm-up, then the run."""
    spec = run.spec
    tasks: list[asyncio.Task[None]] = []
    try:
        if run.on_progress is not None:
            tasks.append(asyncio.create_task(_report(run)))
        if not spec.open_loop:
            senders = [asyncio.create_task(_closed_sender(run)) for _ in range(spec.connections)]
            tasks.extend(senders)
        else:
            # Room for the backlog, and for the one stop marker per sender queued at the end (-c may pass 10,000).
            due: asyncio.Queue[float | None] = asyncio.Queue(maxsize=_BACKLOG + spec.connections)
            senders = [asyncio.create_task(_open_sender(run, due)) for _ in range(spec.connections)]
            scheduler = asyncio.create_task(_schedule(run, due))
            tasks.extend([*senders, scheduler])
        await asyncio.sleep(spec.warmup)
        run.cpu_before = _cpu_seconds()
        if spec.open_loop:
            await scheduler
            # Requests still queued at the end never went out: the client could not keep up with the rate
            # on the connections it has. They count as errors rather than stretching the run.
            while not due.empty():
                if (sent_at := due.get_nowait()) is not None:
                    run.done(sent_at, None, BACKLOG_ERROR)
            for _ in senders:
                due.put_nowait(None)
        await asyncio.gather(*senders)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def measure(
    spec: LoadSpec, on_progress: ProgressCallback | None = None, *, stop: asyncio.Event | None = None
) -> Measurement:
    """Run `spec` and return what was measured after the warm-up.

    Setting `stop` ends the run early (Ctrl-C): answers still outstanding are dropped, and the measurement holds
    what came back before, with `interrupted` set.
    """
    run = _Run(spec, on_progress)
    driver = asyncio.create_task(_drive(run))
    waiter = asyncio.create_task(stop.wait()) if stop is not None else None
    try:
        await asyncio.wait([driver] if waiter is None else [driver, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if waiter is not None:
            waiter.cancel()
        if not driver.done():
            run.stop()
            run.result.interrupted = True
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
    if not driver.cancelled():
        driver.result()  # an unexpected error in the generator itself
    end = time.perf_counter()
    if on_progress is not None:
        _show_progress(run)
    run.result.client_cpu_seconds = _cpu_seconds() - run.cpu_before if run.cpu_before is not None else 0.0
    run.result.wall_seconds = run.measured_seconds(end)
    return run.result

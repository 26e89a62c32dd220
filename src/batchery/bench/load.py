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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from batchery._http_client import Connection
from batchery.errors import ConfigError


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One measurement: where, what, how hard and for how long. `rate` and `arrivals` None mean closed loop.

    `arrivals` (open loop): intended send times in seconds from the start; the run ends with the last one.
    `deadline_ms`: answers slower than this do not count as goodput. `headers` go with every request.
    """

    url: str
    bodies: Sequence[bytes]
    connections: int = 16
    rate: float | None = None
    duration: float = 10.0
    warmup: float = 1.0
    timeout: float = 30.0
    max_requests: int | None = None
    arrivals: Sequence[float] | None = None
    headers: Mapping[str, str] | None = None
    deadline_ms: float | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(
                f"the URL must look like http://host:port/path, not {self.url!r} (https is not supported)"
            )
        if not self.bodies:
            raise ConfigError("there are no request bodies; give a payload file with one JSON body per line")
        if self.connections < 1:
            raise ConfigError(f"connections must be >= 1, not {self.connections}")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError(f"the arrival rate must be > 0 requests/s, not {self.rate}")
        if self.duration <= 0 or self.warmup < 0 or self.timeout <= 0:
            raise ConfigError("duration and timeout must be > 0 seconds and warmup >= 0")
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"max_requests must be >= 1, not {self.max_requests}")
        if self.arrivals is not None:
            if self.rate is not None:
                raise ConfigError("give an arrival rate or a trace of arrivals, not both")
            if not self.arrivals or self.arrivals[0] < 0:
                raise ConfigError("a trace needs at least one arrival, at an offset >= 0 seconds")
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise ConfigError(f"the goodput deadline must be > 0 ms, not {self.deadline_ms}")

    @property
    def open_loop(self) -> bool:
        return self.rate is not None or self.arrivals is not None

    @property
    def path(self) -> str:
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    @property
    def method(self) -> str:
        return "POST"


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
    """Raw outcome of one run: latencies (ms) by kind, statuses and the client's own CPU time."""

    spec: LoadSpec
    wall_seconds: float = 0.0
    ok_ms: list[float] = field(default_factory=list)
    rejected_ms: list[float] = field(default_factory=list)
    failed_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    client_cpu_seconds: float = 0.0

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
        self.on_progress = on_progress
        self.start = 0.0
        self.measure_from = 0.0
        self.stop_at = 0.0
        self.stopped = False
        self.next_body = 0
        self.completed = 0
        self.window: list[float] = []
        self.window_count = 0

    def body(self) -> bytes:
        bodies = self.spec.bodies
        body = bodies[self.next_body % len(bodies)]
        self.next_body += 1
        return body

    def done(self, sent_at: float, status: int | None, error: str | None) -> None:
        now = time.perf_counter()
        self.window_count += 1
        latency_ms = (now - sent_at) * 1000.0
        if status is not None and 200 <= status < 300 and len(self.window) < 2000:
            self.window.append(latency_ms)
        if sent_at < self.measure_from:
            return
        self.completed += 1
        if error is not None:
            self.result.transport_errors[error] += 1
        elif status is not None:
            self.result.record(status, latency_ms)
        limit = self.spec.max_requests
        if limit is not None and self.completed >= limit:
            self.stopped = True

    def finished(self) -> bool:
        return self.stopped or time.perf_counter() >= self.stop_at


async def _send(run: _Run, conn: Connection | None, sent_at: float) -> Connection | None:
    """Send one request; returns the connection to reuse, or None when it broke."""
    spec = run.spec
    try:
        if conn is None:
            conn = await asyncio.wait_for(Connection.open(spec.url), spec.timeout)
        request = conn.request(spec.method, spec.path, run.body(), dict(spec.headers) if spec.headers else None)
        response = await asyncio.wait_for(request, spec.timeout)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as exc:
        run.done(sent_at, None, type(exc).__name__)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        return None
    run.done(sent_at, response.status, None)
    if response.headers.get("connection", "").lower() == "close":
        with contextlib.suppress(Exception):
            await conn.close()
        return None
    return conn


async def _closed_sender(run: _Run) -> None:
    conn: Connection | None = None
    while not run.finished():
        conn = await _send(run, conn, time.perf_counter())
        if conn is None:
            # A refused connection would otherwise spin: back off a little before reconnecting.
            await asyncio.sleep(0.01)
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()


async def _open_sender(run: _Run, due: asyncio.Queue[float | None]) -> None:
    conn: Connection | None = None
    while (sent_at := await due.get()) is not None:
        conn = await _send(run, conn, sent_at)
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()


def _offsets(spec: LoadSpec) -> Iterator[float]:
    """Intended send times from the start of the run: the trace, or one every 1/rate seconds."""
    if spec.arrivals is not None:
        return iter(spec.arrivals)
    assert spec.rate is not None  # only called in open loop
    interval = 1.0 / spec.rate
    return (index * interval for index in itertools.count())


async def _schedule(run: _Run, due: asyncio.Queue[float | None]) -> None:
    """Put each intended send time on the queue when it falls due (wrk2's constant-throughput model)."""
    for offset in _offsets(run.spec):
        at = run.start + offset
        if run.stopped or at >= run.stop_at:
            return
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        # The loop's timers may fire up to a millisecond early (uvloop's resolution): a request that goes out
        # before its intended time is timed from when it really went, never from a moment still to come.
        due.put_nowait(min(at, time.perf_counter()))


def _show_progress(run: _Run, since: float) -> float:
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
            recent_rate=run.window_count / max(1e-9, now - since),
            recent_p50_ms=window[len(window) // 2] if window else 0.0,
        )
    )
    run.window.clear()
    run.window_count = 0
    return now


async def _report(run: _Run) -> None:
    since = time.perf_counter()
    while True:
        await asyncio.sleep(1.0)
        since = _show_progress(run, since)


async def measure(spec: LoadSpec, on_progress: ProgressCallback | None = None) -> Measurement:
    """Run `spec` and return what was measured after the warm-up."""
    run = _Run(spec, on_progress)
    run.start = time.perf_counter()
    run.measure_from = run.start + spec.warmup
    run.stop_at = run.measure_from + spec.duration
    if spec.arrivals is not None:
        run.stop_at = run.start + spec.arrivals[-1] + 1e-6  # the trace sets the length of the run
    reporter = asyncio.create_task(_report(run)) if on_progress is not None else None
    cpu_before = 0.0
    cpu_task = asyncio.create_task(asyncio.sleep(spec.warmup))
    try:
        if not spec.open_loop:
            senders = [asyncio.create_task(_closed_sender(run)) for _ in range(spec.connections)]
        else:
            due: asyncio.Queue[float | None] = asyncio.Queue()
            senders = [asyncio.create_task(_open_sender(run, due)) for _ in range(spec.connections)]
            scheduler = asyncio.create_task(_schedule(run, due))
        await cpu_task
        cpu_before = _cpu_seconds()
        if spec.open_loop:
            await scheduler
            # Requests still queued at the end never went out: the client could not keep up with the rate
            # on the connections it has. They count as errors rather than stretching the run.
            while not due.empty():
                if (sent_at := due.get_nowait()) is not None:
                    run.done(sent_at, None, "unsent (client backlog)")
            for _ in senders:
                due.put_nowait(None)
        await asyncio.gather(*senders)
    finally:
        if reporter is not None:
            reporter.cancel()
    end = time.perf_counter()
    if on_progress is not None:
        _show_progress(run, max(run.start, end - 1.0))
    run.result.client_cpu_seconds = _cpu_seconds() - cpu_before
    run.result.wall_seconds = max(1e-9, end - run.measure_from)
    return run.result

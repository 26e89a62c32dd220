"""Summaries of measurements: percentiles, throughput, a text table and JSON."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from batchery.bench.load import BACKLOG_ERROR, Measurement


@dataclass(slots=True)
class Summary:
    """One run in numbers. Latencies in ms; `throughput` counts successful answers per second (in open loop, those
    that arrived within the measured window: past saturation the rest come after it, as a queue drains).

    `good` counts successful answers within `deadline_ms` (all successes when there is no deadline); `goodput`
    is their rate and `good_share` their share of the requests sent. `interrupted`: stopped early by Ctrl-C.
    """

    url: str
    mode: str
    connections: int
    rate: float | None
    duration_s: float
    requests: int
    ok: int
    rejected: int
    errors: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    rejected_p50_ms: float
    rejected_p99_ms: float
    statuses: dict[str, int]
    transport_errors: dict[str, int]
    client_cpu: float
    deadline_ms: float | None = None
    good: int = 0
    goodput: float = 0.0
    good_share: float = 0.0
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0-100) of already sorted values; NaN when there are none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(m: Measurement) -> Summary:
    """Reduce a measurement to its summary; `client_cpu` is the client's CPU time per wall second (cores)."""
    ok = sorted(m.ok_ms)
    rejected = sorted(m.rejected_ms)
    failed = len(m.failed_ms) + sum(m.transport_errors.values())
    spec = m.spec
    requests = len(ok) + len(rejected) + failed
    good = len(ok) if spec.deadline_ms is None else bisect.bisect_right(ok, spec.deadline_ms)
    # Rates count what was answered within the window (open loop: see Measurement.ok_in_window); latencies and
    # shares count every request sent within it, however late its answer came.
    answered = len(ok) if m.ok_in_window is None else m.ok_in_window
    answered_good = good if m.good_in_window is None else m.good_in_window
    return Summary(
        url=spec.url,
        mode="trace" if spec.arrivals is not None else "closed" if spec.rate is None else "open",
        connections=spec.connections,
        rate=spec.rate,
        duration_s=round(m.wall_seconds, 3),
        requests=requests,
        ok=len(ok),
        rejected=len(rejected),
        errors=failed,
        throughput=answered / m.wall_seconds if m.wall_seconds > 0 else 0.0,
        p50_ms=percentile(ok, 50),
        p95_ms=percentile(ok, 95),
        p99_ms=percentile(ok, 99),
        max_ms=ok[-1] if ok else math.nan,
        mean_ms=sum(ok) / len(ok) if ok else math.nan,
        rejected_p50_ms=percentile(rejected, 50),
        rejected_p99_ms=percentile(rejected, 99),
        statuses={str(code): count for code, count in sorted(m.statuses.items())},
        transport_errors=dict(m.transport_errors),
        client_cpu=m.client_cpu_seconds / m.wall_seconds if m.wall_seconds > 0 else 0.0,
        deadline_ms=spec.deadline_ms,
        good=good,
        goodput=answered_good / m.wall_seconds if m.wall_seconds > 0 else 0.0,
        good_share=good / requests if requests else 0.0,
        interrupted=m.interrupted,
    )


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def table(summaries: Sequence[Summary]) -> str:
    """A Markdown table, one row per run; with a goodput deadline, a column of answers within it."""
    deadlines = any(s.deadline_ms is not None for s in summaries)
    head = "| load | req/s | p50 ms | p95 ms | p99 ms | ok | rejected | errors | answers | client CPU |"
    rule = "|---|---|---|---|---|---|---|---|---|---|"
    rows = [head + " good (share) |", rule + "---|"] if deadlines else [head, rule]
    for s in summaries:
        load = (
            f"trace of {s.requests} req"
            if s.mode == "trace"
            else f"{s.connections} conn"
            if s.rate is None
            else f"{s.rate:g} req/s offered"
        )
        row = (
            f"| {load} | {_fmt(s.throughput)} | {_fmt(s.p50_ms, 2)} | {_fmt(s.p95_ms, 2)} | {_fmt(s.p99_ms, 2)} "
            f"| {s.ok} | {s.rejected} | {s.errors} | {answers(s)} | {s.client_cpu:.0%} |"
        )
        if deadlines:
            row += f" {s.good} ({s.good_share:.0%}) |" if s.deadline_ms is not None else " - |"
        rows.append(row)
    return "\n".join(rows)


def answers(s: Summary) -> str:
    """What came back, by HTTP status then transport error: `200: 1,204; 404: 3; TimeoutError: 1` (`-`: nothing)."""
    counts = [*s.statuses.items(), *sorted(s.transport_errors.items())]
    return "; ".join(f"{what}: {count:,}" for what, count in counts) or "-"


_HINTS = {
    400: "check the payload: --payload, one JSON body per line",
    401: "the server wants credentials: pass them with -H 'Authorization: ...' or -H 'X-API-Key: ...'",
    403: "the server refuses these credentials: check the -H values",
    404: "check the URL path, and the model name in it",
    405: "the URL does not take POST: check the path",
    413: "the bodies are too large for the server: lower --inputs-per-request or use smaller --payload bodies",
    415: "the server wants another content type: check the URL path",
    422: "the server refuses the payload: check --payload against its input schema",
    429: "the server is rate-limiting this client: lower --rate or --connections",
    503: "the server is overloaded or not ready: lower the load, or wait for /ready",
}


def failure_message(s: Summary) -> str:
    """One line on a run where no request succeeded: what came back, and what to check."""
    if not s.requests:
        return "no request was measured: lengthen --duration or shorten --warmup"
    statuses = {int(code): count for code, count in s.statuses.items() if not 200 <= int(code) < 300}
    top = max(statuses, key=statuses.__getitem__, default=None)
    if top is not None and statuses[top] * 2 >= s.requests:
        hint = _HINTS.get(top, "see the server's log")
    elif s.transport_errors.get(BACKLOG_ERROR, 0) * 2 >= s.requests:
        hint = "the client could not send at this rate: lower --rate or raise --connections"
    elif s.transport_errors:
        hint = "the connection failed: check that the server is up, speaks HTTP/1.1 and answers within --timeout"
    else:
        hint = "see the server's log"
    return f"no request succeeded out of {s.requests:,} ({answers(s)}): {hint}"


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def to_json(summaries: Sequence[Summary], **extra: Any) -> bytes:
    """JSON document holding `extra` fields and a `runs` list; NaN becomes null."""
    runs = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in s.to_dict().items()} for s in summaries
    ]
    return orjson.dumps({**extra, "runs": runs}, option=orjson.OPT_INDENT_2)

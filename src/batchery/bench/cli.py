"""`batchery bench URL`: load any running HTTP server and report throughput and latency percentiles."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from batchery.bench import payloads, report, trace
from batchery.bench.load import LoadSpec, Measurement, Progress, measure
from batchery.errors import ConfigError

DEFAULT_PATH = "/v1/models/all-minilm-l6-v2/predict"


def _positive_list(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of numbers (e.g. 1,16,64)"
            ) from None
        if not values or any(v <= 0 or math.isnan(v) for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be a number > 0")
        return values

    return parse


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0 or math.isnan(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    return parse


def add_parser(subcommands: Any) -> argparse.ArgumentParser:
    """Register `bench` on the `batchery` command's subparsers."""
    p: argparse.ArgumentParser = subcommands.add_parser(
        "bench",
        help="load a running server and report throughput and latency",
        description="POST request bodies to URL and report throughput, p50/p95/p99 and errors. "
        "Closed loop by default (each connection sends when its last answer arrived); --rate switches to "
        "open loop (a fixed arrival rate, latency counted from the intended send time); --trace replays a "
        "trace of send times (a file, or a seeded bursty one).",
    )
    p.add_argument("url", help=f"endpoint to POST to; a bare http://host:port means {DEFAULT_PATH}")
    p.add_argument("--payload", type=Path, help="file of request bodies, one JSON document per line (rotated)")
    p.add_argument(
        "--inputs-per-request",
        type=_positive(int),
        default=1,
        help="without --payload: sentences per request in the default embedding payload (default 1)",
    )
    p.add_argument(
        "-c", "--connections", type=_positive_list(int), help="connections, or a list to sweep: 1,16,64 (default 16)"
    )
    p.add_argument(
        "-r", "--rate", type=_positive_list(float), help="open loop: arrivals per second, or a list to sweep"
    )
    p.add_argument(
        "--trace",
        help="open loop along a trace: a file of send offsets (s, one a line) or "
        "bursty:high=600,low=60,on=0.5,off=1.5,duration=10,seed=1 (req/s in bursts and between, seconds)",
    )
    p.add_argument(
        "-H", "--header", action="append", default=[], help="'Name: value' sent with every request (repeatable)"
    )
    p.add_argument("--deadline-ms", type=_positive(float), help="count as goodput only answers within this many ms")
    p.add_argument("-d", "--duration", type=_positive(float), default=10.0, help="seconds measured per run (10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring starts (1)")
    p.add_argument("--timeout", type=_positive(float), default=30.0, help="seconds before a request fails (30)")
    p.add_argument("--requests", type=_positive(int), help="stop each run after this many measured requests")
    p.add_argument("--json", dest="json_path", help="write the results as JSON to this file ('-' for stdout)")
    p.add_argument("--plot", type=Path, help="write a latency-vs-throughput PNG here (needs batchery[bench])")
    p.add_argument("-q", "--quiet", action="store_true", help="no live progress line")
    return p


def _url(raw: str) -> str:
    parts = urlsplit(raw if "://" in raw else f"http://{raw}")
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"the URL must look like http://127.0.0.1:8000/path, not {raw!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise ConfigError(f"the URL {raw!r} has an invalid port") from exc
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    return urlunsplit(("http", parts.netloc, path, parts.query, ""))


def _specs(args: argparse.Namespace) -> list[LoadSpec]:
    url = _url(args.url)
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0 seconds, not {args.warmup}")
    bodies = (
        payloads.read_bodies(args.payload)
        if args.payload is not None
        else payloads.embedding_bodies(args.inputs_per_request)
    )
    common = {
        "bodies": bodies,
        "duration": args.duration,
        "warmup": args.warmup,
        "timeout": args.timeout,
        "headers": _headers(args.header),
        "deadline_ms": args.deadline_ms,
    }
    if args.trace is not None:
        if args.rate is not None or (args.connections is not None and len(args.connections) > 1):
            raise ConfigError("with --trace, give no --rate and one --connections value (the pool size)")
        pool = args.connections[0] if args.connections else 128
        arrivals = trace.parse(args.trace)
        return [LoadSpec(url, connections=pool, arrivals=arrivals, max_requests=args.requests, **common)]
    if args.rate is None:
        return [LoadSpec(url, connections=c, max_requests=args.requests, **common) for c in (args.connections or [16])]
    if args.connections is not None and len(args.connections) > 1:
        raise ConfigError("with --rate, give one --connections value: the pool size each rate may use")
    pool = args.connections[0] if args.connections else 128
    return [LoadSpec(url, connections=pool, rate=r, max_requests=args.requests, **common) for r in args.rate]


def _headers(raw: list[str]) -> dict[str, str] | None:
    headers: dict[str, str] = {}
    for text in raw:
        name, sep, value = text.partition(":")
        if not sep or not name.strip() or any(c in text for c in "\r\n"):
            raise ConfigError(f"a header must look like 'Name: value', not {text!r}")
        headers[name.strip()] = value.strip()
    return headers or None


async def _check_reachable(url: str) -> None:
    parts = urlsplit(url)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 80), 5)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"cannot connect to {parts.hostname}:{parts.port or 80} ({exc}); is the server running? "
            "Start one with `batchery serve`"
        ) from exc
    writer.close()


def _progress_printer(label: str) -> Any:
    tty = sys.stderr.isatty()

    def show(p: Progress) -> None:
        phase = "measuring" if p.measuring else "warming up"
        line = (
            f"{label}  {p.elapsed:5.1f}s {phase:<10}  {p.recent_rate:9,.0f} req/s  "
            f"p50 {p.recent_p50_ms:7.2f} ms  done {p.completed:,}  rejected {p.rejected:,}  errors {p.errors:,}"
        )
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    return show


async def _run_all(specs: list[LoadSpec], quiet: bool) -> list[Measurement]:
    await _check_reachable(specs[0].url)
    results = []
    for spec in specs:
        label = (
            f"[trace of {len(spec.arrivals)}]"
            if spec.arrivals is not None
            else f"[{spec.connections} conn]"
            if spec.rate is None
            else f"[{spec.rate:g} req/s]"
        )
        results.append(await measure(spec, None if quiet else _progress_printer(label)))
        if not quiet and sys.stderr.isatty():
            print(file=sys.stderr)
    return results


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed `args`; print the table; 0 on success, 2 on bad arguments."""
    try:
        specs = _specs(args)
        if args.plot is not None:
            from batchery.bench import plot

            plot._pyplot()  # fail before the load, not after it
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            measurements = runner.run(_run_all(specs, args.quiet))
    except ConfigError as exc:
        print(f"batchery bench: {exc.message}", file=sys.stderr)
        return 2
    summaries = [report.summarize(m) for m in measurements]
    print(f"{specs[0].url}  ({len(specs[0].bodies)} distinct bodies)")
    print(report.table(summaries))
    if args.json_path == "-":
        sys.stdout.write(report.to_json(summaries).decode() + "\n")
    elif args.json_path:
        Path(args.json_path).write_bytes(report.to_json(summaries))
    if args.plot is not None:
        from batchery.bench import plot

        points = [(s.throughput, s.p50_ms, s.p99_ms) for s in summaries if s.ok]
        plot.latency_vs_throughput({urlsplit(specs[0].url).netloc: points}, args.plot, title=specs[0].url)
        print(f"plot written to {args.plot}")
    return 0

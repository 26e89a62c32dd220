"""`batchery bench URL`: load any running HTTP server and report throughput and latency percentiles."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from batchery.bench import outputs, payloads, report, trace
from batchery.bench.load import BACKLOG_ERROR, Measurement, Progress, measure
from batchery.bench.spec import MAX_RATE, LoadSpec
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
        if not values or not all(v > 0 and math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be a finite number > 0")
        return values

    return parse


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
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
        "trace of send times (a file, or a seeded bursty one). Exits 0 when requests succeeded, 1 when none did, "
        "2 on bad arguments, 130 on Ctrl-C (after printing what was measured until then).",
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
        "-r",
        "--rate",
        type=_positive_list(float),
        help=f"open loop: arrivals per second, or a list to sweep (at most {MAX_RATE:,.0f})",
    )
    p.add_argument(
        "--trace",
        help="open loop along a trace: a file of send offsets (s, one a line) or "
        "bursty:high=600,low=60,on=0.5,off=1.5,duration=10,seed=1 (req/s in bursts and between, seconds). "
        "The run lasts as long as the trace, and its first --warmup seconds are sent but not measured: a trace "
        "that ends within the warm-up is refused (pass --warmup 0 to measure it all)",
    )
    p.add_argument(
        "-H", "--header", action="append", default=[], help="'Name: value' sent with every request (repeatable)"
    )
    p.add_argument("--deadline-ms", type=_positive(float), help="count as goodput only answers within this many ms")
    p.add_argument("-d", "--duration", type=_positive(float), default=10.0, help="seconds measured per run (10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring starts (1)")
    p.add_argument("--timeout", type=_positive(float), default=30.0, help="seconds before a request fails (30)")
    p.add_argument("--requests", type=_positive(int), help="stop each run after this many measured requests")
    p.add_argument(
        "--json",
        dest="json_path",
        help="write the results as JSON to this file; '-' for stdout, the table then goes to stderr",
    )
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
    if not (args.warmup >= 0 and math.isfinite(args.warmup)):
        raise ConfigError(f"--warmup must be >= 0 seconds and finite, not {args.warmup}")
    if args.rate is not None and max(args.rate) > MAX_RATE:
        raise ConfigError(
            f"--rate {max(args.rate):g} is more than one bench process can time (at most {MAX_RATE:,.0f} req/s, "
            "and it sends fewer than that); lower the rate, or run several clients"
        )
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


def _label(spec: LoadSpec) -> str:
    if spec.arrivals is not None:
        return f"[trace of {len(spec.arrivals)}]"
    return f"[{spec.connections} conn]" if spec.rate is None else f"[{spec.rate:g} req/s]"


@contextlib.contextmanager
def _ctrl_c_sets(stop: asyncio.Event) -> Iterator[None]:
    """While inside, Ctrl-C sets `stop` (the run ends and reports) instead of cancelling everything."""
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        with contextlib.suppress(TypeError, ValueError):
            signal.signal(signal.SIGINT, previous)  # asyncio.Runner's own handler, for Ctrl-C after the runs


async def _run_all(specs: list[LoadSpec], quiet: bool) -> list[Measurement]:
    await _check_reachable(specs[0].url)
    results = []
    stop = asyncio.Event()
    with _ctrl_c_sets(stop):
        for spec in specs:
            results.append(await measure(spec, None if quiet else _progress_printer(_label(spec)), stop=stop))
            if not quiet and sys.stderr.isatty():
                print(file=sys.stderr)
            if stop.is_set():
                break
    return results


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed `args` and print the table (to stderr when the JSON goes to stdout).

    Returns 0 when requests succeeded, 1 when none did (or a result could not be written), 2 on bad arguments and
    130 on Ctrl-C, after printing what was measured until then.
    """
    out = sys.stderr if args.json_path == "-" else sys.stdout
    try:
        specs = _specs(args)
        outputs.check(args.json_path, args.plot)  # fail before the load, not after it
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            measurements = runner.run(_run_all(specs, args.quiet))
    except ConfigError as exc:
        print(f"batchery bench: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbatchery bench: interrupted before anything was measured", file=sys.stderr)
        return 130
    summaries = [report.summarize(m) for m in measurements]
    interrupted = any(m.interrupted for m in measurements)
    if interrupted:
        measured = (
            "these are the results measured until Ctrl-C"
            if any(s.requests for s in summaries)
            else "nothing was measured yet (still in the warm-up)"
        )
        print(f"\nbatchery bench: interrupted: {measured}", file=sys.stderr)
    print(f"{specs[0].url}  ({len(specs[0].bodies)} distinct bodies)", file=out)
    print(report.table(summaries), file=out)
    try:
        outputs.write(args.json_path, args.plot, summaries, out)
    except OSError as exc:
        print(f"batchery bench: cannot write the results: {exc}", file=sys.stderr)
        return 1
    for s, spec in zip(summaries, specs, strict=False):
        if unsent := s.transport_errors.get(BACKLOG_ERROR, 0):
            print(
                f"batchery bench: {_label(spec)}: {unsent:,} arrivals were never sent: the client could not keep up "
                f"with this rate on {spec.connections} connections; lower --rate or raise --connections",
                file=sys.stderr,
            )
    if interrupted:
        return 130
    failed = [(s, spec) for s, spec in zip(summaries, specs, strict=False) if not s.ok]
    for s, spec in failed:
        print(f"batchery bench: {_label(spec)}: {report.failure_message(s)}", file=sys.stderr)
    return 1 if len(failed) == len(summaries) else 0

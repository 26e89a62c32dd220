"""Adaptive batching benchmark (issue 8): the adaptive policy against batching off and a sweep of fixed settings.

    python -m benchmarks.adaptive                   # 3 rounds, every configuration once per round
    python -m benchmarks.adaptive --fixed 8x1,32x5  # a trimmed sweep
    python -m benchmarks.adaptive --fixed 8x1 --no-off --candidate /tmp/wt/src  # a batcher change, side by side

Each round starts `batchery serve` (the default model) once per configuration, in an order rotated from round to
round so that a slow spell of the shared machine does not fall on one configuration only, and measures:
  c1     closed loop at 1 connection (wrk): p50 latency
  c64    closed loop at 64 connections (wrk): throughput at saturation
  trace  an open-loop bursty trace (bursts at 2x the capacity measured first, quiet periods at 0.2x; fixed seed)
         with `X-Request-Timeout-Ms` sent: goodput = answers 200 within the deadline, from the intended send time
Figures are medians over the rounds. Holds /tmp/batchery-bench.lock during each server's measurements only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import uvloop

from batchery.bench import report, trace
from batchery.bench.load import LoadSpec, measure
from benchmarks import loadgen
from benchmarks.adaptive import configs, markdown
from benchmarks.adaptive.configs import Config
from benchmarks.adaptive.server import PATH, batching_between, metrics, model_info, serving
from benchmarks.servers import HERE, bodies

LOCK = Path("/tmp/batchery-bench.lock")
RESULTS = HERE / "results"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked(wait_s: float = 900.0) -> Iterator[None]:
    """Hold the benchmark lock; while another benchmark holds it, wait (up to `wait_s`, then fail)."""
    give_up = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL)  # atomic: never take over another's lock
            break
        except FileExistsError:
            if time.monotonic() > give_up:
                raise RuntimeError(f"{LOCK} held by another benchmark for {wait_s:.0f} s: try again later") from None
            time.sleep(2)
    os.write(fd, f"benchmarks.adaptive pid {os.getpid()}\n".encode())
    os.close(fd)
    try:
        yield
    finally:
        LOCK.unlink(missing_ok=True)


def _phase(base: str, run: Any) -> dict[str, Any]:
    before = metrics(base)
    result: dict[str, Any] = run()
    result["batching"] = batching_between(before, metrics(base))
    return result


def _trace_run(url: str, texts: list[bytes], arrivals: list[float], deadline_ms: float) -> dict[str, Any]:
    spec = LoadSpec(
        url,
        texts,
        connections=256,
        arrivals=arrivals,
        warmup=0.0,
        timeout=30.0,
        headers={"X-Request-Timeout-Ms": f"{deadline_ms:g}"},
        deadline_ms=deadline_ms,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        s = report.summarize(runner.run(measure(spec)))
    return {
        "requests": s.requests,
        "ok": s.ok,
        "good": s.good,
        "good_share": s.good_share,
        "p50_ms": s.p50_ms,
        "p99_ms": s.p99_ms,
        "statuses": s.statuses,
        "errors": s.errors,
        "client_cpu": s.client_cpu,
    }


def session(config: Config, args: argparse.Namespace, state: dict[str, Any], log_dir: Path) -> dict[str, Any]:
    """One server for `config`: warm-up, then c1, c64 and the trace, with the batching seen during each."""
    texts = bodies("native", "embed")
    log_file = log_dir / f"adaptive-{config.label.replace(' ', '-')}.log"
    out: dict[str, Any] = {"config": config.label, "load_avg_before": os.getloadavg()[0]}
    with locked(), serving(config, log_file) as base:
        url = base + PATH
        loadgen.closed_loop(url, texts, 16, 2.0)  # warm-up: the cost model trains, lazy paths load
        out["c1"] = _phase(base, lambda: loadgen.closed_loop(url, texts, 1, args.duration))
        out["c64"] = _phase(base, lambda: loadgen.closed_loop(url, texts, 64, args.duration))
        if state.get("arrivals") is None:
            state["capacity"] = args.capacity or out["c64"]["throughput"]
            cap = state["capacity"]
            state["arrivals"] = trace.bursty(2 * cap, 0.2 * cap, args.burst_s, args.quiet_s, args.trace_s, args.seed)
            log(f"  trace: capacity {cap:.0f} req/s -> {len(state['arrivals'])} arrivals over {args.trace_s:g} s")
        out["trace"] = _phase(base, lambda: _trace_run(url, texts, state["arrivals"], args.deadline_ms))
        out["batch_cap"] = model_info(base)["batch_cap"]
    out["load_avg_after"] = os.getloadavg()[0]
    return out


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _computed(batching: dict[str, Any]) -> float:
    return float(batching["batches"] * (batching["mean_batch"] or 0.0))


def summarize(sessions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median per configuration of the figures compared, with every run's value kept beside it."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for s in sessions:
        if "error" not in s:
            by_config.setdefault(s["config"], []).append(s)
    figures: dict[str, dict[str, Any]] = {}
    picks = {
        "c1_p50_ms": ("c1", "p50_ms"),
        "c1_p99_ms": ("c1", "p99_ms"),
        "c64_rps": ("c64", "throughput"),
        "c64_p99_ms": ("c64", "p99_ms"),
        "trace_good": ("trace", "good"),
        "trace_good_share": ("trace", "good_share"),
        "trace_ok": ("trace", "ok"),
    }
    for label, runs in by_config.items():
        row: dict[str, Any] = {"runs": len(runs)}
        for key, (phase, field) in picks.items():
            values = [r[phase][field] for r in runs]
            row[key] = _median(values)
            row[key + "_all"] = values
        # Inputs the lanes computed during the trace: beyond `trace_ok`, compute spent on answers that came too late.
        row["trace_computed"] = _median([_computed(r["trace"]["batching"]) for r in runs])
        for phase in ("c1", "c64", "trace"):
            row[f"{phase}_mean_batch"] = _median([r[phase]["batching"]["mean_batch"] for r in runs])
            row[f"{phase}_mean_queue_wait_ms"] = _median([r[phase]["batching"]["mean_queue_wait_ms"] for r in runs])
        figures[label] = row
    return figures


def paired(sessions: list[dict[str, Any]], other: str, phase: str, field: str) -> float | None:
    """Median over rounds of adaptive / `other` for one figure, each ratio taken within one round (the machine's
    speed drifts over a run, and a round's sessions are minutes apart instead of the whole run)."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for s in sessions:
        if "error" not in s:
            by_round.setdefault(s["round"], {})[s["config"]] = s
    ratios = []
    for runs in by_round.values():
        if "adaptive" in runs and other in runs and runs[other][phase][field]:
            ratios.append(runs["adaptive"][phase][field] / runs[other][phase][field])
    return statistics.median(ratios) if ratios else None


def verdicts(
    figures: dict[str, dict[str, Any]], deadline_ms: float, sessions: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The three targets of issue 8, judged on the medians, with the medians of the per-round ratios beside."""
    sessions = sessions or []
    adaptive, off = figures.get("adaptive"), figures.get("off")
    fixed = {k: v for k, v in figures.items() if k.startswith("fixed")}
    out: dict[str, Any] = {}
    if adaptive and off and adaptive["c1_p50_ms"] and off["c1_p50_ms"]:
        ratio = adaptive["c1_p50_ms"] / off["c1_p50_ms"]
        out["c1_p50"] = {"adaptive_over_off": ratio, "target": "<= 1.10", "met": ratio <= 1.10}
        out["c1_p50"]["paired"] = paired(sessions, "off", "c1", "p50_ms")
    if adaptive and fixed:
        best = max(fixed, key=lambda k: fixed[k]["c64_rps"] or 0.0)
        ratio = (adaptive["c64_rps"] or 0.0) / (fixed[best]["c64_rps"] or 1.0)
        out["c64_throughput"] = {"best_fixed": best, "adaptive_over_best": ratio, "target": ">= 0.95"}
        out["c64_throughput"]["met"] = ratio >= 0.95
        out["c64_throughput"]["paired"] = {k: paired(sessions, k, "c64", "throughput") for k in fixed}
        best_good = max(fixed, key=lambda k: fixed[k]["trace_good"] or 0.0)
        out["trace_goodput"] = {
            "deadline_ms": deadline_ms,
            "best_fixed": best_good,
            "adaptive_good": adaptive["trace_good"],
            "best_fixed_good": fixed[best_good]["trace_good"],
            "target": "adaptive > every fixed",
            "met": (adaptive["trace_good"] or 0.0) > (fixed[best_good]["trace_good"] or 0.0),
            "paired": {k: paired(sessions, k, "trace", "good") for k in [*fixed, "off"]},
        }
    return out


def _write(results: dict[str, Any], out: Path) -> None:
    results["figures"] = summarize(results["sessions"])
    results["verdicts"] = verdicts(results["figures"], results["deadline_ms"], results["sessions"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "adaptive.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    (out / "adaptive.md").write_text(markdown.render(results))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.adaptive", description=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="runs of every configuration, for the median (3)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of each closed-loop measurement (4)")
    p.add_argument("--fixed", default="all", help="fixed configurations: all (8,16,32 x 1,2,5,10 ms) or 8x1,32x5,...")
    p.add_argument("--deadline-ms", type=float, default=100.0, help="goodput deadline, also sent as header (100)")
    p.add_argument("--capacity", type=float, help="req/s the trace is scaled to (default: first c64 measured)")
    p.add_argument("--trace-s", type=float, default=8.0, help="length of the bursty trace in seconds (8)")
    p.add_argument("--burst-s", type=float, default=0.5, help="burst length, at 2x capacity (0.5 s)")
    p.add_argument("--quiet-s", type=float, default=1.5, help="quiet period length, at 0.2x capacity (1.5 s)")
    p.add_argument("--no-off", action="store_true", help="leave out batching off")
    p.add_argument("--candidate", help="also serve the adaptive policy from this checkout's src/ (a change to try)")
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--pause", type=float, default=3.0, help="seconds without the lock between servers (3)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    candidates = [configs.ADAPTIVE, *([] if args.no_off else [configs.OFF]), *configs.sweep(args.fixed)]
    if args.candidate:
        candidates.insert(1, configs.candidate(str(Path(args.candidate).resolve())))
    results: dict[str, Any] = {
        "command": "python -m benchmarks.adaptive " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cores": len(os.sched_getaffinity(0)),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "deadline_ms": args.deadline_ms,
        "trace": {"burst_s": args.burst_s, "quiet_s": args.quiet_s, "length_s": args.trace_s, "seed": args.seed},
        "configs": [c.label for c in candidates],
        "sessions": [],
    }
    state: dict[str, Any] = {}
    log_dir = args.out / "raw" / "logs"
    try:
        for round_index in range(args.rounds):
            shift = round_index * len(candidates) // max(1, args.rounds)
            for config in candidates[shift:] + candidates[:shift]:
                log(f"round {round_index + 1}/{args.rounds}: {config.label}")
                try:
                    s = session(config, args, state, log_dir)
                except (RuntimeError, OSError) as exc:
                    log(f"  FAILED: {exc}")
                    s = {"config": config.label, "error": str(exc)}
                s["round"] = round_index + 1
                results["sessions"].append(s)
                results["trace"].update(capacity=state.get("capacity"), arrivals=len(state.get("arrivals") or ()))
                if "error" not in s:
                    t = s["trace"]
                    log(
                        f"  c1 p50 {s['c1']['p50_ms']:.2f} ms | c64 {s['c64']['throughput']:.0f} req/s"
                        f" (batch {s['c64']['batching']['mean_batch'] or 0:.1f})"
                        f" | trace good {t['good']}/{t['requests']}"
                        f" (batch {t['batching']['mean_batch'] or 0:.1f}) | load {s['load_avg_before']:.1f}"
                    )
                _write(results, args.out)
                time.sleep(args.pause)
    except KeyboardInterrupt:
        log("interrupted; writing what was measured")
    except Exception:
        traceback.print_exc()
    finally:
        with contextlib.suppress(FileNotFoundError):
            if f"pid {os.getpid()}" in LOCK.read_text():  # ours, left by an interruption mid-measurement
                LOCK.unlink()
        results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        _write(results, args.out)
    log(f"results in {args.out / 'adaptive.json'} and {args.out / 'adaptive.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

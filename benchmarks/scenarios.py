"""Scenarios beyond the side-by-side table, batchery only: overload at 2x saturation, memory over 200k requests."""

from __future__ import annotations

import argparse
import resource
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import loadgen
from benchmarks.servers import PEERS_ALL, Knobs, bodies, rss_kib, running

OVERLOAD_CONNECTIONS = 4096


def overload(results: dict[str, Any], duration: float, log_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Open loop at twice the measured capacity: fast 503s, goodput near capacity, accepted p99 bounded."""
    embed = results["workloads"].get("embed", {}).get("batchery", {}).get("closed")
    if not embed:
        return {"skipped": "needs the embed workload measured for batchery"}
    capacity = embed["64"]["throughput"]
    unloaded_p99 = embed["1"]["p99_ms"]
    peer = PEERS_ALL["batchery"]
    _allow_open_files(2 * OVERLOAD_CONNECTIONS + 256)  # the generator's sockets; the server inherits the limit
    with running(peer, "embed", Knobs(), log_dir) as server:
        body_list = bodies("native", "embed")
        loadgen.closed_loop(server.url, body_list, 16, 2.0)
        # Enough connections for the default queue bound (1,024 inputs a worker, two workers) and the refusals
        # beside it: with fewer, the generator's own pool caps what is in flight, the queue never fills, and
        # nothing is refused by the server (the first sessions' runs, 1,024 connections, measured that).
        point = loadgen.open_loop(server.url, body_list, 2 * capacity, duration, pool=OVERLOAD_CONNECTIONS)
        health = server.url.split("/v1/")[0] + "/health"
        with urllib.request.urlopen(health, timeout=5) as r:
            alive = r.status == 200
    out = {
        "offered_per_s": round(2 * capacity),
        "capacity_per_s": round(capacity),
        "goodput_per_s": round(point["throughput"]),
        "goodput_share": point["throughput"] / capacity,
        "rejected": point["rejected"],
        "rejected_p50_ms": point["rejected_p50_ms"],
        "rejected_p99_ms": point["rejected_p99_ms"],
        "accepted_p99_ms": point["p99_ms"],
        "unloaded_p99_ms": unloaded_p99,
        "accepted_p99_over_unloaded": point["p99_ms"] / unloaded_p99 if unloaded_p99 else None,
        "errors": point["errors"],
        "client_cpu": point["client_cpu"],
        "alive_after": alive,
    }
    out["targets_met"] = bool(
        alive
        and out["goodput_share"] >= 0.9
        and (out["rejected_p99_ms"] or 0) < 5
        and (out["accepted_p99_over_unloaded"] or 99) < 3
    )
    log(f"  overload: {out}")
    return out


def _allow_open_files(count: int) -> None:
    """Raise this process' soft limit on open files towards `count` (at most its hard limit): with the common
    default of 1,024, the scenario would measure EMFILE errors instead of overload."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def memory(total: int, log_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """RSS of `batchery serve` (noop echo) after 10k requests and after `total` requests, driven by wrk c16."""
    peer = PEERS_ALL["batchery"]
    with running(peer, "noop", Knobs(), log_dir) as server:
        body_list = bodies("native", "noop")
        done = 0
        marks: dict[str, Any] = {}
        while done < total:
            target = 10_000 if "rss_10k_kib" not in marks else total
            r = loadgen.closed_loop(server.url, body_list, 16, 2.0 if target == 10_000 else 5.0)
            done += r["requests"]
            if done >= 10_000 and "rss_10k_kib" not in marks:
                marks["rss_10k_kib"] = rss_kib(server.process.pid)
                marks["requests_at_first"] = done
        time.sleep(0.5)
        marks["rss_final_kib"] = rss_kib(server.process.pid)
        marks["requests_total"] = done
    marks["growth"] = marks["rss_final_kib"] / marks["rss_10k_kib"] - 1
    marks["target_met"] = marks["growth"] <= 0.10
    log(f"  memory: {marks}")
    return marks


def run_all(
    results: dict[str, Any], args: argparse.Namespace, log_dir: Path, locked: Any, log: Callable[[str], None]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    log("scenario: overload at 2x saturation")
    try:
        with locked():
            out["overload"] = overload(results, args.duration, log_dir, log)
    except Exception as exc:
        out["overload"] = {"error": str(exc)}
    time.sleep(args.pause)
    log("scenario: memory")
    try:
        with locked():
            out["memory"] = memory(50_000 if args.quick else 200_000, log_dir, log)
    except Exception as exc:
        out["memory"] = {"error": str(exc)}
    return out

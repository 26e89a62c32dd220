"""Where the two cores go while batchery serves the embed workload: per thread, the machine, the client.

    python -m benchmarks.cpu_split [--conns 16,64] [--duration 10] [--overload]
        [--out benchmarks/results/cpu-split.json]

Starts `batchery serve` (default model, default configuration), warms it up, then for each load runs wrk (closed
loop; with --overload, then batchery's open-loop generator at twice the last load's throughput) while reading
every thread's CPU time from /proc/<pid>/task and the machine's split (user, system, idle, steal) from
/proc/stat. Unlike a sampling profiler, it neither slows the server nor counts a thread that waits
(for the GIL, for a batch) as busy: a machine that is not saturated shows up as idle time.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks import loadgen, scenarios
from benchmarks.servers import PEERS_ALL, Knobs, bodies, running

TICK = os.sysconf("SC_CLK_TCK")
MACHINE_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def thread_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`, by thread id."""
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # the thread ended
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def machine_seconds() -> list[float]:
    """The machine's CPU seconds so far, per field of `MACHINE_FIELDS` (all cores together)."""
    with open("/proc/stat") as f:
        values = f.readline().split()[1 : 1 + len(MACHINE_FIELDS)]
    return [int(v) / TICK for v in values]


def measure(pid: int, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One run of `load` (a loadgen function's result) with the CPU split of the server's threads and of the
    machine, in cores."""
    threads_before, machine_before, started = thread_seconds(pid), machine_seconds(), time.monotonic()
    result = load()
    threads_after, machine_after = thread_seconds(pid), machine_seconds()
    wall = time.monotonic() - started
    per_thread = {tid: (seconds - threads_before.get(tid, 0.0)) / wall for tid, seconds in threads_after.items()}
    loop = per_thread.pop(pid, 0.0)  # the main thread runs the event loop
    others = sorted((cores for cores in per_thread.values() if cores > 0.005), reverse=True)
    rate = result["throughput"]
    return {
        "connections": result["connections"],
        "offered_per_s": result.get("rate"),  # open loop only
        "throughput": rate,
        "rejected": result.get("rejected", 0),
        "event_loop_cores": loop,
        "event_loop_ms_per_request": 1000 * loop / rate if rate else None,
        "other_threads_cores": others,  # the model's lanes first (the busiest)
        "server_cores": loop + sum(others),
        "client_cores": result["client_cpu"],
        "machine_cores": {
            name: (after - before) / wall
            for name, before, after in zip(MACHINE_FIELDS, machine_before, machine_after, strict=True)
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", default="16,64", help="closed-loop connections, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load")
    parser.add_argument(
        "--overload",
        action="store_true",
        help="then open loop at twice the last closed load's throughput (the suite's overload scenario)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu-split.json"))
    args = parser.parse_args(argv)
    loads = [int(c) for c in args.conns.split(",")]
    rows = []
    body = bodies("native", "embed")
    with running(PEERS_ALL["batchery"], "embed", Knobs(), Path("/tmp/batchery-cpu-split")) as server:
        pid, url = server.process.pid, server.url
        loadgen.closed_loop(url, body, 16, 3)  # warm-up
        for connections in loads:
            rows.append(measure(pid, functools.partial(loadgen.closed_loop, url, body, connections, args.duration)))
            _show(f"c{connections}", rows[-1])
        if args.overload and rows:
            rate = 2 * rows[-1]["throughput"]
            pool = scenarios.OVERLOAD_CONNECTIONS
            rows.append(measure(pid, functools.partial(loadgen.open_loop, url, body, rate, args.duration, pool=pool)))
            _show(f"open loop at {rate:.0f}/s ({rows[-1]['rejected']} refused)", rows[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(
        orjson.dumps({"when": time.strftime("%Y-%m-%d %H:%M"), "loads": rows}, option=orjson.OPT_INDENT_2)
    )
    print(f"wrote {args.out}")
    return 0


def _show(load: str, row: dict[str, Any]) -> None:
    idle = row["machine_cores"]["idle"]
    busiest = ", ".join(f"{cores:.3f}" for cores in row["other_threads_cores"])
    print(
        f"{load}: {row['throughput']:.0f} req/s; busiest other threads {busiest} cores, event loop"
        f" {row['event_loop_cores']:.3f} ({row['event_loop_ms_per_request']:.3f} ms an answered request), client"
        f" {row['client_cores']:.3f}, machine idle {idle:.3f} of 2",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())

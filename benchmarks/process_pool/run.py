"""Process-pool benchmark: a pure-Python pre-processing step with threads vs 1 and 2 spawned processes.

    .venv/bin/python -m benchmarks.process_pool.run [--requests 160] [--concurrency 8]

While the load runs, `/health` is probed every 20 ms: its latency shows whether the event loop stays
responsive. Writes benchmarks/results/process_pool.json and prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.ocr.run import free_port, server
from benchmarks.process_pool.work import preprocess

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "process_pool.json"
LAYOUTS = (("thread", 2), ("process", 1), ("process", 2))


async def load(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    health: list[float] = []
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                started = time.perf_counter()
                (await http.get("/health")).raise_for_status()
                health.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

        counter = iter(range(requests))

        async def worker() -> None:
            for index in counter:
                started = time.perf_counter()
                response = await http.post("/v1/models/prep/predict", json={"input": f"text {index}"})
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm-up: the first pass is discarded
        latencies.clear()
        counter = iter(range(requests))
        prober = asyncio.create_task(probe())
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        done.set()
        await prober
    health.sort()
    return {
        "requests_per_s": requests / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "health_p50_ms": 1000 * statistics.median(health),
        "health_p99_ms": 1000 * health[min(len(health) - 1, int(0.99 * len(health)))],
        "health_probes": len(health),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    started = time.perf_counter()
    for _ in range(10):
        preprocess("x")
    one_call_ms = (time.perf_counter() - started) * 100
    runs = []
    for kind, workers in LAYOUTS:
        port = free_port()
        command = [sys.executable, "-m", "benchmarks.process_pool.app", kind, str(workers), str(port)]
        with server(command, port, "/ready") as url:
            run = {"pool": kind, "workers": workers, **asyncio.run(load(url, args.requests, args.concurrency))}
        runs.append(run)
        print(run, file=sys.stderr)
    summary = {"cores": len(os.sched_getaffinity(0)), "one_call_ms": one_call_ms, **vars(args), "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    print(markdown(summary))


def markdown(summary: dict[str, Any]) -> str:
    rows = [
        "| pool | workers | requests/s | p50 ms | /health p50 ms | /health p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        rows.append(
            f"| {run['pool']} | {run['workers']} | {run['requests_per_s']:.1f} | {run['p50_ms']:.0f} | "
            f"{run['health_p50_ms']:.1f} | {run['health_p99_ms']:.1f} |"
        )
    rows.append("")
    rows.append(
        f"One pre-processing call: {summary['one_call_ms']:.0f} ms of pure Python; {summary['requests']} requests at "
        f"concurrency {summary['concurrency']}, {summary['cores']} cores."
    )
    return "\n".join(rows)


if __name__ == "__main__":
    main()

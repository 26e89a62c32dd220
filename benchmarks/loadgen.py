"""The suite's load generators: wrk (closed loop, C, little CPU) and batchery's own open-loop generator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import orjson

from batchery.bench import report
from batchery.bench.load import LoadSpec, measure

HERE = Path(__file__).resolve().parent


def closed_loop(url: str, bodies: list[bytes], connections: int, duration: float) -> dict[str, Any]:
    """One wrk run; returns throughput of 2xx answers, percentiles (ms), errors and wrk's CPU share."""
    with tempfile.TemporaryDirectory() as tmp:
        bodies_file = Path(tmp) / "bodies.txt"
        bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
        out_file = Path(tmp) / "out.json"
        env = {**os.environ, "WRK_BODIES": str(bodies_file), "WRK_OUT": str(out_file)}
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "30s"]
        argv += ["-s", str(HERE / "wrk" / "rotate.lua"), url]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not out_file.exists():
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"wrk failed ({proc.returncode}): {err.strip()}")
        w = orjson.loads(out_file.read_bytes())
    seconds = w["duration_us"] / 1e6
    socket_errors = w["connect"] + w["read"] + w["write"] + w["timeout"]
    ok = w["requests"] - w["status"]
    return {
        "mode": "closed",
        "connections": connections,
        "throughput": ok / seconds,
        "p50_ms": w["p50_us"] / 1000,
        "p95_ms": w["p95_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "max_ms": w["max_us"] / 1000,
        "requests": w["requests"],
        "errors": w["status"] + socket_errors,
        "client_cpu": (usage.ru_utime + usage.ru_stime) / seconds,
    }


def open_loop(url: str, bodies: list[bytes], rate: float, duration: float, pool: int = 256) -> dict[str, Any]:
    """One fixed-rate run with batchery's generator (latency from the intended send time)."""
    import uvloop

    spec = LoadSpec(url, bodies, connections=pool, rate=rate, duration=duration, warmup=0.5, timeout=30.0)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        s = report.summarize(runner.run(measure(spec)))
    return {
        "mode": "open",
        "rate": rate,
        "connections": pool,
        "throughput": s.throughput,
        "p50_ms": s.p50_ms,
        "p95_ms": s.p95_ms,
        "p99_ms": s.p99_ms,
        "max_ms": s.max_ms,
        "requests": s.requests,
        "rejected": s.rejected,
        "rejected_p50_ms": s.rejected_p50_ms,
        "rejected_p99_ms": s.rejected_p99_ms,
        "errors": s.errors,
        "client_cpu": s.client_cpu,
    }

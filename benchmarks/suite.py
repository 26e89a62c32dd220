"""The side-by-side benchmark: batchery and its peers, same model, same loads; results to benchmarks/results/.

    python -m benchmarks.suite            # full run (median of 3)
    python -m benchmarks.suite --quick    # one short run per load, first configuration of each peer only

Holds /tmp/batchery-bench.lock while measuring (other engineers then hold off CPU-heavy work) and releases
it between servers for --pause seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from benchmarks import loadgen, report_md, scenarios
from benchmarks.servers import HERE, PEERS_ALL, ROOT, Knobs, Peer, bodies, running

LOCK = Path("/tmp/batchery-bench.lock")
LOADS = (1, 16, 64)
OPEN_FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.25)


@contextlib.contextmanager
def locked() -> Iterator[None]:
    LOCK.write_text(f"benchmarks.suite pid {__import__('os').getpid()}\n")
    try:
        yield
    finally:
        LOCK.unlink(missing_ok=True)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def offline_limit(seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(HERE / "offline.py"), str(seconds)], check=True, capture_output=True, cwd=ROOT
    )
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(runs[0])
    for key in ("throughput", "p50_ms", "p95_ms", "p99_ms", "max_ms", "errors", "client_cpu", "requests"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            merged[key] = statistics.median(values)
    merged["runs"] = len(runs)
    merged["throughput_all"] = [round(r["throughput"], 1) for r in runs]
    return merged


def _closed_block(url: str, workload: str, peer: str, loads: tuple[int, ...], duration: float) -> dict[int, Any]:
    body_list = bodies(PEERS_ALL[peer].kind, workload)
    loadgen.closed_loop(url, body_list, 16, min(2.0, duration))  # warm-up: caches, JIT paths, lazy loads
    return {c: loadgen.closed_loop(url, body_list, c, duration) for c in loads}


def measure_peer(peer_name: str, workload: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """Sweep the peer's configurations once per load, then repeat each load's best `runs - 1` more times."""
    peer = PEERS_ALL[peer_name]
    sweep: list[dict[str, Any]] = []
    for knobs in peer.configs(workload, args.quick):
        log(f"{peer_name} {workload}: {peer.label(knobs)}")
        try:
            with locked(), running(peer, workload, knobs, log_dir) as server:
                result = _closed_block(server.url, workload, peer_name, LOADS, args.duration)
            sweep.append({"knobs": knobs, "loads": result})
            for c, r in result.items():
                log(f"  c{c}: {r['throughput']:.0f} req/s p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} e {r['errors']}")
        except Exception as exc:
            log(f"  FAILED: {exc}")
            sweep.append({"knobs": knobs, "error": str(exc)})
        time.sleep(args.pause)
    good = [s for s in sweep if "loads" in s]
    if not good:
        return {"error": "; ".join(s["error"] for s in sweep), "sweep": _plain(peer, sweep)}
    best: dict[int, dict[str, Any]] = {}
    for c in LOADS:
        # At one connection latency matters; under load, throughput.
        winner = max(good, key=lambda s, c=c: -s["loads"][c]["p50_ms"] if c == 1 else s["loads"][c]["throughput"])
        best[c] = {"knobs": winner["knobs"], "runs": [winner["loads"][c]]}
    for knobs in {b["knobs"] for b in best.values()}:
        loads = tuple(c for c in LOADS if best[c]["knobs"] == knobs)
        for _ in range(args.runs - 1):
            try:
                with locked(), running(peer, workload, knobs, log_dir) as server:
                    extra = _closed_block(server.url, workload, peer_name, loads, args.duration)
                for c in loads:
                    best[c]["runs"].append(extra[c])
            except Exception as exc:
                log(f"  repeat FAILED: {exc}")
            time.sleep(args.pause)
    final = {str(c): {**_median(b["runs"]), "config": peer.label(b["knobs"])} for c, b in best.items()}
    return {"closed": final, "sweep": _plain(peer, sweep)}


def _plain(peer: Peer, sweep: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**s, "knobs": peer.label(s["knobs"])} for s in sweep]


def open_sweep(
    peer_name: str, workload: str, knobs: Knobs, rates: list[float], args: argparse.Namespace, log_dir: Path
) -> list[dict[str, Any]]:
    peer = PEERS_ALL[peer_name]
    points = []
    log(f"{peer_name} {workload}: open loop at {', '.join(f'{r:.0f}' for r in rates)} req/s ({peer.label(knobs)})")
    try:
        with locked(), running(peer, workload, knobs, log_dir) as server:
            body_list = bodies(peer.kind, workload)
            loadgen.closed_loop(server.url, body_list, 16, 2.0)
            for rate in rates:
                point = loadgen.open_loop(server.url, body_list, rate, args.duration)
                log(
                    f"  {rate:.0f}/s: {point['throughput']:.0f} ok/s p50 {point['p50_ms']:.1f}"
                    f" p99 {point['p99_ms']:.1f} rejected {point['rejected']} errors {point['errors']}"
                    f" client CPU {point['client_cpu']:.0%}"
                )
                points.append(point)
    except Exception as exc:
        log(f"  FAILED: {exc}")
    time.sleep(args.pause)
    return points


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__)
    p.add_argument("--quick", action="store_true", help="1 run, short durations, first configuration of each peer")
    p.add_argument("--runs", type=int, default=3, help="runs per load for the median (default 3)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement (default 8)")
    p.add_argument("--servers", default="batchery,batchery-granian,fastapi,mosec,pytriton,litserve")
    p.add_argument("--workloads", default="noop,embed,embed16")
    p.add_argument("--pause", type=float, default=5.0, help="seconds without the lock between servers")
    p.add_argument("--no-open-loop", action="store_true")
    p.add_argument("--no-scenarios", action="store_true", help="skip the overload and memory scenarios")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    # SIGTERM (and SIGINT, which background jobs ignore) unwind through the `finally` blocks: servers are stopped,
    # the lock removed and what was measured written.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    if args.quick:
        args.runs, args.duration = 1, min(args.duration, 3.0)
    command = "python -m benchmarks.suite " + " ".join(argv if argv is not None else sys.argv[1:])
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [s for s in servers if s not in PEERS_ALL]
    if unknown:
        p.error(f"unknown server(s) {unknown}; choose from {', '.join(PEERS_ALL)}")
    log_dir = args.out / "raw" / "logs"
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    results: dict[str, Any] = {
        "command": command,
        "started": started,
        "quick": args.quick,
        "runs": args.runs,
        "duration_s": args.duration,
        "workloads": {},
    }
    try:
        log("offline limit")
        with locked():
            results["offline"] = offline_limit(1.5 if args.quick else 3.0)
        best = results["offline"]["best"]
        log(
            f"  best {best['sentences_per_s']:.0f} sentences/s ({best['layout']}, batch {best['batch']});"
            f" batch-1 latency {results['offline']['batch1_best_latency_ms']:.2f} ms"
        )
        time.sleep(args.pause)
        for workload in workloads:
            per_server: dict[str, Any] = {}
            for name in servers:
                if workload not in PEERS_ALL[name].paths:
                    continue
                per_server[name] = measure_peer(name, workload, args, log_dir)
            results["workloads"][workload] = per_server
            if workload != "noop" and not args.no_open_loop:
                limit = best["sentences_per_s"] / (16 if workload == "embed16" else 1)
                rates = [round(limit * f) for f in (OPEN_FRACTIONS[1::2] if args.quick else OPEN_FRACTIONS)]
                for name, r in per_server.items():
                    if "closed" not in r or (args.quick and name != "batchery"):
                        continue
                    peer = PEERS_ALL[name]
                    best_at_64 = r["closed"]["64"]["config"]
                    configs = peer.configs(workload, args.quick)
                    knobs = next((k for k in configs if peer.label(k) == best_at_64), Knobs())
                    r["open"] = open_sweep(name, workload, knobs, rates, args, log_dir)
            _write(results, args.out)
        if not args.no_scenarios and "batchery" in servers:
            results["scenarios"] = scenarios.run_all(results, args, log_dir, locked, log)
    except KeyboardInterrupt:
        log("interrupted; writing what was measured")
    except Exception:
        traceback.print_exc()
        log("failed; writing what was measured")
    finally:
        LOCK.unlink(missing_ok=True)
        _write(results, args.out)
    log(f"results in {args.out}")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    (out / "latest.md").write_text(report_md.markdown(results))
    with contextlib.suppress(Exception):
        report_md.plots(results, out)


if __name__ == "__main__":
    raise SystemExit(main())

"""The suite's Markdown tables and latency-vs-throughput plots, from the results document."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _f(v: Any, digits: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}"


def _ratio(results: dict[str, Any], workload: str, load: str, r: dict[str, Any]) -> str:
    if workload == "noop":
        base = results["workloads"]["noop"].get("fastapi", {}).get("closed", {}).get(load)
        return f"{r['throughput'] / base['throughput']:.2f}x FastAPI" if base and base["throughput"] else "-"
    limit = results.get("offline", {}).get("best", {}).get("sentences_per_s")
    per = 16 if workload == "embed16" else 1
    return f"{r['throughput'] * per / limit:.2f} of limit" if limit else "-"


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Benchmark results ({results['started']})", "", f"Command: `{results['command']}`", ""]
    lines.append(f"Runs per load: {results['runs']} (median), {results['duration_s']:g} s each; closed loop by wrk.")
    off = results.get("offline")
    if off:
        b = off["best"]
        lines += [
            "",
            f"Offline limit (raw model, one process, no HTTP): **{b['sentences_per_s']:.0f} sentences/s** "
            f"({b['layout']} lanes x threads, batch {b['batch']}); best batch-1 call "
            f"{off['batch1_best_latency_ms']:.2f} ms.",
            "",
            "| layout / batch | sentences/s | p50 call ms |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {v['sentences_per_s']:.0f} | {v['p50_call_ms']:.2f} |" for k, v in off["runs"].items()]
    for workload, servers in results.get("workloads", {}).items():
        lines += [
            "",
            f"## {workload}",
            "",
            "| server | load | req/s | ratio | p50 ms | p95 ms | p99 ms | errors | wrk CPU | best config |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, res in servers.items():
            if "closed" not in res:
                lines.append(f"| {name} | - | failed: {res.get('error', '?')[:120]} | | | | | | | |")
                continue
            for load, r in res["closed"].items():
                lines.append(
                    f"| {name} | c{load} | {_f(r['throughput'])} | {_ratio(results, workload, load, r)} "
                    f"| {_f(r['p50_ms'], 2)} | {_f(r['p95_ms'], 2)} | {_f(r['p99_ms'], 2)} | {r['errors']:g} "
                    f"| {r['client_cpu']:.0%} | {r['config']} |"
                )
        opens = {n: r["open"] for n, r in servers.items() if r.get("open")}
        if opens:
            lines += [
                "",
                f"Open loop ({workload}, batchery's generator; latency from the intended send time):",
                "",
                "| server | offered/s | ok/s | p50 ms | p99 ms | rejected | errors | client CPU |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for name, points in opens.items():
                for p in points:
                    lines.append(
                        f"| {name} | {p['rate']:.0f} | {_f(p['throughput'])} | {_f(p['p50_ms'], 2)} "
                        f"| {_f(p['p99_ms'], 2)} | {p['rejected']} | {p['errors']} | {p['client_cpu']:.0%} |"
                    )
    sc = results.get("scenarios")
    if sc:
        lines += ["", "## Scenarios (batchery, default configuration)", ""]
        for name, s in sc.items():
            lines.append(f"- **{name}**: " + ", ".join(f"{k} = {_fmt_any(v)}" for k, v in s.items()))
    return "\n".join(lines) + "\n"


def _fmt_any(v: Any) -> str:
    if isinstance(v, float):
        return _f(v, 2)
    return str(v)


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per workload: each server's closed-loop points (c1, c16, c64) and open-loop points."""
    from batchery.bench.plot import latency_vs_throughput

    written = []
    for workload, servers in results.get("workloads", {}).items():
        series: dict[str, list[tuple[float, float, float]]] = {}
        for name, res in servers.items():
            points = [(r["throughput"], r["p50_ms"], r["p99_ms"]) for r in res.get("closed", {}).values()]
            points += [(p["throughput"], p["p50_ms"], p["p99_ms"]) for p in res.get("open", []) if p["throughput"]]
            if points:
                series[name] = points
        if series:
            written.append(
                latency_vs_throughput(
                    series,
                    out / f"{workload}.png",
                    title=f"{workload}: latency vs throughput (closed c1/c16/c64 and open-loop points)",
                )
            )
    return written

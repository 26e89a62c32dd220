"""The adaptive benchmark's results as Markdown: the verdicts, then one row per configuration (medians)."""

from __future__ import annotations

import math
import statistics
from typing import Any


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _paired(ratios: dict[str, float | None]) -> str:
    shown = [f"{label} {ratio:.2f}" for label, ratio in ratios.items() if ratio is not None]
    return "; per-round ratios (median), adaptive / " + ", ".join(shown) if shown else ""


def _verdict_lines(results: dict[str, Any]) -> list[str]:
    v = results.get("verdicts", {})
    lines = []
    if "c1_p50" in v:
        c = v["c1_p50"]
        lines.append(
            f"- p50 at c1, adaptive / batching off = **{c['adaptive_over_off']:.2f}** (target {c['target']}): "
            f"{'met' if c['met'] else 'NOT met'}" + _paired({"off": c.get("paired")})
        )
    if "c64_throughput" in v:
        c = v["c64_throughput"]
        lines.append(
            f"- throughput at c64, adaptive / best fixed ({c['best_fixed']}) = **{c['adaptive_over_best']:.2f}** "
            f"(target {c['target']}): {'met' if c['met'] else 'NOT met'}" + _paired(c.get("paired", {}))
        )
    if "trace_goodput" in v:
        c = v["trace_goodput"]
        lines.append(
            f"- bursty trace, answers 200 within {c['deadline_ms']:g} ms: adaptive **{_f(c['adaptive_good'], 0)}**, "
            f"best fixed ({c['best_fixed']}) **{_f(c['best_fixed_good'], 0)}** (target: {c['target']}): "
            f"{'met' if c['met'] else 'NOT met'}" + _paired(c.get("paired", {}))
        )
    return lines


def render(results: dict[str, Any]) -> str:
    sessions = [s for s in results["sessions"] if "error" not in s]
    loads = [s["load_avg_before"] for s in sessions] + [s["load_avg_after"] for s in sessions]
    t = results["trace"]
    lines = [
        f"# Adaptive batching benchmark ({results['started']} - {results.get('finished', 'running')})",
        "",
        f"Command: `{results['command']}`",
        "",
        f"{results['cores']} cores; {results['rounds']} round(s), configurations rotated between rounds, medians "
        f"shown; closed loop by wrk, {results['duration_s']:g} s per load. 1-minute load average during the run: "
        + (f"min {min(loads):.1f}, median {statistics.median(loads):.1f}, max {max(loads):.1f}." if loads else "-."),
        "",
        f"Trace: bursts of {t['burst_s']:g} s at 2x capacity, quiet {t['quiet_s']:g} s at 0.2x, {t['length_s']:g} s, "
        f"seed {t['seed']}; capacity {_f(t.get('capacity'), 0)} req/s (--capacity, else the first c64 measured) -> "
        f"{t.get('arrivals', 0)} arrivals; `X-Request-Timeout-Ms: {results['deadline_ms']:g}` sent.",
        "",
        *_verdict_lines(results),
        "",
        "| configuration | c1 p50 ms | c1 p99 ms | c64 req/s | c64 p99 ms | trace: 200 within deadline | trace ok "
        "| trace inputs computed | mean batch c64 / trace | queue wait ms c64 / trace | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    offered = t.get("arrivals") or 0
    for label in results["configs"]:
        r = results.get("figures", {}).get(label)
        if r is None:
            lines.append(f"| {label} | - | - | - | - | - | - | - | - | - | 0 |")
            continue
        share = f" ({r['trace_good'] / offered:.0%})" if offered and r["trace_good"] is not None else ""
        lines.append(
            f"| {label} | {_f(r['c1_p50_ms'], 2)} | {_f(r['c1_p99_ms'], 2)} | {_f(r['c64_rps'])} "
            f"| {_f(r['c64_p99_ms'])} | {_f(r['trace_good'], 0)}{share} | {_f(r['trace_ok'], 0)} "
            f"| {_f(r.get('trace_computed'), 0)} "
            f"| {_f(r['c64_mean_batch'])} / {_f(r['trace_mean_batch'])} "
            f"| {_f(r['c64_mean_queue_wait_ms'])} / {_f(r['trace_mean_queue_wait_ms'])} | {r['runs']} |"
        )
    failed = [s for s in results["sessions"] if "error" in s]
    if failed:
        lines += ["", "Failed runs: " + "; ".join(f"{s['config']} (round {s['round']}): {s['error']}" for s in failed)]
    return "\n".join(lines) + "\n"

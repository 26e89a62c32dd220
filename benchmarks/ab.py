"""Side by side: batchery at several git revisions, alternating rounds, one change's effect out of the noise.

    python -m benchmarks.ab --rev before=HEAD~1 --rev after=HEAD [--workload embed] [--conns 1,16,64]
        [--rounds 3] [--duration 6] [--out benchmarks/results/ab.json]
    python -m benchmarks.ab --rev before=HEAD~1 --rev after=. --workload ocr --rounds 6

A revision is anything `git archive` takes, or `.` for the working tree. Each is served from its own `src`
(the default model for embed/embed16 through wrk, `batchery serve ocr` for ocr through 96 uploads at
concurrency 16); the order of the servers flips every round, so a machine that drifts favours none of them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks import loadgen
from benchmarks.adaptive.configs import Config
from benchmarks.adaptive.server import PATH, serving
from benchmarks.servers import ROOT, bodies


def checkout(rev: str, into: Path) -> str:
    """The `src` directory to import batchery from at `rev` (`.`: this working tree's)."""
    if rev == ".":
        return str(ROOT / "src")
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into / "src")


def embed_round(label: str, src: str, workload: str, conns: list[int], duration: float) -> dict[int, Any]:
    body = bodies("native", workload)
    out: dict[int, Any] = {}
    with serving(Config(label, "adaptive", src=src), Path(tempfile.gettempdir()) / f"ab-{label}.log") as base:
        loadgen.closed_loop(base + PATH, body, 16, 2)  # warm-up
        for connections in conns:
            out[connections] = loadgen.closed_loop(base + PATH, body, connections, duration)
    return out


def ocr_round(src: str, requests: int) -> dict[int, Any]:
    from benchmarks.ocr.corpus import images
    from benchmarks.ocr.run import free_port, load, server

    port = free_port()
    command = [sys.executable, "-m", "batchery.cli", "serve", "ocr", "--log-level", "warning", "--port", str(port)]
    with server(command, port, "/ready", src=src) as url:
        run = asyncio.run(load(url, "/v1/models/ocr/predict", images(12), requests, 16))
    return {16: {"throughput": run["images_per_s"], "p50_ms": run["p50_ms"], "p99_ms": run["p99_ms"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", action="append", required=True, help="label=revision (twice or more)")
    parser.add_argument("--workload", choices=("embed", "embed16", "ocr"), default="embed")
    parser.add_argument("--conns", default="1,16,64", help="closed-loop connections (embed workloads)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per load (embed workloads)")
    parser.add_argument("--requests", type=int, default=96, help="uploads per round (ocr)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ab.json")
    args = parser.parse_args()
    revs = dict(spec.split("=", 1) for spec in args.rev)
    if len(revs) < 2 or any(not label or not rev for label, rev in revs.items()):
        parser.error("give two or more --rev label=revision, with distinct labels")
    conns = [int(c) for c in args.conns.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        srcs = {label: checkout(rev, Path(tmp) / label) for label, rev in revs.items()}
        rounds: dict[str, list[dict[int, Any]]] = {label: [] for label in srcs}
        for index in range(args.rounds):
            order = list(srcs.items()) if index % 2 == 0 else list(reversed(srcs.items()))
            for label, src in order:
                if args.workload == "ocr":
                    result = ocr_round(src, args.requests)
                else:
                    result = embed_round(label, src, args.workload, conns, args.duration)
                rounds[label].append(result)
                for load, run in result.items():
                    print(
                        f"round {index + 1} {label:>10} c{load:<3} {run['throughput']:8.2f}/s "
                        f"p50 {run['p50_ms']:8.2f} ms p99 {run['p99_ms']:9.2f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
    loads = sorted(next(iter(rounds.values()))[0])
    summary = {
        label: {
            f"c{load}": {
                "median_throughput": statistics.median(r[load]["throughput"] for r in runs),
                "median_p50_ms": statistics.median(r[load]["p50_ms"] for r in runs),
                "median_p99_ms": statistics.median(r[load]["p99_ms"] for r in runs),
                "per_round": [round(r[load]["throughput"], 2) for r in runs],
            }
            for load in loads
        }
        for label, runs in rounds.items()
    }
    document = {"workload": args.workload, "revisions": revs, "rounds": args.rounds, "finished": time.ctime()}
    args.out.write_bytes(orjson.dumps({**document, "results": summary}, option=orjson.OPT_INDENT_2) + b"\n")
    for load in loads:
        line = "  ".join(f"{label} {summary[label][f'c{load}']['median_throughput']:.2f}/s" for label in summary)
        print(f"c{load}: {line}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

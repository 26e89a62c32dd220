"""Soak: many requests through the default model on a `batchery serve` process, sampling its resources.

    python -m tests.long.soak --requests 1000000 --every 10000 --json soak.json --plot soak.png

Mixed traffic (native predict, single and batched, OpenAI embeddings, probes and model listing) with some
deliberately bad input (400, 422) and some over the item limit (413). Every `--every` requests it records the
server's resident memory, open file descriptors and threads. Passes when every answer is the expected one and,
after warm-up, each resource stays within `--tolerance` (5%) of its level at the end of warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
import psutil

from batchery._http_client import Connection

MODEL = "all-minilm-l6-v2"
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "batchery", "serves", "on", "time"]


@dataclass(slots=True)
class Sample:
    requests: int
    seconds: float
    rss_mib: float
    fds: int
    threads: int


@dataclass
class Report:
    requests: int = 0
    seconds: float = 0.0
    unexpected: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    drift: dict[str, float] = field(default_factory=dict)

    def passed(self, tolerance: float) -> bool:
        return not self.unexpected and all(value <= tolerance for value in self.drift.values())


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))


def _request(rng: random.Random, max_items: int) -> tuple[str, str, bytes, int]:
    """(method, path, body, expected status) for one request of the mix."""
    roll = rng.random()
    predict = f"/v1/models/{MODEL}/predict"
    if roll < 0.45:
        return "POST", predict, orjson.dumps({"input": _sentence(rng)}), 200
    if roll < 0.60:
        return "POST", predict, orjson.dumps({"inputs": [_sentence(rng) for _ in range(rng.randint(2, 8))]}), 200
    if roll < 0.72:
        return "POST", "/v1/embeddings", orjson.dumps({"model": MODEL, "input": _sentence(rng)}), 200
    if roll < 0.80:
        return "POST", predict, b'{"input": "unterminated', 400
    if roll < 0.85:
        return "POST", predict, b'{"input": 42}', 422
    if roll < 0.90:
        return "POST", predict, orjson.dumps({"inputs": ["x"] * (max_items + 1)}), 413
    if roll < 0.95:
        return "GET", "/health", b"", 200
    return "GET", "/v1/models", b"", 200


def _sample(process: psutil.Process, done: int, started: float) -> Sample:
    with process.oneshot():
        return Sample(
            done, round(time.monotonic() - started, 2), round(process.memory_info().rss / 2**20, 1),
            process.num_fds(), process.num_threads(),
        )  # fmt: skip


async def drive(url: str, pid: int, *, requests: int, every: int, connections: int, seed: int = 0) -> Report:
    """Send `requests` requests over `connections` keep-alive connections, sampling the server every `every`."""
    process = psutil.Process(pid)
    report = Report()
    rng = random.Random(seed)
    started = time.monotonic()
    next_sample = 0
    sent = 0

    async def client(conn: Connection) -> None:
        nonlocal sent, next_sample
        while sent < requests:
            sent += 1
            method, path, body, expected = _request(rng, 256)
            response = await conn.request(method, path, body)
            report.requests += 1
            report.statuses[response.status] += 1
            if response.status != expected:
                report.unexpected[f"{method} {path} -> {response.status} (expected {expected})"] += 1
            if report.requests >= next_sample + every:
                next_sample += every
                sample = _sample(process, report.requests, started)
                report.samples.append(sample)
                print(f"sample: {asdict(sample)}", flush=True)  # progress of a long run, as it goes

    # Every connection stays open until all are done, so the last samples see the same connections as the rest.
    conns = [await Connection.open(url) for _ in range(connections)]
    report.samples.append(_sample(process, 0, started))
    try:
        await asyncio.gather(*(client(conn) for conn in conns))
    finally:
        for conn in conns:
            await conn.close()
    report.seconds = round(time.monotonic() - started, 1)
    report.drift = drift(report.samples)
    return report


def drift(samples: list[Sample], warmup: float = 0.2) -> dict[str, float]:
    """Largest relative change of each resource after warm-up, against its level when warm-up ended."""
    after = samples[max(1, int(len(samples) * warmup)) :]
    if len(after) < 2:
        return {}
    base = after[0]
    result = {}
    for name in ("rss_mib", "fds", "threads"):
        level = getattr(base, name)
        result[name] = round(max(abs(getattr(s, name) - level) for s in after) / max(level, 1), 4)
    return result


class ServeProcess:
    """`batchery serve` (the default model) on a free port, in its own process so its resources are its own."""

    def __init__(self, **env: str) -> None:
        self.env = {**os.environ, "BATCHERY_PORT": "0", "TOKENIZERS_PARALLELISM": "false", **env}
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> ServeProcess:
        command = [sys.executable, "-m", "batchery.cli", "serve"]
        self.process = subprocess.Popen(command, env=self.env, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        give_up = time.monotonic() + 300
        while time.monotonic() < give_up:
            line = self.process.stderr.readline()
            if not line:
                raise RuntimeError(f"batchery serve exited with {self.process.wait()}")
            if "is ready on" in line:
                self.url = line.rsplit(" ", 1)[-1].strip()
                return self
        raise RuntimeError("batchery serve was not ready within 300 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.communicate(timeout=60)


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s.requests / 1000 for s in report.samples]
    figure, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for axis, name, label in zip(
        axes, ("rss_mib", "fds", "threads"), ("resident memory (MiB)", "open fds", "threads"), strict=True
    ):
        values = [getattr(s, name) for s in report.samples]
        axis.plot(xs, values)
        axis.set_ylabel(label)
        axis.set_ylim(0, max(values) * 1.2 + 1)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("requests (thousands)")
    figure.suptitle(f"batchery soak: {report.requests:,} requests in {report.seconds:,.0f} s")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=10_000, help="sample the server every N requests")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--json", type=Path, help="write the report (with every sample) here")
    parser.add_argument("--plot", type=Path, help="write a PNG of the samples here")
    args = parser.parse_args(argv)
    with ServeProcess() as server:
        assert server.process is not None
        pid = server.process.pid
        report = asyncio.run(
            drive(server.url, pid, requests=args.requests, every=args.every, connections=args.connections)
        )
    for sample in report.samples:
        print(f"{sample.requests:>9,} {sample.seconds:>8.1f}s rss={sample.rss_mib:7.1f} MiB fds={sample.fds:4d} "
              f"threads={sample.threads:3d}")  # fmt: skip
    print(f"{report.requests:,} requests in {report.seconds:.0f} s ({report.requests / report.seconds:.0f}/s)")
    print("statuses:", dict(sorted(report.statuses.items())), "drift after warm-up:", report.drift)
    for what, count in report.unexpected.items():
        print(f"UNEXPECTED {count}x {what}")
    if args.json:
        record = {**asdict(report), "statuses": {str(k): v for k, v in report.statuses.items()}}
        args.json.write_text(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode())
    if args.plot:
        plot(report, args.plot)
    ok = report.passed(args.tolerance)
    print("PASS" if ok else f"FAIL (tolerance {args.tolerance:.0%})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""OCR benchmark: batchery's OCR pipeline vs a plain FastAPI server calling `RapidOCR()`, and the offline limit.

    .venv/bin/python -m benchmarks.ocr.run [--requests 96] [--concurrency 16]

Same images, same machine, one after the other. Writes benchmarks/results/ocr.json and prints a Markdown
table for docs/performance.md. The offline limit runs the same three stages in this process, no HTTP, at
several batch sizes and lane layouts, and keeps the best.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.ocr.corpus import images

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "ocr.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(command: list[str], port: int, ready_path: str, src: str | None = None) -> Iterator[str]:
    """`command` running until the block ends, ready; `src`: a source tree to import batchery from instead."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*([src] if src else []), str(ROOT)])}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{command} exited: {process.stderr.read().decode()[-2000:] if process.stderr else ''}"
                )
            try:
                if httpx.get(url + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not become ready")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def texts(lines: list[dict[str, Any]]) -> list[str]:
    return [line["text"] for line in lines]


async def load(url: str, path: str, corpus: list[bytes], requests: int, concurrency: int) -> dict[str, Any]:
    """`requests` uploads at `concurrency` (after one warm-up round); throughput, latency and the texts read."""
    latencies: list[float] = []
    read: dict[int, list[str]] = {}

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=concurrency)) as http:

        async def one(index: int, record: bool) -> None:
            image = index % len(corpus)
            started = time.perf_counter()
            response = await http.post(path, files={"file": (f"{image}.png", corpus[image], "image/png")})
            response.raise_for_status()
            body = response.json()
            lines = body["output"]["lines"] if "output" in body else body["lines"]
            if record:
                latencies.append(time.perf_counter() - started)
                read[image] = texts(lines)

        await asyncio.gather(*(one(i, False) for i in range(concurrency)))  # warm-up
        counter = iter(range(requests))

        async def worker() -> None:
            for index in counter:
                await one(index, True)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "images_per_s": requests / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "texts": read,
    }


def offline(corpus: list[bytes], rounds: int, expected: dict[int, list[str]]) -> dict[str, Any]:
    """The same stages in this process, no HTTP, computing what the served pipeline computes (its text is checked
    against `expected`): best images/s over batch sizes and lane layouts."""
    from batchery import cores
    from batchery import images as image_io
    from batchery.examples.ocr.stages import AngleClassifier, TextDetector, TextRecognizer

    arrays = [image_io.decode(data)[:, :, ::-1].copy() for data in corpus]
    total = cores.available()
    results = []
    for lanes in sorted({1, total}):
        share = max(1, total // lanes)
        stage_sets = []
        for _ in range(lanes):
            with cores.granted(share):
                det, cls, rec = TextDetector(), AngleClassifier(), TextRecognizer()
                for model in (det, cls, rec):
                    model.setup("cpu")
            stage_sets.append((det, cls, rec))
        same_text = all(_read(stage_sets[0], [array])[0] == expected[i] for i, array in enumerate(arrays))

        for batch_size in (1, 2, 4):
            jobs = [
                [arrays[(i * batch_size + k) % len(arrays)] for k in range(batch_size)] for i in range(rounds * lanes)
            ]
            with ThreadPoolExecutor(lanes) as pool:
                list(pool.map(_lane, stage_sets, [jobs[:1]] * lanes))  # warm-up
                started = time.perf_counter()
                done = sum(pool.map(_lane, stage_sets, [jobs[lane::lanes] for lane in range(lanes)]))
                elapsed = time.perf_counter() - started
            result = {
                "lanes": lanes,
                "threads_per_lane": share,
                "batch": batch_size,
                "images_per_s": done / elapsed,
                "same_text_as_rapidocr": same_text,
            }
            results.append(result)
            print(f"offline: {result}", file=sys.stderr)
    return {"best": max(results, key=lambda r: r["images_per_s"]), "all": results}


def _lane(stages: Any, jobs: list[list[Any]]) -> int:
    """One lane: detect, classify and recognise each batch of images in turn; returns the images done."""
    return sum(len(_read(stages, batch)) for batch in jobs)


def _read(stages: Any, batch: list[Any]) -> list[list[str]]:
    """The texts of each image of `batch`, computed as the served pipeline computes them: each image's lines
    padded as rapidocr pads them (`lines_for`), low-confidence lines dropped."""
    from batchery.examples.ocr.pipeline import OcrPipeline
    from batchery.examples.ocr.stages import lines_for

    det, cls, rec = stages
    found = det.predict(batch)
    crops = [crop for item in found for crop in item.crops]
    oriented = [o.crop for o in cls.predict(crops)] if crops else []
    bounds = list(itertools.accumulate((len(item.crops) for item in found), initial=0))
    lines = [line for a, b in itertools.pairwise(bounds) for line in lines_for(oriented[a:b])]
    read = rec.predict(lines) if lines else []
    return [
        [text for text, score in read[a:b] if score >= OcrPipeline.text_score] for a, b in itertools.pairwise(bounds)
    ]


def reference(corpus: list[bytes]) -> dict[int, list[str]]:
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR()
    out = {}
    for index, data in enumerate(corpus):
        result, _ = engine(data)
        out[index] = [text for _, text, _ in result or []]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--offline-rounds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server; the best is kept")
    args = parser.parse_args()
    corpus = images(args.images)
    expected = reference(corpus)
    python = sys.executable
    runs: dict[str, Any] = {}

    peer = [python, "-m", "uvicorn", "benchmarks.ocr.peer_fastapi:app", "--log-level", "warning", "--port"]
    ours = [python, "-m", "batchery.cli", "serve", "ocr", "--log-level", "warning", "--port"]
    servers = {"fastapi_rapidocr": (peer, "/docs", "/ocr"), "batchery": (ours, "/ready", "/v1/models/ocr/predict")}
    rounds: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):  # alternate, keep each server's best round: load from others is noise
        for name, (command, ready, path) in servers.items():
            port = free_port()
            with server([*command, str(port)], port, ready) as url:
                run = asyncio.run(load(url, path, corpus, args.requests, args.concurrency))
            print(f"round {round_ + 1} {name}: {_brief(run)}", file=sys.stderr)
            rounds.setdefault(name, []).append({k: v for k, v in run.items() if k != "texts"})
            if name not in runs or run["images_per_s"] > runs[name]["images_per_s"]:
                runs[name] = run

    runs["offline"] = offline(corpus, args.offline_rounds, expected)
    for name in ("fastapi_rapidocr", "batchery"):
        got = {int(k): v for k, v in runs[name].pop("texts").items()}
        runs[name]["same_text_as_rapidocr"] = all(got.get(i) == expected[i] for i in got)
        runs[name]["images_checked"] = len(got)
    ours_ips, peer_ips = runs["batchery"]["images_per_s"], runs["fastapi_rapidocr"]["images_per_s"]
    summary = {
        "concurrency": args.concurrency,
        "requests": args.requests,
        "images": args.images,
        "rounds": args.rounds,
        "cores": len(os.sched_getaffinity(0)),
        "throughput_ratio_vs_fastapi": ours_ips / peer_ips,
        "share_of_offline": ours_ips / runs["offline"]["best"]["images_per_s"],
        "runs": runs,
        "per_round": rounds,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    print(markdown(summary))


def _brief(run: dict[str, Any]) -> str:
    return f"{run['images_per_s']:.2f} images/s, p50 {run['p50_ms']:.0f} ms, p99 {run['p99_ms']:.0f} ms"


def markdown(summary: dict[str, Any]) -> str:
    runs = summary["runs"]
    best = runs["offline"]["best"]
    rows = [
        "| server | images/s | p50 ms | p99 ms | same text as RapidOCR() |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("batchery", "batchery OCR pipeline"), ("fastapi_rapidocr", "FastAPI + RapidOCR()")):
        run = runs[name]
        rows.append(
            f"| {label} | {run['images_per_s']:.2f} | {run['p50_ms']:.0f} | {run['p99_ms']:.0f} | "
            f"{'yes' if run['same_text_as_rapidocr'] else 'NO'} ({run['images_checked']} images) |"
        )
    rows.append(
        f"| offline, same stages, no HTTP (best: {best['lanes']} lane(s) x {best['threads_per_lane']} thread(s), "
        f"batch {best['batch']}) | {best['images_per_s']:.2f} | | | "
        f"{'yes' if best['same_text_as_rapidocr'] else 'NO'} ({summary['images']} images) |"
    )
    rows.append("")
    rows.append(
        f"Concurrency {summary['concurrency']}, {summary['requests']} requests (best of {summary['rounds']} "
        f"alternating rounds), {summary['cores']} cores: "
        f"{summary['throughput_ratio_vs_fastapi']:.2f}x the FastAPI server's throughput, "
        f"{100 * summary['share_of_offline']:.0f}% of the offline limit."
    )
    return "\n".join(rows)


if __name__ == "__main__":
    main()

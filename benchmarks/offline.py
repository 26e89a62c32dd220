"""The physical limit: the raw model in one process, no HTTP, tokenisation included, best batch and layout.

Layouts: one lane with 2 intra-op threads, or 2 lanes (threads, one session each) with 1 thread each.
Prints one JSON object: sentences/s per (layout, batch), the best, and the batch-1 latency of each layout.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import orjson

os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _sessions(lanes: int, threads: int) -> list[Any]:
    import onnxruntime as ort

    from batchery.models import minilm_export

    sessions = []
    for _ in range(lanes):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions.append(ort.InferenceSession(str(minilm_export.onnx_path()), sess_options=options))
    return sessions


def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    from batchery.models import minilm_export

    tok = Tokenizer.from_file(str(minilm_export.source_dir() / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(256)
    return tok


def _lane(session: Any, tok: Any, texts: list[str], batch: int, stop: float, counts: list[float], i: int) -> None:
    import numpy as np

    done, k, lat = 0, 0, []
    while time.perf_counter() < stop:
        chunk = [texts[(k + j) % len(texts)] for j in range(batch)]
        k += batch
        t0 = time.perf_counter()
        enc = tok.encode_batch(chunk)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        session.run(None, {"input_ids": ids, "attention_mask": mask})
        lat.append(time.perf_counter() - t0)
        done += batch
    lat.sort()
    counts[i] = done
    counts[len(counts) // 2 + i] = lat[len(lat) // 2] * 1000 if lat else 0.0


def measure(seconds: float, batches: list[int]) -> dict[str, Any]:
    with open(os.path.join(os.path.dirname(__file__), "sentences.txt")) as f:
        texts = f.read().splitlines()
    tok = _tokenizer()
    results: dict[str, Any] = {}
    for name, lanes, threads in (("1x2", 1, 2), ("2x1", 2, 1)):
        sessions = _sessions(lanes, threads)
        for s in sessions:  # warm-up
            _lane(s, tok, texts, 8, time.perf_counter() + 0.3, [0.0, 0.0], 0)
        for batch in batches:
            counts = [0.0] * (2 * lanes)
            start = time.perf_counter()
            stop = start + seconds
            workers = [
                threading.Thread(target=_lane, args=(s, tok, texts, batch, stop, counts, i))
                for i, s in enumerate(sessions)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            elapsed = time.perf_counter() - start
            results[f"{name}/b{batch}"] = {
                "layout": name,
                "batch": batch,
                "sentences_per_s": sum(counts[:lanes]) / elapsed,
                "p50_call_ms": max(counts[lanes:]),
            }
    best = max(results.values(), key=lambda r: r["sentences_per_s"])
    b1 = {k: v for k, v in results.items() if v["batch"] == 1}
    return {
        "runs": results,
        "best": best,
        "batch1_best_latency_ms": min(v["p50_call_ms"] for v in b1.values()) if b1 else None,
    }


if __name__ == "__main__":
    # python -m benchmarks.offline [seconds] [batch sizes, comma-separated]
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    batches = [int(b) for b in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1, 8, 16, 32, 64]
    print(orjson.dumps(measure(seconds, batches)).decode())

"""The model every peer serves: the same ONNX graph and tokenizer as batchery's default model.

Peers' virtual environments lack batchery, so this module depends only on numpy, onnxruntime and tokenizers;
the suite passes the file paths in BENCH_ONNX and BENCH_TOKENIZER.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def config() -> dict[str, Any]:
    """The launcher's knobs, from BENCH_* environment variables set by the suite."""
    return {
        "workload": os.environ.get("BENCH_WORKLOAD", "embed"),
        "port": int(os.environ.get("BENCH_PORT", "8000")),
        "batch": int(os.environ.get("BENCH_BATCH", "1")),
        "wait_ms": float(os.environ.get("BENCH_WAIT_MS", "0")),
        "workers": int(os.environ.get("BENCH_WORKERS", "1")),
    }


class Embedder:
    """Tokenise a list of sentences and run the graph; intra-op threads default to cores / workers."""

    def __init__(self, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        workers = int(os.environ.get("BENCH_WORKERS", "1"))
        threads = threads or max(1, (os.cpu_count() or 1) // workers)
        tokenizer = Tokenizer.from_file(os.environ["BENCH_TOKENIZER"])
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        tokenizer.enable_truncation(256)
        self.tokenizer = tokenizer
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.environ["BENCH_ONNX"], sess_options=options, providers=["CPUExecutionProvider"]
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (out,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return out


def texts_of(body: dict[str, Any]) -> list[str]:
    """The sentences of one native-protocol body: `{"input": s}` or `{"inputs": [...]}`."""
    return [body["input"]] if "input" in body else list(body["inputs"])


def answer(body: dict[str, Any], outputs: list[Any]) -> dict[str, Any]:
    """The native-protocol answer matching `body`'s form."""
    return {"output": outputs[0]} if "input" in body else {"outputs": outputs}


def answer_each(bodies: list[dict[str, Any]], vectors: list[Any]) -> list[dict[str, Any]]:
    """One answer per body, from the vectors of all their sentences in order (as `texts_of` listed them)."""
    out, start = [], 0
    for body in bodies:
        n = len(texts_of(body))
        out.append(answer(body, vectors[start : start + n]))
        start += n
    return out

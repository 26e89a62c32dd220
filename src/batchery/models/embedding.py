"""The default model: all-MiniLM-L6-v2 sentence embeddings on ONNX Runtime (384 floats, L2-normalised)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from batchery import cores
from batchery.model import Model
from batchery.runtimes import onnx_impl

MAX_TEXT_CHARS = 20_000


class SentenceEmbedder(Model):
    """Input: a non-empty string. Output: its embedding as a list of 384 floats."""

    name = "all-minilm-l6-v2"
    version = "1"
    max_batch_size = 32
    elastic = True
    example = "batchery warms this model up with a real sentence before it reports ready."
    #: Length of every embedding (OpenAI's `dimensions`), and the KServe V2 tensors it takes and returns.
    dimensions = 384
    tensor_inputs = ({"name": "text", "datatype": "BYTES", "shape": [-1]},)
    tensor_outputs = ({"name": "embedding", "datatype": "FP32", "shape": [-1, 384]},)

    #: Texts per forward pass inside a batch (see `predict`): 8 measured best for batches of 16-32 short sentences.
    sub_batch = 8

    def __init__(self, max_tokens: int = 256) -> None:
        self.max_tokens = max_tokens
        self._tokenizer: Any = None
        self._sessions: dict[int, Any] = {}

    def setup(self, device: str) -> None:
        """Export the graph once (cached), load the tokenizer and one session per core grant."""
        from tokenizers import Tokenizer

        from batchery.models import minilm_export

        # tokenizers' own thread pool would compete with the lanes for the same cores.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        path = minilm_export.onnx_path()
        tokenizer = Tokenizer.from_file(str(minilm_export.source_dir() / "tokenizer.json"))
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        tokenizer.enable_truncation(self.max_tokens)
        self._tokenizer = tokenizer
        for threads in sorted({cores.granted_cores(), cores.available()}):
            self._sessions[threads] = onnx_impl.load(path, threads=threads, device=device)

    def decode_request(self, item: Any) -> str:
        if not isinstance(item, str):
            raise TypeError(f"expected a string, got {type(item).__name__}")
        if not item.strip():
            raise ValueError("the text is empty")
        if len(item) > MAX_TEXT_CHARS:
            raise ValueError(f"the text has {len(item)} characters; the limit is {MAX_TEXT_CHARS}")
        return item

    def predict(self, batch: list[str]) -> list[np.ndarray]:
        """Texts sorted by length run in forward passes of `sub_batch`, each padded only to its own longest text.

        Padding a whole batch to its longest text spends compute on pad tokens (14% of a batch of 16 short
        sentences, 16% of 32); right-padding does not change a text's embedding, so the results are the same.
        """
        encodings = self._tokenizer.encode_batch(batch)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        session = self._session(cores.granted_cores())
        if len(batch) <= self.sub_batch:
            (embeddings,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
            return list(embeddings)
        lengths = mask.sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        outputs: list[np.ndarray] = [np.empty(0)] * len(batch)
        for start in range(0, len(batch), self.sub_batch):
            rows = order[start : start + self.sub_batch]
            width = int(lengths[rows].max())
            feed = {"input_ids": ids[rows, :width], "attention_mask": mask[rows, :width]}
            (embeddings,) = session.run(None, feed)
            for row, embedding in zip(rows.tolist(), embeddings, strict=True):
                outputs[row] = embedding
        return outputs

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Word pieces per text as `predict` feeds them (special tokens in, truncated); for usage reports."""
        if self._tokenizer is None:
            raise RuntimeError("count_tokens needs the tokenizer: call setup() first")
        return [sum(encoding.attention_mask) for encoding in self._tokenizer.encode_batch(texts)]

    def _session(self, granted: int) -> Any:
        fitting = [threads for threads in self._sessions if threads <= granted]
        return self._sessions[max(fitting) if fitting else min(self._sessions)]

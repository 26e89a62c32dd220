"""A small streaming model shipped for demos and tests: it streams each input text back one word per step.

Serve it with `batchery serve batchery.models.words:WordStreamer` and read
`POST /v1/models/words/stream` as Server-Sent Events.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from batchery.batching.streaming import DONE
from batchery.model import Model

MAX_WORDS = 100_000


class WordStreamer(Model):
    """Input: a non-empty string. Streams `{"index": i, "word": w}` per word; all inputs of a batch step together.

    `step_seconds` sleeps per step (releasing the GIL, like a real decoder). `batch_sizes` records the size of
    every batch and `steps_run` how many steps each batch ran before it ended or was closed: tests read them.
    """

    name = "words"
    stream = True
    max_batch_size = 16
    example = "warm up"

    def __init__(self, step_seconds: float = 0.0) -> None:
        self.step_seconds = step_seconds
        self.batch_sizes: list[int] = []
        self.steps_run: list[int] = []

    def decode_request(self, item: Any) -> list[str]:
        if not isinstance(item, str):
            raise TypeError(f"expected a string, got {type(item).__name__}")
        words = item.split()
        if not words:
            raise ValueError("the text has no words")
        if len(words) > MAX_WORDS:
            raise ValueError(f"the text has {len(words)} words; the limit is {MAX_WORDS}")
        return words

    # A streaming model's predict yields steps instead of returning one list (see batching/streaming.py).
    def predict(self, batch: list[list[str]]) -> Iterator[list[Any]]:  # type: ignore[override]
        self.batch_sizes.append(len(batch))
        steps = 0
        try:
            for index in range(max(len(words) for words in batch)):
                if self.step_seconds:
                    time.sleep(self.step_seconds)
                steps += 1
                yield [{"index": index, "word": words[index]} if index < len(words) else DONE for words in batch]
        finally:
            # Runs when the stream ends or when batchery closes the generator because every client left.
            self.steps_run.append(steps)

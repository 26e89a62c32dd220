"""A pure-Python, CPU-bound pre-processing step (it holds the GIL throughout), and a trivial model after it."""

from __future__ import annotations

from typing import Any

from batchery import Model

#: Loop iterations per input: about 20-40 ms of pure Python on these machines.
ROUNDS = 300_000


def preprocess(text: Any) -> int:
    """A rolling hash of `text` stretched over ROUNDS iterations: stands in for hand-written parsing."""
    if not isinstance(text, str):
        raise TypeError("expected a string")
    value = len(text)
    for index in range(ROUNDS):
        value = (value * 31 + index) % 1_000_003
    return value


class Identity(Model):
    name = "identity"
    workers = 1
    example = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)

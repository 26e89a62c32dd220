"""Out-of-memory recovery: recognise OOM errors, split the batch, and keep a cap that learns (AIMD).

A batch that runs out of memory is split in halves and retried; a single input that does not fit even alone
fails alone with 413. The batcher's effective cap drops to half the failing size and grows back by one per run
of successful full batches, never past the smallest size that failed, which itself is re-probed only rarely.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchery.errors import PayloadTooLarge

_OOM_MARKERS = ("out of memory", "failed to allocate memory", "bad_alloc", "bad allocation")


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's (CUDA) OutOfMemoryError, or ONNX Runtime's allocation failure."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    message = str(exc).lower()
    return any(marker in message for marker in _OOM_MARKERS)


def release_cached_memory() -> None:
    """Give cached CUDA memory back before a retry (only if torch is already loaded)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(slots=True)
class ItemError:
    """An output slot holding the error of that one input (the rest of its batch succeeded)."""

    error: BaseException


def predict_splitting(predict: Callable[[list[Any]], Any], payloads: list[Any], failed_sizes: list[int]) -> list[Any]:
    """`predict(payloads)`, halving on out-of-memory; records in `failed_sizes` each size that ran out of memory
    because of its size: a batch whose failure one input explains (it fails even alone) is not recorded, so a
    single huge input costs its client a 413 without shrinking everyone's batches."""
    try:
        outputs = predict(payloads)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        release_cached_memory()
        if len(payloads) == 1:
            return [
                ItemError(
                    PayloadTooLarge(
                        "this input is too large to compute even alone: the model ran out of memory on it. "
                        "Send a smaller input"
                    )
                )
            ]
        middle = len(payloads) // 2
        halves = predict_splitting(predict, payloads[:middle], failed_sizes) + predict_splitting(
            predict, payloads[middle:], failed_sizes
        )
        if not any(isinstance(output, ItemError) for output in halves):
            failed_sizes.append(len(payloads))
        return halves
    return list(outputs) if isinstance(outputs, tuple) else outputs


class BatchCap:
    """The effective batch size cap: multiplicative decrease on OOM, additive increase on success."""

    def __init__(self, limit: int, probe_after: int = 256, grow_after: int = 4) -> None:
        self.limit = limit
        self.value = limit
        self.ceiling = limit + 1  # the smallest size known to fail (limit + 1: none yet)
        self._successes = 0
        self._probe_after = probe_after
        self._grow_after = grow_after
        self.oom_events = 0

    def failed(self, size: int) -> None:
        self.oom_events += 1
        self.ceiling = min(self.ceiling, size)
        self.value = max(1, min(self.value, size // 2))  # half the failing size: never halving a cap already below
        self._successes = 0

    def succeeded(self, size: int) -> None:
        if size < self.value:
            return
        self._successes += 1
        if self.value < self.ceiling - 1 and self._successes >= self._grow_after:
            self.value = min(self.value + 1, self.limit)
            self._successes = 0
        elif self.value >= self.ceiling - 1 and self._successes >= self._probe_after and self.ceiling <= self.limit:
            self.ceiling += 1  # memory may have been freed since: probe one size higher, rarely
            self._successes = 0

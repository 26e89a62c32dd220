"""The engine's one outward hook: metrics and logs observe batches and rejections through it."""

from __future__ import annotations

from typing import Protocol

from batchery.batching.records import BatchResult


class Observer(Protocol):
    """Called on the event loop; implementations must be quick and must not raise."""

    def batch_done(self, model: str, result: BatchResult) -> None:
        """A lane finished `result.batch` (outputs or error); items carry their enqueue times."""

    def rejected(self, model: str, reason: str, count: int) -> None:
        """`count` inputs were refused or dropped: reason is "queue_full", "queue_wait", "deadline" or "cancelled"."""


class NullObserver:
    """Observes nothing."""

    def batch_done(self, model: str, result: BatchResult) -> None:
        pass

    def rejected(self, model: str, reason: str, count: int) -> None:
        pass

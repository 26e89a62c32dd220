"""A bounded CPU pool for pre- and post-processing, off the event loop.

"thread": for work that releases the GIL (Pillow, numpy, OpenCV, tokenizers); cheap hand-off, shared memory.
"process": spawned processes for pure-Python work that holds the GIL; arguments and results are pickled, so
the function must be importable (defined at module level). Either way at most `max_queue` calls wait or
run at once: one more is refused at once with Overloaded (503), never queued without bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
from collections.abc import Callable
from typing import Any, TypeVar

from batchery import cores
from batchery.errors import ConfigError, Overloaded

T = TypeVar("T")
KINDS = ("thread", "process")


class CpuPool:
    """`await pool.run(fn, *args)` computes `fn(*args)` on a pool thread or process."""

    def __init__(self, kind: str = "thread", *, workers: int | None = None, max_queue: int = 1024) -> None:
        if kind not in KINDS:
            raise ConfigError(f"CPU pool kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.kind = kind
        self.workers = workers or cores.available()
        if self.workers < 1 or max_queue < 1:
            raise ConfigError("CPU pool workers and max_queue must be >= 1")
        self.max_queue = max_queue
        self.pending = 0
        self._executor: concurrent.futures.Executor | None = None

    @property
    def executor(self) -> concurrent.futures.Executor:
        """Created on first use, so that building a pool (in a model's `__init__`) starts nothing."""
        if self._executor is None:
            if self.kind == "thread":
                self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="batchery-cpu")
            else:
                # spawn, not fork: forking a process that runs an event loop and ONNX Runtime threads is unsafe.
                context = multiprocessing.get_context("spawn")
                self._executor = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=context)
        return self._executor

    def start(self) -> None:
        """Start the workers now (processes take a second to spawn) rather than on the first call."""
        executor = self.executor
        if isinstance(executor, concurrent.futures.ProcessPoolExecutor):
            list(executor.map(_noop, range(self.workers)))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Compute `fn(*args)` in the pool; raise Overloaded when `max_queue` calls are already in it."""
        if self.pending >= self.max_queue:
            raise Overloaded(
                f"the {self.kind} pool has {self.pending} calls in flight (limit {self.max_queue}); retry shortly",
                retry_after=1.0,
            )
        self.pending += 1
        try:
            return await asyncio.wrap_future(self.executor.submit(fn, *args))
        finally:
            self.pending -= 1

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def _noop(index: int) -> int:
    return index

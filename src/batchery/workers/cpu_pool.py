"""A bounded CPU pool for pre- and post-processing, off the event loop.

"thread": for work that releases the GIL (Pillow, numpy, OpenCV, tokenizers); cheap hand-off, shared memory.
"process": spawned processes for pure-Python work that holds the GIL; arguments and results are pickled, so
the function must be importable (defined at module level, in a package or in a served model file). Either way
at most `max_queue` calls wait or run at once: one more is refused at once with Overloaded (503), never queued
without bound, and a request with more inputs than that is refused with PayloadTooLarge (413). A worker process
that dies fails the calls in its pool with WorkerCrashed (503); the pool is replaced and `restarts` counted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from batchery import cores
from batchery.errors import ConfigError, Overloaded, PayloadTooLarge
from batchery.gathering import gather_or_cancel
from batchery.workers import file_modules
from batchery.workers.process import WorkerCrashed

log = logging.getLogger("batchery.workers")

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
        #: Times the process pool was replaced after a worker process died.
        self.restarts = 0
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
                # A spawned child starts bare: functions from served model files are pickled by their loader-given
                # module name, which only the parent has. The initializer runs in each child before it unpickles a
                # call and teaches it those names (file_modules), so they work as any importable function does.
                self._executor = concurrent.futures.ProcessPoolExecutor(
                    self.workers,
                    mp_context=context,
                    initializer=file_modules.install,
                    initargs=(file_modules.registered(),),
                )
        return self._executor

    def start(self) -> None:
        """Start the workers now (processes take a second to spawn) rather than on the first call."""
        executor = self.executor
        if isinstance(executor, concurrent.futures.ProcessPoolExecutor):
            list(executor.map(_noop, range(self.workers)))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Compute `fn(*args)` in the pool; raise Overloaded when `max_queue` calls are already in it."""
        self._admit(fn, 1)
        self.pending += 1
        try:
            return await self._call(fn, args)
        finally:
            self.pending -= 1

    async def map(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
        """`[fn(item) for item in items]` computed concurrently in the pool; every item is admitted or none is.

        More items than `max_queue` can never fit: PayloadTooLarge (413), not an Overloaded (503) that a client
        would retry forever. On the first failure the calls not yet started are cancelled and it is raised.
        """
        items = list(items)
        self._admit(fn, len(items))
        self.pending += len(items)
        try:
            return await gather_or_cancel(self._call(fn, (item,)) for item in items)
        finally:
            self.pending -= len(items)

    def _admit(self, fn: Callable[..., Any], count: int) -> None:
        if count > self.max_queue:
            raise PayloadTooLarge(
                f"this request needs {count} calls of {_name(fn)} at once, but its {self.kind} pool takes at most "
                f"{self.max_queue} (max_queue); send at most {self.max_queue} inputs per request, or raise max_queue"
            )
        if self.pending + count > self.max_queue:
            raise Overloaded(
                f"the {self.kind} pool has {self.pending} calls in flight (limit {self.max_queue}); retry shortly",
                retry_after=1.0,
            )

    async def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        executor = self.executor
        try:
            future = executor.submit(fn, *args)
        except BrokenProcessPool:  # a worker died and no call has noticed yet: this one never ran, so it may go on
            executor = self._replace(executor)
            future = executor.submit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool as exc:
            self._replace(executor)
            raise WorkerCrashed(
                f"a worker process of the process pool died while computing {_name(fn)} (it exited, was killed, or "
                "could not import the function; see the log); the pool was restarted; retry the request"
            ) from exc

    def _replace(self, broken: concurrent.futures.Executor) -> concurrent.futures.Executor:
        """A fresh pool in place of `broken`, once: every call that was in the broken pool lands here."""
        if self._executor is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            self.restarts += 1
            log.warning(
                "a worker process of the %s pool died; the pool is replaced (restart %d)", self.kind, self.restarts
            )
        return self.executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def _noop(index: int) -> int:
    return index


def restarts(pipeline: Any) -> int:
    """How many times the process pools of a pipeline's CPU steps were replaced after a worker process died."""
    pools = (getattr(step, "pool", None) for step in getattr(pipeline, "steps", ()))
    return sum(pool.restarts for pool in pools if isinstance(pool, CpuPool))


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "a function")

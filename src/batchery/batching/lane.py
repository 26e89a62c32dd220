"""A lane: one worker thread owning one model instance, computing one batch at a time.

The event loop hands a lane a batch with a non-blocking `put`; the lane hands the result back with one
`call_soon_threadsafe` per batch. Runtimes that release the GIL (ONNX Runtime, PyTorch, tokenizers) compute
in parallel with the loop's HTTP work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from batchery.batching.isolate import predict_isolating
from batchery.batching.oom import ItemError
from batchery.batching.records import Batch, BatchResult
from batchery.cores import granted
from batchery.errors import PredictError

log = logging.getLogger("batchery.lane")

_STOP = object()
#: Why an async `predict` is refused (at start-up and reload, and if a plain one returns a coroutine).
ASYNC_PREDICT = (
    "has an async predict; it must be a plain def: batchery calls it on a worker thread of its own, where it may "
    "block (async work belongs in a pipeline's async step)"
)


class Lane:
    """Runs `setup`, warm-up and batches for one model instance on its own thread."""

    def __init__(
        self,
        model: Any,
        *,
        name: str,
        loop: asyncio.AbstractEventLoop,
        on_result: Callable[[Lane, BatchResult], None],
        version: str = "1",
        model_name: str = "",
    ) -> None:
        self.model = model
        self.name = name
        self.model_name = model_name or name
        #: The model version this lane computes; every result it hands back carries it.
        self.version = version
        self._loop = loop
        self._on_result = on_result
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run `fn` on the lane's thread (set-up, warm-up, reload), between batches."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inbox.put((fn, done))
        return done

    def compute(self, batch: Batch) -> None:
        """Queue `batch`; its result comes back through `on_result` on the event loop."""
        self._inbox.put(batch)

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        self._inbox.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._inbox.get()
            if job is _STOP:
                self._close_model()
                return
            if isinstance(job, Batch):
                result = self._compute(job)
                self._loop.call_soon_threadsafe(self._on_result, self, result)
                continue
            fn, done = job
            if not done.set_running_or_notify_cancel():  # its caller gave up waiting before it started
                continue
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

    def _close_model(self) -> None:
        """The model's optional `close()`, on this thread, after its last batch: a version retired by a hot reload
        (or a stopping server's, which does not wait for it) releases what it holds (a worker process, GPU memory)
        now, not whenever the garbage collector gets to it."""
        close = getattr(self.model, "close", None)
        if not callable(close):
            return
        try:
            close()
        except Exception:  # a model failing to let go must not take the lane's thread with it
            log.exception("model '%s': close() failed", self.model_name)

    def _compute(self, batch: Batch) -> BatchResult:
        started = time.perf_counter()
        failed_sizes: list[int] = []
        try:
            with granted(batch.cores):
                outputs, bisected = predict_isolating(
                    self._checked_predict, batch.payloads, failed_sizes, self.model_name
                )
            encoded = [output if isinstance(output, ItemError) else self._encode(output) for output in outputs]
        except Exception as exc:  # one bad batch must never end the lane
            return BatchResult(batch, None, exc, time.perf_counter() - started, self.version, failed_sizes)
        except BaseException as exc:  # SystemExit from a library's sys.exit(), say: still only this batch's error
            error = PredictError(
                f"model '{self.model_name}' raised {exc!r} on a batch of {len(batch.payloads)}; predict must raise "
                "an Exception, never end the worker"
            )
            error.__cause__ = exc
            return BatchResult(batch, None, error, time.perf_counter() - started, self.version, failed_sizes)
        elapsed = time.perf_counter() - started
        return BatchResult(batch, encoded, None, elapsed, self.version, failed_sizes, bisected)

    def _encode(self, output: Any) -> Any:
        """`encode_response(output)`; an output it cannot encode fails its own input only, not its batch-mates'."""
        try:
            return self.model.encode_response(output)
        except Exception as exc:
            error = PredictError(f"model '{self.model_name}' could not encode this input's output: {exc!r}")
            error.__cause__ = exc
            return ItemError(error)

    def _checked_predict(self, payloads: list[Any]) -> list[Any]:
        return checked_predict(self.model, payloads, self.model_name)


def checked_predict(model: Any, payloads: list[Any], model_name: str) -> list[Any]:
    """`model.predict(payloads)` as a list with one output per input: a list, a tuple or an array's rows.

    Warm-up checks with this too, so a model that passes warm-up cannot fail every request on its outputs' shape.
    """
    outputs = model.predict(payloads)
    if inspect.iscoroutine(outputs):
        outputs.close()  # never awaited: no "coroutine was never awaited" warning on top of this error
        raise PredictError(f"model '{model_name}' {ASYNC_PREDICT}")
    # An array (numpy, torch) of one row per input counts; a set (no order) or a table (iterates its columns)
    # does not.
    array = getattr(outputs, "ndim", 0) >= 1 and hasattr(outputs, "shape") and not hasattr(outputs, "columns")
    rows = isinstance(outputs, list | tuple) or array
    if not rows or len(outputs) != len(payloads):
        got = f"{len(outputs)} outputs" if rows else f"a {type(outputs).__name__}"
        raise PredictError(
            f"model '{model_name}' returned {got} for a batch of {len(payloads)} inputs. "
            "Hint: predict must return a list (or an array) with one output per input, in order"
        )
    return list(outputs)

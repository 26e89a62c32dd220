"""A model computed in a child process, so a crash (segfault, OOM kill, SIGKILL) takes the child down, not the server.

`ProcessModel(MyModel())` is served like any model: each lane gets its own copy and so its own child, spawned
at `setup`. A child that dies mid-batch fails that batch with 503 (`WorkerCrashed`), or retries it once on the
fresh child when the model is declared `idempotent`; the child is restarted and `restarts` counted
(`batchery_worker_restarts_total`). A model that crashes more than `max_restarts` times within `window`
seconds is not restarted again: its batches get 503 and `ready` turns False, so `/ready` reports it.

With `pin_cpus=True` each child is pinned (`sched_setaffinity`) to CPUs of its own: as many as its worker's core
share, by the worker's position (the engine sets `cpus` before `setup`: the pinned models' workers in order,
each after the previous one's), the same across restarts and hot reloads. Pinned children do not migrate between
cores and keep their caches warm; the OS can no longer balance them, so pin only when the children's shares add
up to the machine (the default: one worker per core).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from batchery import cores
from batchery.errors import BatcheryError
from batchery.model import model_name
from batchery.workers import file_modules

log = logging.getLogger("batchery.workers")

#: Batching settings read from the wrapped model (the engine reads them from this wrapper).
_SETTINGS = (
    "version", "max_batch_size", "max_delay_ms", "batching", "workers", "max_queue_per_worker",
    "max_queue_wait_ms", "max_batch_cost", "devices", "workers_per_device", "threads_per_worker", "example",
)  # fmt: skip


class WorkerCrashed(BatcheryError):
    """The process computing this batch died; retry the request (it may succeed on the restarted worker)."""

    status = 503
    code = "worker_crashed"


class WorkerTimedOut(WorkerCrashed):
    """The process computing this batch did not answer within `batch_timeout` and was killed (never retried)."""


class ProcessModel:
    """Wraps a picklable model (its class at module level, in a package or in a served file); see the module
    docstring."""

    def __init__(
        self,
        model: Any,
        *,
        idempotent: bool | None = None,
        max_restarts: int = 3,
        window: float = 60.0,
        batch_timeout: float | None = 300.0,
        pin_cpus: bool = False,
    ) -> None:
        """`batch_timeout`: seconds the child may take for one batch before it is killed and restarted (the batch
        gets 503 `worker_crashed`); None waits for ever, and a hung child then holds its lane for good.
        `pin_cpus`: pin each child to CPUs of its own (see the module docstring)."""
        self.model = model
        self.name = model_name(model)
        for setting in _SETTINGS:
            if hasattr(model, setting):
                setattr(self, setting, getattr(model, setting))
        if callable(getattr(model, "input_cost", None)):  # runs on the event loop, as for any model
            self.input_cost = model.input_cost
        self.idempotent = bool(getattr(model, "idempotent", False) if idempotent is None else idempotent)
        self.max_restarts = max_restarts
        self.window = window
        self.batch_timeout = batch_timeout
        self.pin_cpus = pin_cpus
        #: The CPUs its child is pinned to (empty: not pinned); set by the engine, by the worker's position.
        self.cpus: tuple[int, ...] = ()
        self.restarts = 0
        self.ready = True
        self._crashes: deque[float] = deque()
        self._device = "cpu"
        self._cores = 1
        self._process: Any = None
        self._conn: Connection | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> ProcessModel:
        # One child per lane: a copy shares the (never set-up) model, not the parent's child process.
        return ProcessModel(
            self.model,
            idempotent=self.idempotent,
            max_restarts=self.max_restarts,
            window=self.window,
            batch_timeout=self.batch_timeout,
            pin_cpus=self.pin_cpus,
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def setup(self, device: str) -> None:
        """Spawn the child and set the model up in it; raise what its setup raised."""
        self._device = device
        self._cores = cores.granted_cores()  # the lane's share: the child's granted_cores() in setup and predict
        self._start()

    def decode_request(self, item: Any) -> Any:
        return self.model.decode_request(item) if hasattr(self.model, "decode_request") else item

    def encode_response(self, output: Any) -> Any:
        return self.model.encode_response(output) if hasattr(self.model, "encode_response") else output

    def predict(self, batch: list[Any]) -> list[Any]:
        try:
            return self._call(batch)
        except WorkerTimedOut:
            raise  # a batch that hung once would hang again: never retried
        except WorkerCrashed:
            if not self.idempotent or not self.ready:
                raise
            log.warning("model '%s': retrying the batch of %d once on the restarted worker", self.name, len(batch))
            return self._call(batch)

    def close(self) -> None:
        """End the child (the lane's last batch is done: a hot reload retired it, or the server stops)."""
        if self._process is not None:
            self._process.kill()
        self._release()

    def _release(self) -> int | None:
        """Let go of the child, which has ended or was killed; return its exit code (None: none yet, or no child)."""
        code = _release(self._conn, self._process) if self._process is not None and self._conn is not None else None
        self._process = self._conn = None
        return code

    def _call(self, batch: list[Any]) -> list[Any]:
        if self.ready and self._process is not None and not self._process.is_alive():
            self._crashed()  # it died while idle: nothing of this batch was computed, so it goes to the new child
        if not self.ready or self._conn is None:
            raise WorkerCrashed(f"model '{self.name}' kept crashing and is not restarted; fix it, then restart")
        try:
            self._conn.send(("predict", batch))
            if self.batch_timeout is not None and not self._conn.poll(self.batch_timeout):
                self._process.kill()
                self._crashed()
                raise WorkerTimedOut(
                    f"the worker process of model '{self.name}' did not answer within {self.batch_timeout:g}s "
                    "(batch_timeout) and was restarted; retry the request"
                )
            kind, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._crashed()
            raise WorkerCrashed(
                f"the worker process of model '{self.name}' died while computing this batch; retry the request"
            ) from exc
        if kind == "error":
            raise RuntimeError(value)
        return list(value)

    def _crashed(self) -> None:
        code = self._release()
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and self._crashes[0] < now - self.window:
            self._crashes.popleft()
        if len(self._crashes) > self.max_restarts:
            self.ready = False
            log.error(
                "model '%s' crashed %d times in %.0f s (last exit code %s): not restarting it; it is marked not ready",
                self.name, len(self._crashes), self.window, code,
            )  # fmt: skip
            self.close()
            return
        self.restarts += 1
        log.warning("model '%s': worker process died (exit code %s); restarting it", self.name, code)
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process running an event loop and threads
        parent, child = context.Pipe()
        # The model goes as bytes, unpickled in the child after it learned the served files' module names
        # (file_modules): a model class defined in a served file would otherwise fail before `_serve` runs.
        blob = pickle.dumps(self.model)
        args = (child, blob, file_modules.registered(), self._device, self._cores, self.cpus)
        process = context.Process(target=_serve, args=args, daemon=True)
        process.start()
        child.close()
        try:
            kind, value = parent.recv()
        except EOFError:
            code = _release(parent, process)
            raise RuntimeError(
                f"model '{self.name}': its worker process exited during set-up (exit code {code})"
            ) from None
        if kind == "error":
            _release(parent, process)
            raise RuntimeError(f"model '{self.name}' failed to set up in its worker process: {value}")
        self._process, self._conn = process, parent


def _release(conn: Connection, process: Any) -> int | None:
    """Close a child's pipe and, once it has ended (waiting up to 5 s), its process handle: each holds a file
    descriptor that the garbage collector would close only some time later. Returns its exit code (None: it is
    still running)."""
    conn.close()
    process.join(5)
    code: int | None = process.exitcode
    if code is not None:  # close() refuses a process still running
        process.close()
    return code


def _serve(
    conn: Connection, blob: bytes, files: dict[str, str], device: str, granted: int, cpus: tuple[int, ...]
) -> None:
    """The child: pin itself (before anything reads the affinity to size its threads), load and set the model
    up, then answer batches until the pipe closes."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    with cores.granted(granted):
        _answer(conn, blob, files, device)


def _answer(conn: Connection, blob: bytes, files: dict[str, str], device: str) -> None:
    try:
        file_modules.install(files)
        model = pickle.loads(blob)
        if hasattr(model, "setup"):
            model.setup(device)
    except Exception as exc:
        conn.send(("error", repr(exc)))
        return
    conn.send(("ready", None))
    while True:
        try:
            _command, batch = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", list(model.predict(batch))))
        except Exception as exc:
            conn.send(("error", f"{exc!r}"))


def restarts(handle: Any) -> int:
    """How many times the worker processes of a served model (a ModelHandle) were restarted, over every version
    it served (a hot reload replaces the workers, and a counter must not go down)."""
    return int(getattr(handle, "retired_restarts", 0)) + lane_restarts(handle.lanes)


def lane_restarts(lanes: Any) -> int:
    """Restarts of the worker processes of `lanes` (those whose model is a ProcessModel)."""
    return sum(lane.model.restarts for lane in lanes if isinstance(lane.model, ProcessModel))


def given_up(handle: Any) -> bool:
    """True when a worker process of this served model kept crashing and is no longer restarted."""
    return any(isinstance(lane.model, ProcessModel) and not lane.model.ready for lane in handle.lanes)

"""One served model: its batcher, and the lanes of its current version (each lane owns a copy of the model).

A reload builds and warms up the new version's lanes beside the running ones, then swaps them into the batcher
in one step on the event loop: batches already running finish on the old lanes, which are then stopped and
their model copies released. A failed reload leaves the old version serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchery import cores
from batchery.batching.batcher import POLICIES, Batcher
from batchery.batching.lane import ASYNC_PREDICT, Lane, checked_predict
from batchery.batching.oom import predict_splitting
from batchery.batching.streaming import StreamingModel
from batchery.errors import ConfigError, Conflict, ModelLoadError, describe
from batchery.gpu import NVML, GpuReading, device_index
from batchery.model import model_name
from batchery.observer import Observer
from batchery.spec import ModelSpec, check_name, check_thread_budget, from_env, resolve_devices
from batchery.workers.process import ProcessModel, lane_restarts

log = logging.getLogger("batchery.engine")

#: How many previous versions `rollback` can go back to.
HISTORY = 3


@dataclass(slots=True)
class ModelInfo:
    """What `/v1/models` reports for one model."""

    name: str
    version: str
    status: str
    device: str
    workers: int
    max_batch_size: int
    max_delay_ms: float
    batching: str
    queued: int
    load_seconds: float | None
    #: The queue's time bound in ms (0: none); `queue_wait_bound_ms` is the one in force (>= eight full batches).
    max_queue_wait_ms: float = 0.0
    queue_wait_bound_ms: float | None = None
    batch_cap: int = 0
    previous_versions: list[str] | None = None
    #: NVML readings of the GPUs this model's workers run on (absent without a GPU).
    gpus: list[GpuReading] | None = None
    #: Inputs each worker's share of the queue holds (the queue holds this times `workers`).
    max_queue_per_worker: int | None = None
    #: Each CPU worker's intra-op threads (its core grant), and the batch's cost cap (None: none).
    threads_per_worker: int | None = None
    max_batch_cost: int | None = None


@dataclass(slots=True)
class Source:
    """How to build a version again: a prototype (never set up) and, for models from a file, how to re-import."""

    prototype: Any
    version: str
    reimport: Callable[[], Any] | None = None
    #: The version the prototype's class declares (the served label may add a reload number).
    declared: str = ""
    #: The files it was loaded from, which `--watch` watches.
    files: tuple[str, ...] = ()
    #: A digest of the code it runs (`code_fingerprint`), in its cache keys beside the version label.
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = code_fingerprint(self.prototype, self.files)


def check_methods(prototype: Any, where: str) -> None:
    """Refuse a model without the methods requests need, or with an async `predict` (also behind a wrapper)."""
    missing = [
        method
        for method in ("predict(batch)", "decode_request(item)", "encode_response(output)")
        if not callable(getattr(prototype, method.split("(")[0], None))
    ]
    if missing:
        raise ConfigError(
            f"{where} has no {' or '.join(missing)} method. Hint: subclass batchery.Model, which provides "
            "everything but predict"
        )
    wrapped = prototype.model if isinstance(prototype, StreamingModel | ProcessModel) else prototype
    if inspect.iscoroutinefunction(getattr(wrapped, "predict", None)):
        raise ConfigError(f"{where} {ASYNC_PREDICT}")


def code_fingerprint(prototype: Any, files: Sequence[str] = ()) -> str:
    """A digest of the code a version runs: its class's name and the bytes of its files (the served file, else
    the module that defines its class). Cached responses are keyed by it as well as by the version label, so
    new code under an unchanged label (a new image, the label "1" of every deployment, the per-process labels of
    hot reloads) never serves the old code's answers from a shared Redis. Weights are not read: when only they
    change, give the new version a new label.
    """
    model = prototype.model if isinstance(prototype, StreamingModel | ProcessModel) else prototype
    digest = hashlib.blake2b(type(model).__qualname__.encode(), digest_size=8)
    for path in files or (_source_file(type(model)),):
        with contextlib.suppress(OSError):
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _source_file(cls: type) -> str:
    try:
        return inspect.getsourcefile(cls) or ""
    except TypeError:  # a built-in class
        return ""


class ModelHandle:
    """One served model: its lanes, each with its own instance, and its batcher."""

    def __init__(
        self,
        model: Any,
        *,
        total_cores: int,
        workers: int | None = None,
        spec: ModelSpec | None = None,
        observer: Observer | None = None,
        reimport: Callable[[], Any] | None = None,
        files: Sequence[str] = (),
    ) -> None:
        model = _streaming(model)
        spec = spec or ModelSpec()
        spec = spec.merged(from_env(spec.name or model_name(model)))

        attributes = ModelSpec.from_attributes(model, spec)

        def setting(key: str, default: Any) -> Any:
            value = getattr(spec, key)
            if value is None:
                value = getattr(attributes, key)
            return value if value is not None else default

        self.spec = spec
        self.name = str(spec.name or model_name(model))
        self.prototype = model
        self.version = str(setting("version", "1"))
        self.devices = resolve_devices(str(setting("devices", "auto") or "auto"))
        per_device = setting("workers_per_device", None)
        # A model's own setting (its file entry, BATCHERY_MODEL_<NAME>_WORKERS) beats the server-wide `workers`,
        # which beats the class's attribute.
        explicit_workers = spec.workers or workers or attributes.workers
        if per_device:
            self.workers = int(per_device) * len(self.devices)
        elif explicit_workers:
            self.workers = int(explicit_workers)
        else:
            self.workers = total_cores if self.devices == ["cpu"] else len(self.devices)
        self.lane_devices = [self.devices[index % len(self.devices)] for index in range(self.workers)]
        cpu_lanes = sum(1 for device in self.lane_devices if device == "cpu")
        threads = setting("threads_per_worker", None)
        self.threads_per_worker = int(threads) if threads is not None else max(1, total_cores // max(1, cpu_lanes))
        if threads or explicit_workers or per_device:
            check_thread_budget(self.name, cpu_lanes, self.threads_per_worker, total_cores)
        self.device = ",".join(self.devices)
        self.total_cores = total_cores
        # An explicit `threads_per_worker` is each lane's grant in predict too: never widened to every core.
        self.elastic = bool(getattr(model, "elastic", False)) and cpu_lanes == self.workers and threads is None
        self.max_batch_size = int(setting("max_batch_size", 32))
        self.max_delay_ms = float(setting("max_delay_ms", 5.0))
        self.max_queue_wait_ms = float(setting("max_queue_wait_ms", 0.0))
        self.policy = str(setting("batching", "adaptive"))
        self.max_queue_per_worker = int(setting("max_queue_per_worker", 1024))
        self.status = "pending"
        self.load_seconds: float | None = None
        self.reloads = 0
        self.reload_failures = 0
        #: Where this model's pinned process workers start among the CPUs (the engine places models one after
        #: another; see `workers.process`).
        self.first_pinned_cpu = 0
        #: Worker-process restarts of the versions this model served before the current one (a counter of the
        #: model's whole life: the current version's lanes count their own).
        self.retired_restarts = 0
        self._validate()
        self.batcher = Batcher(
            self.name,
            max_batch_size=self.max_batch_size,
            max_delay=self.max_delay_ms / 1000.0,
            policy=self.policy,
            max_queue=self.max_queue_per_worker * self.workers,
            cores=total_cores if threads is None else self.threads_per_worker * self.workers,
            elastic=self.elastic,
            observer=observer,
            max_batch_cost=setting("max_batch_cost", None),
            max_queue_wait=self.max_queue_wait_ms / 1000.0 if self.max_queue_wait_ms > 0 else None,
        )
        self.lanes: list[Lane] = []
        self.source = Source(model, self.version, reimport, str(getattr(model, "version", "") or ""), tuple(files))
        self.history: deque[Source] = deque(maxlen=HISTORY)
        #: Seconds a version's setup and warm-up may take (0: no limit); past it the load fails and, in a
        #: reload, the version serving now keeps serving and later reloads are not blocked behind a hung setup.
        self.load_timeout = 0.0
        self._reloading = asyncio.Lock()
        self._loaded = asyncio.Event()  # set once the start-up load has finished, well or not

    def _validate(self) -> None:
        where = f"model '{self.name}'"
        check_name(self.name)  # also a class's `name`, which no spec checked
        check_methods(self.prototype, where)
        for key in ("workers", "max_batch_size", "threads_per_worker", "max_queue_per_worker"):
            if getattr(self, key) < 1:  # also for values set as class attributes, which no spec checked
                raise ConfigError(f"{where}: {key} must be >= 1, not {getattr(self, key)}")
        if self.max_delay_ms < 0 or self.max_queue_wait_ms < 0:
            raise ConfigError(f"{where}: max_delay_ms and max_queue_wait_ms must be >= 0")
        if self.policy not in POLICIES:
            raise ConfigError(f"{where}: batching must be one of {', '.join(POLICIES)}, not {self.policy!r}")

    def cache_tag(self, version: str) -> str:
        """What response cache keys say about `version`: its label and its code's fingerprint."""
        for source in (self.source, *self.history):
            if source.version == version:
                return f"{version}@{source.fingerprint}"
        return version

    @property
    def watch_files(self) -> list[str]:
        """The files the version serving now was loaded from (`--watch` reloads the model when one changes)."""
        return list(self.source.files)

    @property
    def decoder(self) -> Any:
        """The instance whose `decode_request` validates inputs on the loop: the first lane's, once set up."""
        return self.lanes[0].model if self.lanes else self.prototype

    async def load(self, loop: asyncio.AbstractEventLoop) -> None:
        """Copy the model per worker, run `setup` and warm-up batches on each lane; raise ModelLoadError."""
        started = time.monotonic()
        self.status = "loading"
        try:
            async with self._reloading:  # a reload sent during start-up waits, then finds the model ready
                self.lanes = await self._build(loop, self.prototype, self.version)
        except BaseException:
            self.abandon()
            raise
        self.batcher.cost_of = getattr(self.decoder, "input_cost", None)
        self.batcher.attach(self.lanes)
        self.load_seconds = time.monotonic() - started
        self.status = "ready"
        self._loaded.set()
        log.info("model '%s' loaded and warmed up on %d worker(s) in %.2fs", self.name, self.workers, self.load_seconds)

    def abandon(self) -> None:
        """Mark the start-up load failed (or never to come, when an earlier model's failed): reloads waiting
        for it are refused."""
        self.status = "failed"
        self._loaded.set()

    async def _started(self) -> None:
        if self.status in ("pending", "loading"):  # sent during start-up: apply once this model is up
            await self._loaded.wait()

    async def reload(
        self,
        prototype: Any = None,
        version: str | None = None,
        *,
        reimport: Callable[[], Any] | None = None,
        files: Sequence[str] = (),
    ) -> str:
        """Load a new version beside the current one, then swap atomically; return the new version label.

        With no `prototype`, the model is built again from its source (re-imported when it came from a file,
        so new code and weights are picked up). With one, `reimport` and `files` say how later reloads rebuild
        it and which files `--watch` watches (none: the prototype itself, no files). On failure (ModelLoadError)
        the current version keeps serving.
        """
        await self._started()
        async with self._reloading:
            if prototype is None:
                source = self.source
                prototype = self._reimported(source) if source.reimport else source.prototype
                reimport, files = source.reimport, source.files
            return await self._swap(prototype, version, reimport, tuple(files), code_fingerprint(prototype, files))

    def _reimported(self, source: Source) -> Any:
        assert source.reimport is not None
        try:
            return source.reimport()
        except Exception as exc:  # an import that fails or raises, a constructor that raises
            raise self._failed(
                ModelLoadError(f"model '{self.name}' could not be imported again: {describe(exc)}")
            ) from exc

    def _failed(self, error: ModelLoadError) -> ModelLoadError:
        self.reload_failures += 1
        log.error("reload of model '%s' failed; version %s keeps serving: %s", self.name, self.version, error.message)
        return error

    async def _swap(
        self,
        prototype: Any,
        version: str | None,
        reimport: Callable[[], Any] | None,
        files: tuple[str, ...],
        fingerprint: str,
    ) -> str:
        """Build `prototype`'s lanes beside the serving ones and swap them in. `fingerprint` is its code's, taken
        when it was imported (the files may change while it builds; a rollback's code is no longer on disk)."""
        if self.status != "ready":
            raise Conflict(f"model '{self.name}' is {self.status}, not serving: reload it once it is ready")
        prototype = _streaming(prototype)
        try:
            check_methods(prototype, f"the new version of model '{self.name}'")
        except ConfigError as exc:
            raise self._failed(ModelLoadError(exc.message)) from exc
        declared = str(getattr(prototype, "version", "") or "")
        if version:
            label = version
        elif declared and declared != self.source.declared:
            label = declared  # the new code declares a new version
        else:
            label = f"{declared or self.version}.{self.reloads + 1}"  # same declared version: number it
        started = time.monotonic()
        try:
            lanes = await self._build(asyncio.get_running_loop(), prototype, label)
        except ModelLoadError as exc:
            self._failed(exc)
            raise
        self.history.append(self.source)
        self.source = Source(prototype, label, reimport, declared, files, fingerprint)
        self.prototype = prototype
        self.retired_restarts += lane_restarts(self.lanes)
        self.lanes = lanes
        self.version = label
        self.reloads += 1
        self.load_seconds = time.monotonic() - started
        self.batcher.cost_of = getattr(lanes[0].model, "input_cost", None)
        self.batcher.attach(lanes)  # the swap: from here every new batch runs on the new version
        log.info("model '%s' now serves version %s (loaded in %.2fs)", self.name, label, time.monotonic() - started)
        return label

    async def rollback(self) -> str:
        """Serve the previous version again (built afresh from its prototype); return its label.

        Holds the reload lock throughout, so a reload running at the same time finishes first; if building the
        previous version fails, it stays in the history for another try.
        """
        await self._started()
        async with self._reloading:
            if not self.history:
                raise Conflict(f"model '{self.name}' has no previous version to roll back to; reload a new one instead")
            previous = self.history.pop()
            current = self.source
            try:
                label = await self._swap(
                    previous.prototype, previous.version, previous.reimport, previous.files, previous.fingerprint
                )
            except BaseException:
                self.history.append(previous)
                raise
            self.history.pop()  # _swap pushed the version we are leaving; roll-forward is a reload, not history
            self.history.append(current)
            return label

    async def _build(self, loop: asyncio.AbstractEventLoop, prototype: Any, version: str) -> list[Lane]:
        copies = [copy.deepcopy(prototype) for _ in range(self.workers)]
        for index, model in enumerate(copies):
            if isinstance(model, ProcessModel) and model.pin_cpus:  # by position: the same after a reload
                share = self.threads_per_worker
                model.cpus = cores.cpus_at(self.first_pinned_cpu + index * share, share)
        lanes = [
            Lane(
                model,
                name=f"batchery-{self.name}-{index}",
                loop=loop,
                on_result=self.batcher.on_result,
                version=version,
                model_name=self.name,
            )
            for index, model in enumerate(copies)
        ]
        setting_up = asyncio.gather(
            *(
                asyncio.wrap_future(lane.call(self._set_up(lane, device)))
                for lane, device in zip(lanes, self.lane_devices, strict=True)
            )
        )
        try:
            failed_sizes = await asyncio.wait_for(setting_up, self.load_timeout or None)
        except TimeoutError as exc:
            for lane in lanes:
                lane.stop()  # each lane's thread ends once its setup returns, if it ever does
            raise ModelLoadError(
                f"model '{self.name}' (version {version}) did not finish setup and warm-up within "
                f"{self.load_timeout:g}s (load_timeout_seconds); check what its setup() waits for"
            ) from exc
        except Exception as exc:
            for lane in lanes:
                lane.stop()
            if isinstance(exc, _WarmUpFailed):
                raise ModelLoadError(
                    f"model '{self.name}' (version {version}) failed its warm-up: {exc}. Fix predict() (or "
                    "decode_request/encode_response) for the model's `example`, or the example itself"
                ) from exc.__cause__
            raise ModelLoadError(
                f"model '{self.name}' (version {version}) failed to load: {exc!r}. Fix the model's setup() or its "
                "files, then start the server again (or retry the reload)"
            ) from exc
        for size in sorted({size for sizes in failed_sizes for size in sizes}):
            self.batcher.cap.failed(size)  # warm-up found the memory limit: start below it
        return lanes

    def _set_up(self, lane: Lane, device: str) -> Callable[[], list[int]]:
        """The lane's start-up job: `setup`, then warm-up batches of 1 and the cap (at each core grant).

        Returns the batch sizes that ran out of memory during warm-up, and logs how long each part took.
        """
        sizes = sorted({1, self.max_batch_size})
        share = self.threads_per_worker if device == "cpu" else 1
        grants = sorted({share, self.total_cores}) if self.elastic else [share]

        def run() -> list[int]:
            model = lane.model
            setup = getattr(model, "setup", None)
            started = time.perf_counter()
            if setup is not None:
                with cores.granted(share):  # during setup, granted_cores() is this lane's share
                    setup(device)
            loaded = time.perf_counter()
            example = getattr(model, "example", None)
            failed: list[int] = []
            if example is None:
                log.info("model '%s' %s: setup %.2fs, no warm-up (no example)", self.name, lane.name, loaded - started)
                return failed
            step = "decode_request(example)"
            try:
                decoded = model.decode_request(example)
                for grant in grants:
                    for size in sizes:
                        step = f"predict on a batch of {size} copies of `example`"
                        with cores.granted(grant):
                            outputs = predict_splitting(
                                lambda batch: checked_predict(model, batch, self.name), [decoded] * size, failed
                            )
                        step = f"encode_response of the outputs of a batch of {size}"
                        for output in outputs:
                            model.encode_response(output)
            except Exception as exc:
                raise _WarmUpFailed(f"{step} raised {describe(exc)}") from exc
            log.info(
                "model '%s' %s on %s: setup %.2fs, warm-up %.2fs (batches of %s)",
                self.name,
                lane.name,
                device,
                loaded - started,
                time.perf_counter() - loaded,
                " and ".join(map(str, sizes)),
            )
            return failed

        return run

    def close(self) -> None:
        for lane in self.lanes:
            lane.stop()

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            version=self.version,
            status=self.status,
            device=self.device,
            workers=self.workers,
            max_batch_size=self.max_batch_size,
            max_delay_ms=self.max_delay_ms,
            batching=self.policy,
            queued=self.batcher.queued,
            max_queue_wait_ms=self.max_queue_wait_ms,
            queue_wait_bound_ms=_ms(self.batcher.queue_wait_bound()),
            load_seconds=self.load_seconds,
            batch_cap=self.batcher.cap.value,
            previous_versions=[source.version for source in self.history],
            gpus=self._gpus(),
            max_queue_per_worker=self.max_queue_per_worker,
            threads_per_worker=self.threads_per_worker,
            max_batch_cost=self.batcher.max_batch_cost,
        )

    def _gpus(self) -> list[GpuReading] | None:
        indexes = {device_index(device) for device in self.devices} - {None}
        if not indexes:
            return None
        return [reading for reading in NVML.readings() if reading.index in indexes] or None


class _WarmUpFailed(Exception):
    """Set-up worked, warm-up did not: the message says which step of it."""


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _streaming(model: Any) -> Any:
    # Streaming (issue 5): a model that yields steps runs behind an adapter that lanes batch as usual.
    if getattr(model, "stream", False) and not isinstance(model, StreamingModel):
        return StreamingModel(model)
    return model

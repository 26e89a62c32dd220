"""The engine: loads models onto lanes, batches their inputs and answers each one. No HTTP in here.

engine = Engine([MyModel()])
await engine.start()
outputs = await engine.infer("mymodel", ["a", "b"])
await engine.stop()
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchery import cores
from batchery.batching.batcher import POLICIES, Batcher
from batchery.batching.lane import Lane
from batchery.batching.streaming import StreamingModel
from batchery.errors import ConfigError, InvalidInput, ModelLoadError, ModelNotFound, NotReady
from batchery.model import model_name
from batchery.observer import Observer
from batchery.pipeline.handle import drain_pipelines, split_pipelines

log = logging.getLogger("batchery.engine")


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


class ModelHandle:
    """One served model: its lanes, each with its own instance, and its batcher."""

    def __init__(
        self,
        model: Any,
        *,
        total_cores: int,
        workers: int | None = None,
        device: str = "cpu",
        observer: Observer | None = None,
    ) -> None:
        # Streaming (issue 5): a model that yields steps runs behind an adapter that lanes batch as usual.
        if getattr(model, "stream", False) and not isinstance(model, StreamingModel):
            model = StreamingModel(model)
        self.name = model_name(model)
        self.prototype = model
        self.device = device
        self.version = str(getattr(model, "version", "1"))
        self.workers = int(workers or getattr(model, "workers", None) or total_cores)
        self.total_cores = total_cores
        self.elastic = bool(getattr(model, "elastic", False))
        self.max_batch_size = int(getattr(model, "max_batch_size", 32))
        self.max_delay_ms = float(getattr(model, "max_delay_ms", 5.0))
        self.policy = str(getattr(model, "batching", "adaptive"))
        self.status = "pending"
        self.load_seconds: float | None = None
        self._validate()
        self.batcher = Batcher(
            self.name,
            max_batch_size=self.max_batch_size,
            max_delay=self.max_delay_ms / 1000.0,
            policy=self.policy,
            max_queue=int(getattr(model, "max_queue_per_worker", 256)) * self.workers,
            cores=total_cores,
            elastic=self.elastic,
            observer=observer,
        )
        self.lanes: list[Lane] = []

    def _validate(self) -> None:
        where = f"model '{self.name}'"
        if not callable(getattr(self.prototype, "predict", None)):
            raise ConfigError(f"{where} has no predict(batch) method. Hint: subclass batchery.Model")
        if self.workers < 1 or self.max_batch_size < 1:
            raise ConfigError(f"{where}: workers and max_batch_size must be >= 1")
        if self.max_delay_ms < 0:
            raise ConfigError(f"{where}: max_delay_ms must be >= 0")
        if self.policy not in POLICIES:
            raise ConfigError(f"{where}: batching must be one of {', '.join(POLICIES)}, not {self.policy!r}")

    @property
    def decoder(self) -> Any:
        """The instance whose `decode_request` validates inputs on the loop: the first lane's, once set up."""
        return self.lanes[0].model if self.lanes else self.prototype

    async def load(self, loop: asyncio.AbstractEventLoop) -> None:
        """Copy the model per worker, run `setup` and a warm-up batch on each lane; raise ModelLoadError."""
        started = time.monotonic()
        self.status = "loading"
        self.lanes = [
            Lane(
                copy.deepcopy(self.prototype),
                name=f"batchery-{self.name}-{index}",
                loop=loop,
                on_result=self.batcher.on_result,
            )
            for index in range(self.workers)
        ]
        try:
            await asyncio.gather(*(asyncio.wrap_future(lane.call(self._set_up(lane))) for lane in self.lanes))
        except Exception as exc:
            self.status = "failed"
            self.close()
            raise ModelLoadError(
                f"model '{self.name}' failed to load: {exc!r}. Fix the model's setup() or its files, "
                "then start the server again"
            ) from exc
        self.batcher.attach(self.lanes)
        self.load_seconds = time.monotonic() - started
        self.status = "ready"
        log.info("model '%s' loaded and warmed up on %d worker(s) in %.2fs", self.name, self.workers, self.load_seconds)

    def _set_up(self, lane: Lane) -> Any:
        device = self.device
        sizes = sorted({1, self.max_batch_size})
        share = max(1, self.total_cores // self.workers)
        grants = sorted({share, self.total_cores}) if self.elastic else [share]

        def run() -> None:
            model = lane.model
            setup = getattr(model, "setup", None)
            if setup is not None:
                with cores.granted(share):  # during setup, granted_cores() is this lane's share
                    setup(device)
            example = getattr(model, "example", None)
            if example is None:
                return
            decoded = model.decode_request(example)
            for grant in grants:
                for size in sizes:
                    with cores.granted(grant):
                        outputs = model.predict([decoded] * size)
                    if len(outputs) != size:
                        raise ModelLoadError(f"warm-up: predict returned {len(outputs)} outputs for {size} inputs")
                    for output in outputs:
                        model.encode_response(output)

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
            load_seconds=self.load_seconds,
        )


class Engine:
    """Owns every model's handle; `infer` is the one entry point protocols call."""

    def __init__(
        self,
        models: Sequence[Any],
        *,
        cores_available: int | None = None,
        workers: int | None = None,
        observer: Observer | None = None,
    ) -> None:
        if not models:
            raise ConfigError("no model to serve. Hint: pass at least one model")
        total = cores_available or cores.available()
        # Pipelines (issue 7): their stage models are loaded as ordinary handles; `infer` dispatches to them.
        models, self.pipelines = split_pipelines(models)
        self.handles: dict[str, ModelHandle] = {}
        for model in models:
            handle = ModelHandle(model, total_cores=total, workers=workers, observer=observer)
            if handle.name in self.handles:
                raise ConfigError(f"two models are named '{handle.name}'; give one a different `name`")
            self.handles[handle.name] = handle
        self.ready = False
        self.accepting = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Load and warm up every model; raise ModelLoadError (naming the model) if one fails."""
        self._loop = asyncio.get_running_loop()
        try:
            for handle in self.handles.values():
                await handle.load(self._loop)
            for pipeline in self.pipelines.values():  # pipelines (issue 7)
                await pipeline.pipeline.start()
        except BaseException:
            self.close()
            raise
        self.accepting = True
        self.ready = True

    async def stop(self, grace: float = 30.0) -> None:
        """Refuse new inputs, let queued and running batches finish (up to `grace` seconds), stop lanes."""
        self.ready = False
        self.accepting = False
        drains = [handle.batcher.drain() for handle in self.handles.values()]
        if self.pipelines:  # pipelines (issue 7): requests in flight still send inputs to their stages
            drains = [drain_pipelines(self.pipelines.values(), drains)]
        try:
            await asyncio.wait_for(asyncio.gather(*drains), grace)
        except TimeoutError:
            log.warning("drain grace period of %.1fs passed with work still in flight", grace)
        self.close()
        for pipeline in self.pipelines.values():
            await pipeline.pipeline.aclose()

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()

    def handle(self, name: str) -> ModelHandle:
        handle = self.handles.get(name)
        if handle is None:
            known = ", ".join(sorted(self.handles))
            raise ModelNotFound(f"no model named '{name}'; this server serves: {known}")
        return handle

    def decode(self, handle: ModelHandle, inputs: Sequence[Any]) -> list[Any]:
        """Validate and decode every input before any joins a batch, so a bad one fails only its request."""
        decode = handle.decoder.decode_request
        decoded = []
        for index, raw in enumerate(inputs):
            try:
                decoded.append(decode(raw))
            except (ValueError, TypeError, KeyError) as exc:
                raise InvalidInput(f"input {index}: {exc}") from exc
        return decoded

    async def infer(self, name: str, inputs: Sequence[Any], *, deadline: float | None = None) -> list[Any]:
        """Compute one output per input (already passed through `encode_response`), in order."""
        pipeline = self.pipelines.get(name)
        if pipeline is not None:  # pipelines (issue 7)
            return await pipeline.infer(self, inputs, deadline)
        handle = self.handle(name)
        payloads = self.decode(handle, inputs)
        return await self.infer_decoded(handle, payloads, deadline=deadline)

    async def infer_decoded(
        self, handle: ModelHandle, payloads: Sequence[Any], *, deadline: float | None = None
    ) -> list[Any]:
        """Like `infer`, for inputs that already went through `decode_request`."""
        if not self.accepting:
            raise NotReady("the server is not accepting requests (starting up or shutting down)", retry_after=1.0)
        loop = self._loop or asyncio.get_running_loop()
        batcher = handle.batcher
        items = [batcher.new_item(payload, loop, deadline) for payload in payloads]
        batcher.submit(items)
        if len(items) == 1:
            return [await items[0].future]
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            for item in items:  # one input failed: drop the rest of this request's queued inputs
                item.future.cancel()
            raise

    def models(self) -> list[ModelInfo]:
        infos = [handle.info() for handle in self.handles.values()]
        return infos + [pipeline.info(self) for pipeline in self.pipelines.values()]  # pipelines (issue 7)

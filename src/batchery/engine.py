"""The engine: loads models onto lanes, batches their inputs and answers each one. No HTTP in here.

engine = Engine([MyModel()])
await engine.start()
outputs = await engine.infer("mymodel", ["a", "b"])
await engine.stop()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from batchery import cores
from batchery.batching.scheduler import DEFAULT_CLIENT
from batchery.errors import ConfigError, ModelNotFound, NotReady
from batchery.handle import ModelHandle, ModelInfo
from batchery.model import decode_all

__all__ = ["Engine", "ModelHandle", "ModelInfo"]
from batchery.observer import Observer
from batchery.pipeline.handle import drain_pipelines, split_pipelines
from batchery.spec import Served, check_model_env
from batchery.workers.process import given_up

log = logging.getLogger("batchery.engine")

#: How many version swaps one request's inputs are computed again for, to come from a single version.
_SWAPS_OUTLIVED = 3


class Engine:
    """Owns every model's handle; `infer` is the one entry point protocols call."""

    def __init__(
        self,
        models: Sequence[Any],
        *,
        cores_available: int | None = None,
        workers: int | None = None,
        observer: Observer | None = None,
        load_timeout: float = 0.0,
    ) -> None:
        """`models`: model objects, pipelines, or `Served` records (a model with its settings and re-importer).

        `load_timeout`: seconds each model's setup and warm-up may take, at start-up and in a reload (0: no limit).
        """
        if not models:
            raise ConfigError("no model to serve. Hint: pass at least one model")
        total = cores_available or cores.available()
        # Pipelines (issue 7): their stage models are loaded as ordinary handles; `infer` dispatches to them.
        models, self.pipelines = split_pipelines(models)
        self.handles: dict[str, ModelHandle] = {}
        for model in models:
            served = model if isinstance(model, Served) else Served(model)
            handle = ModelHandle(
                served.model,
                total_cores=total,
                workers=workers,
                spec=served.spec,
                observer=observer,
                reimport=served.reimport,
                files=served.files,
            )
            handle.load_timeout = load_timeout
            if handle.name in self.handles:
                raise ConfigError(f"two models are named '{handle.name}'; give one a different `name`")
            self.handles[handle.name] = handle
        check_model_env(self.handles)
        pinned = 0  # pinned process workers take the CPUs model after model, worker after worker
        for handle in self.handles.values():
            handle.first_pinned_cpu = pinned
            if getattr(handle.prototype, "pin_cpus", False):
                pinned += handle.workers * handle.threads_per_worker
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
            for handle in self.handles.values():
                if handle.status != "ready":
                    handle.abandon()
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

    def abort(self, error: BaseException) -> int:
        """Answer every queued and computing input of every model with `error`; return how many there were."""
        return sum(handle.batcher.abort(error) for handle in self.handles.values())

    def is_ready(self, handle: ModelHandle | None = None) -> bool:
        """The one readiness test, of `/ready` and KServe's health routes: every model is loaded, and none (or not
        `handle`) has a worker process that kept crashing and is no longer restarted."""
        if not self.ready:
            return False
        if handle is not None:
            return handle.status == "ready" and not given_up(handle)
        return not any(given_up(served) for served in self.handles.values())

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()

    def handle(self, name: str) -> ModelHandle:
        handle = self.handles.get(name)
        if handle is None and name in self.pipelines:
            raise ModelNotFound(
                f"'{name}' is a pipeline: send its inputs to POST /v1/models/{name}/predict (this route serves models)"
            )
        if handle is None:
            known = ", ".join(sorted([*self.handles, *self.pipelines])) or "nothing yet"
            raise ModelNotFound(f"no model named '{name}'; this server serves: {known}")
        return handle

    def decode(self, handle: ModelHandle, inputs: Sequence[Any]) -> list[Any]:
        """Validate and decode every input before any joins a batch, so a bad one fails only its request."""
        return decode_all(handle.decoder.decode_request, inputs)

    async def infer(
        self,
        name: str,
        inputs: Sequence[Any],
        *,
        deadline: float | None = None,
        client: str = DEFAULT_CLIENT,
        priority: int = 0,
    ) -> list[Any]:
        """Compute one output per input (already passed through `encode_response`), in order.

        `deadline` is a monotonic time; `client` and `priority` decide fair sharing and shedding under load.
        """
        outputs, _ = await self.infer_versioned(name, inputs, deadline=deadline, client=client, priority=priority)
        return outputs

    async def infer_versioned(
        self,
        name: str,
        inputs: Sequence[Any],
        *,
        deadline: float | None = None,
        client: str = DEFAULT_CLIENT,
        priority: int = 0,
    ) -> tuple[list[Any], str]:
        """Like `infer`, also returning the model version that computed the outputs."""
        pipeline = self.pipelines.get(name)
        if pipeline is not None:  # pipelines (issue 7)
            return await pipeline.infer(self, inputs, deadline, client=client, priority=priority), pipeline.version
        handle = self.handle(name)
        payloads = self.decode(handle, inputs)
        return await self._submit(handle, payloads, deadline, client, priority)

    async def infer_decoded(
        self,
        handle: ModelHandle,
        payloads: Sequence[Any],
        *,
        deadline: float | None = None,
        client: str = DEFAULT_CLIENT,
        priority: int = 0,
    ) -> list[Any]:
        """Like `infer`, for inputs that already went through `decode_request`."""
        outputs, _ = await self._submit(handle, payloads, deadline, client, priority)
        return outputs

    async def _submit(
        self, handle: ModelHandle, payloads: Sequence[Any], deadline: float | None, client: str, priority: int
    ) -> tuple[list[Any], str]:
        if not self.accepting:
            raise NotReady("the server is not accepting requests (starting up or shutting down)", retry_after=1.0)
        return await self.compute(handle, payloads, deadline, client, priority)

    async def compute(
        self, handle: ModelHandle, payloads: Sequence[Any], deadline: float | None, client: str, priority: int
    ) -> tuple[list[Any], str]:
        """Queue decoded `payloads` as one request of `client` and return the outputs and the one version that
        computed them all. Admits them whether or not the engine accepts new requests: a pipeline's stages call
        this for a request already inside the pipeline, which a drain lets finish."""
        loop = self._loop or asyncio.get_running_loop()
        batcher = handle.batcher
        for _ in range(_SWAPS_OUTLIVED):
            items = [batcher.new_item(payload, loop, deadline) for payload in payloads]
            batcher.submit(items, client=client, priority=priority)
            if len(items) == 1:
                output = await items[0].future
                return [output], items[0].version
            try:
                outputs = list(await asyncio.gather(*(item.future for item in items)))
            except BaseException:
                for item in items:  # one input failed: drop the rest of this request's queued inputs
                    item.future.cancel()
                raise
            if all(item.version == items[0].version for item in items):
                return outputs, items[0].version
            # A reload swapped versions while this request's inputs were in different batches: one response
            # must come from one version, so compute them again (all on the new one now).
        raise NotReady(
            f"model '{handle.name}' was reloaded over and over during this request; retry it", retry_after=1.0
        )

    async def reload(self, name: str, prototype: Any = None, version: str | None = None) -> str:
        """Hot-reload model `name` without dropping a request (see ModelHandle.reload); return its new version."""
        return await self.handle(name).reload(prototype, version)

    async def rollback(self, name: str) -> str:
        """Serve the previous version of model `name` again; return its version."""
        return await self.handle(name).rollback()

    def models(self) -> list[ModelInfo]:
        infos = [handle.info() for handle in self.handles.values()]
        return infos + [pipeline.info(self) for pipeline in self.pipelines.values()]  # pipelines (issue 7)

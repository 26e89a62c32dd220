"""A pipeline made of a list of steps: stage models (batched), async steps (event loop) and CPU steps (pool).

    Sequential("tag", [Embedder(), AsyncStep(lookup), Classifier()])

Each step takes the previous step's outputs (a model step through its `decode_request`, as over its route). Async
steps run per input on the event loop and call remote services through the pipeline's one shared `RemoteClient`;
CPU steps run per input in a thread or process pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchery.errors import ConfigError, InvalidInput
from batchery.gathering import gather_or_cancel
from batchery.model import decode_all, model_name
from batchery.pipeline.base import Pipeline, stage
from batchery.pipeline.remote import RemoteClient, deadline_scope
from batchery.workers.cpu_pool import CpuPool

if TYPE_CHECKING:
    from batchery.engine import Engine


@dataclass(slots=True)
class AsyncStep:
    """`await fn(payload, remote)` per input, on the event loop; `remote` is the pipeline's shared client."""

    fn: Callable[[Any, RemoteClient], Awaitable[Any]]


@dataclass(slots=True)
class CpuStep:
    """`fn(payload)` per input in a CPU pool: "thread" for GIL-releasing work, "process" for pure Python."""

    fn: Callable[[Any], Any]
    kind: str = "thread"
    workers: int | None = None
    max_queue: int = 1024
    pool: CpuPool = field(init=False)

    def __post_init__(self) -> None:
        self.pool = CpuPool(self.kind, workers=self.workers, max_queue=self.max_queue)


Step = Any  # a stage model, an AsyncStep or a CpuStep


class Sequential(Pipeline):
    """Runs `steps` in order; a request's inputs go through each step together."""

    def __init__(self, name: str, steps: Sequence[Step], *, version: str = "1", remote: RemoteClient | None = None):
        if not steps:
            raise ConfigError(f"pipeline '{name}' has no steps")
        self.name = name
        self.version = version
        self.steps = list(steps)
        self.remote = remote or RemoteClient()
        self._models = [step for step in self.steps if not isinstance(step, AsyncStep | CpuStep)]

    def stages(self) -> list[Any]:
        return self._models

    async def start(self) -> None:
        for step in self.steps:
            if isinstance(step, CpuStep) and step.kind == "process":
                # Spawning takes a second or more: pay it at start-up, not on the first request.
                await asyncio.get_running_loop().run_in_executor(None, step.pool.start)

    async def run(self, engine: Engine, payloads: list[Any], deadline: float | None) -> list[Any]:
        values = payloads
        for step in self.steps:
            if isinstance(step, AsyncStep):
                with deadline_scope(deadline):  # the request's deadline bounds its remote calls too
                    values = await gather_or_cancel(step.fn(value, self.remote) for value in values)
            elif isinstance(step, CpuStep):
                try:
                    values = await step.pool.map(step.fn, values)  # all admitted or none (413 if never)
                except (ValueError, TypeError) as exc:  # the step's verdict on a bad input, as decode_request's
                    raise InvalidInput(f"{getattr(step.fn, '__name__', 'a CPU step')} refused an input: {exc}") from exc
            else:
                values = await stage(engine, model_name(step), self._decoded(engine, step, values), deadline)
        return values

    def _decoded(self, engine: Engine, step: Any, values: list[Any]) -> list[Any]:
        """`values` through the model step's `decode_request`, as over its own route, before any joins a batch.

        The copy serving now decodes them (set up, and the new version after a reload). A bad client input is
        refused by the first step before anything runs; a value refused by a later step is also a 422.
        """
        handle = engine.handles[model_name(step)]
        try:
            return decode_all(handle.decoder.decode_request, values)
        except InvalidInput as exc:
            if step is self.steps[0]:
                raise
            raise InvalidInput(f"step '{handle.name}' refused the previous step's output for {exc.message}") from exc

    async def aclose(self) -> None:
        await self.remote.aclose()
        for step in self.steps:
            if isinstance(step, CpuStep):
                step.pool.close()

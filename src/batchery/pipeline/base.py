"""The pipeline contract, and the fan-out/fan-in helper that sends many children of many requests to a stage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from batchery.batching.scheduler import DEFAULT_CLIENT
from batchery.errors import PayloadTooLarge

if TYPE_CHECKING:
    from batchery.engine import Engine

#: Who sent the pipeline request being run (its client and priority): its stage inputs queue as theirs, so one
#: client's pipeline requests cannot starve another's in a shared stage (set by `PipelineHandle.infer`).
requester: ContextVar[tuple[str, int]] = ContextVar("batchery_pipeline_requester", default=(DEFAULT_CLIENT, 0))


class Pipeline(ABC):
    """Subclass this: list the stage models in `stages`, chain them in `run`.

    Each stage is an ordinary model with its own batcher and lanes, so stage 2 of one request runs while
    stage 1 of the next computes, and a stage's batches mix inputs from many requests.
    """

    #: Route name: `POST /v1/models/{name}/predict`.
    name: str = "pipeline"
    #: Label reported in `/v1/models` and the `X-Model-Version` header.
    version: str = "1"

    @abstractmethod
    def stages(self) -> Sequence[Any]:
        """The stage models, each served (and listed in `/v1/models`) under its own `name`."""

    def decode_request(self, item: Any) -> Any:
        """Turn one input into what `run` takes, on the event loop; raise ValueError or TypeError for 422."""
        return item

    @abstractmethod
    async def run(self, engine: Engine, payloads: list[Any], deadline: float | None) -> list[Any]:
        """Compute one output per payload, in order, calling stages with `stage` or `fan_out`."""

    async def start(self) -> None:
        """Prepare what the pipeline needs beyond its stages (process pools); called once by `Engine.start`."""
        return None

    async def aclose(self) -> None:
        """Release what the pipeline holds (remote clients, pools); called once when the engine stops."""
        return None


async def stage(engine: Engine, name: str, payloads: Sequence[Any], deadline: float | None) -> list[Any]:
    """Send decoded `payloads` to the stage model `name` and return its outputs in order.

    Unlike `Engine.infer`, this does not refuse work while the engine drains: a request that passed the
    pipeline's door is finished, stage by stage.
    """
    if not payloads:
        return []
    handle = engine.handles[name]
    batcher = handle.batcher
    if len(payloads) > batcher.max_queue:  # could never be queued: a 503 would be retried forever
        raise PayloadTooLarge(
            f"this request sends {len(payloads)} inputs at once to stage '{name}', whose queue holds at most "
            f"{batcher.max_queue}; send fewer or smaller inputs per request"
        )
    client, priority = requester.get()
    outputs, _ = await engine.compute(handle, payloads, deadline, client, priority)
    return outputs


async def fan_out(
    engine: Engine, name: str, groups: Sequence[Sequence[Any]], deadline: float | None
) -> list[list[Any]]:
    """Fan-out and fan-in: send every child of every group to stage `name` at once, regroup outputs in order.

    The stage's batcher mixes these children with other requests' children; an empty group stays empty.
    """
    flat = [child for group in groups for child in group]
    if not flat:
        return [[] for _ in groups]
    outputs = await stage(engine, name, flat, deadline)
    regrouped: list[list[Any]] = []
    start = 0
    for group in groups:
        regrouped.append(outputs[start : start + len(group)])
        start += len(group)
    return regrouped

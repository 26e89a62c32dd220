"""How the engine holds a pipeline: resolves its name, decodes its inputs, runs it and lists it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from batchery.batching.scheduler import DEFAULT_CLIENT
from batchery.errors import BatcheryError, ConfigError, InvalidInput, NotReady, PredictError
from batchery.model import decode_all, model_name
from batchery.pipeline.base import Pipeline, requester
from batchery.spec import Served, check_name

if TYPE_CHECKING:
    from batchery.engine import Engine, ModelInfo


class PipelineHandle:
    """One served pipeline; its stage models are ordinary model handles of the same engine."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.name = str(pipeline.name)
        self.version = str(pipeline.version)
        self.stage_names = [model_name(model) for model in pipeline.stages()]
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def infer(
        self,
        engine: Engine,
        inputs: Sequence[Any],
        deadline: float | None,
        *,
        client: str = DEFAULT_CLIENT,
        priority: int = 0,
    ) -> list[Any]:
        """Validate every input first (a bad one fails only its request), then run the pipeline; its stage inputs
        queue as `client`'s at `priority`, as a model's inputs do."""
        if not engine.accepting:
            raise NotReady("the server is not accepting requests (starting up or shutting down)", retry_after=1.0)
        payloads = decode_all(self.pipeline.decode_request, inputs)
        self.in_flight += 1
        self._idle.clear()
        token = requester.set((client, priority))
        try:
            outputs = await self.pipeline.run(engine, payloads, deadline)
        except BatcheryError:
            raise
        except Exception as exc:  # a bug in the pipeline's own code: a JSON 500 that names it, never a bare one
            raise PredictError(f"pipeline '{self.name}' failed: {exc!r}") from exc
        finally:
            requester.reset(token)
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        if len(outputs) != len(payloads):
            raise InvalidInput(f"pipeline '{self.name}' returned {len(outputs)} outputs for {len(payloads)} inputs")
        return outputs

    async def drain(self) -> None:
        """Wait until no request is running through the pipeline."""
        await self._idle.wait()

    def info(self, engine: Engine) -> ModelInfo:
        from batchery.engine import ModelInfo  # the engine imports this module: import at call time

        stages = [engine.handles[name] for name in self.stage_names]
        statuses = {handle.status for handle in stages} or {"ready" if engine.ready else "loading"}
        if statuses == {"ready"}:
            status = "ready"
        elif "failed" in statuses:
            status = "failed"
        else:
            status = "loading" if statuses & {"loading", "ready"} else "pending"
        return ModelInfo(
            name=self.name,
            version=self.version,
            status=status,
            device=",".join(sorted({handle.device for handle in stages})),
            workers=sum(handle.workers for handle in stages),
            max_batch_size=max((handle.max_batch_size for handle in stages), default=1),
            max_delay_ms=max((handle.max_delay_ms for handle in stages), default=0.0),
            batching="pipeline: " + " -> ".join(self.stage_names),
            queued=sum(handle.batcher.queued for handle in stages),
            load_seconds=None,
        )


def split_pipelines(entries: Sequence[Any]) -> tuple[list[Any], dict[str, PipelineHandle]]:
    """Separate pipelines from models: returns every model to load (stage models included) and the pipelines."""
    models: list[Any] = []
    pipelines: dict[str, PipelineHandle] = {}
    for entry in entries:
        pipeline = entry.model if isinstance(entry, Served) else entry
        if not isinstance(pipeline, Pipeline):
            models.append(entry)
            continue
        handle = PipelineHandle(pipeline)
        if isinstance(entry, Served):
            _refuse_model_settings(entry, pipeline)
            if entry.spec.name:  # a config file may rename it
                handle.name = entry.spec.name
            if entry.spec.version:
                handle.version = entry.spec.version
        check_name(handle.name)
        if handle.name in pipelines:
            raise ConfigError(f"two pipelines are named '{handle.name}'; give one a different `name`")
        pipelines[handle.name] = handle
        models.extend(pipeline.stages())
    names = {model_name(model.model if isinstance(model, Served) else model) for model in models}
    clash = names & set(pipelines)
    if clash:
        raise ConfigError(f"a pipeline and a model are both named {sorted(clash)}; rename one")
    return models, pipelines


def _refuse_model_settings(entry: Served, pipeline: Pipeline) -> None:
    """A pipeline has no batcher or workers of its own: settings meant for a model would silently do nothing."""
    ignored = sorted(
        f.name
        for f in dataclasses.fields(entry.spec)
        if f.name not in ("name", "version") and getattr(entry.spec, f.name) is not None
    )
    if ignored:
        stages = ", ".join(model_name(stage) for stage in pipeline.stages()) or "none"
        raise ConfigError(
            f"pipeline '{entry.spec.name or pipeline.name}' takes only name and version, not {', '.join(ignored)}: "
            f"batching, workers and devices belong to its stage models ({stages}); set them with "
            "BATCHERY_MODEL_<STAGE>_<SETTING>"
        )


async def drain_pipelines(pipelines: Iterable[PipelineHandle], stage_drains: Sequence[Awaitable[None]]) -> None:
    """Wait for the pipelines' requests first (they still feed their stages), then for the stages' batchers."""
    await asyncio.gather(*(pipeline.drain() for pipeline in pipelines))
    await asyncio.gather(*stage_drains)

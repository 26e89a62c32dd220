"""Pipelines: several models (stages) served as one route, each stage with its own batcher and lanes.

A pipeline is passed to `Engine` beside ordinary models; its stage models are loaded as ordinary handles,
so per-model metrics are per-stage metrics, and `Engine.infer(pipeline_name, ...)` runs the pipeline.
"""

from batchery.pipeline.base import Pipeline, fan_out
from batchery.pipeline.remote import RemoteClient
from batchery.pipeline.sequential import AsyncStep, CpuStep, Sequential

__all__ = ["AsyncStep", "CpuStep", "Pipeline", "RemoteClient", "Sequential", "fan_out"]

"""Prometheus metrics for one app, in its own `CollectorRegistry`, fed by the engine's `Observer` hook.

Observations are plain counters and bucket arrays updated on the event loop (no locks, O(1) per request,
O(items) per batch); prometheus-client only renders them at scrape time. Gauges (queue depth, model load
time, GPU) are read when scraped. The metric names are an interface: dashboards and autoscalers use them.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from batchery.batching.records import BatchResult
from batchery.errors import ConfigError
from batchery.gpu import NVML

if TYPE_CHECKING:
    from batchery.engine import Engine

log = logging.getLogger("batchery.metrics")

#: Seconds: from half a millisecond (a cache hit) to ten seconds (a large batch on a slow model).
TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)

NAMES = (
    "batchery_requests_total",
    "batchery_request_duration_seconds",
    "batchery_queue_wait_seconds",
    "batchery_compute_seconds",
    "batchery_batch_size",
    "batchery_queue_depth",
    "batchery_in_flight_requests",
    "batchery_cache_events_total",
    "batchery_rejected_total",
    "batchery_model_load_seconds",
    "batchery_gpu_utilization_ratio",
    "batchery_gpu_memory_used_bytes",
    "batchery_model_reloads_total",
    "batchery_oom_events_total",
    "batchery_batch_cap",
    "batchery_worker_restarts_total",
)


def model_label(engine: Engine, name: str) -> str:
    """The `model` label for a request naming `name`: the name when the engine serves it as a model or a pipeline,
    else empty, so names a client makes up never become label values (series)."""
    return name if name in ServedNames(engine) else ""


class ServedNames:
    """The names `model_label` keeps, as a live container (a reload or a new model needs no update)."""

    __slots__ = ("engine",)

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __contains__(self, name: object) -> bool:
        return name in self.engine.handles or name in self.engine.pipelines


class Histogram:
    """Bucket counts and a sum; `observe` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left finds the first bound >= value: Prometheus buckets are "less than or equal".
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return buckets


class Metrics:
    """Every batchery metric of one app. An `Observer`: pass it to `Engine(..., observer=metrics)`."""

    def __init__(self) -> None:
        try:
            from prometheus_client import CollectorRegistry
        except ImportError as exc:
            raise ConfigError(
                "metrics need prometheus-client: pip install prometheus-client, or set metrics=off"
            ) from exc
        self.engine: Engine | None = None
        self.in_flight = 0
        self.requests: dict[tuple[str, str, int], int] = {}
        self.durations: dict[tuple[str, str], Histogram] = {}
        self.queue_wait: dict[str, Histogram] = {}
        self.compute: dict[str, Histogram] = {}
        self.batch_size: dict[str, Histogram] = {}
        self.cache_events: dict[tuple[str, str, str], int] = {}
        self.rejections: dict[tuple[str, str], int] = {}
        self._gpu = _Gpu()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def watch(self, engine: Engine) -> None:
        """Read queue depths and load times from `engine` at scrape time."""
        self.engine = engine

    # The Observer protocol, called by the engine on the event loop.
    def batch_done(self, model: str, result: BatchResult) -> None:
        batch = result.batch
        wait = self.queue_wait.get(model)
        if wait is None:
            wait = self.queue_wait[model] = Histogram(TIME_BUCKETS)
            self.compute[model] = Histogram(TIME_BUCKETS)
            self.batch_size[model] = Histogram(SIZE_BUCKETS)
        formed_at = batch.formed_at
        for item in batch.items:
            wait.observe(formed_at - item.enqueued_at)
        self.compute[model].observe(result.compute_seconds)
        self.batch_size[model].observe(len(batch.items))

    def rejected(self, model: str, reason: str, count: int) -> None:
        key = (model, reason)
        self.rejections[key] = self.rejections.get(key, 0) + count

    # Called by the web layer.
    def request_done(self, model: str, route: str, status: int, seconds: float) -> None:
        key = (model, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        durations = self.durations.get((model, route))
        if durations is None:
            durations = self.durations[(model, route)] = Histogram(TIME_BUCKETS)
        durations.observe(seconds)

    def cache_event(self, model: str, backend: str, event: str) -> None:
        """`event` is "hit", "miss" or "error" (the backend failed or was bypassed)."""
        key = (model, backend, event)
        self.cache_events[key] = self.cache_events.get(key, 0) + 1

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Collector:
    """Turns the plain counters into metric families when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m = self.metrics
        requests = CounterMetricFamily(
            "batchery_requests", "HTTP requests answered", labels=("model", "route", "status")
        )
        for (model, route, status), count in m.requests.items():
            requests.add_metric((model, route, str(status)), count)
        yield requests
        yield _histograms(
            HistogramMetricFamily, "batchery_request_duration_seconds", "Time from request to response",
            ("model", "route"), m.durations,
        )  # fmt: skip
        for name, text, source in (
            ("batchery_queue_wait_seconds", "Time an input waited in the queue before its batch formed", m.queue_wait),
            ("batchery_compute_seconds", "Time a lane took to compute one batch", m.compute),
            ("batchery_batch_size", "Inputs per computed batch", m.batch_size),
        ):
            yield _histograms(HistogramMetricFamily, name, text, ("model",), {(k,): v for k, v in source.items()})
        depth = GaugeMetricFamily("batchery_queue_depth", "Inputs waiting in the model's queue", labels=("model",))
        load = GaugeMetricFamily("batchery_model_load_seconds", "Model load and warm-up time", labels=("model",))
        reloads = CounterMetricFamily(
            "batchery_model_reloads", "Hot reloads and rollbacks, by result", labels=("model", "result")
        )
        ooms = CounterMetricFamily(
            "batchery_oom_events", "Batches that ran out of memory and were split", labels=("model",)
        )
        cap = GaugeMetricFamily(
            "batchery_batch_cap", "Effective batch size cap (lowered by out-of-memory)", labels=("model",)
        )
        restarts = CounterMetricFamily(
            "batchery_worker_restarts", "Worker processes restarted after they died", labels=("model",)
        )
        if m.engine is not None:
            from batchery.workers.cpu_pool import restarts as pool_restarts
            from batchery.workers.process import restarts as worker_restarts

            for handle in m.engine.handles.values():
                restarts.add_metric((handle.name,), worker_restarts(handle))
                depth.add_metric((handle.name,), handle.batcher.queued)
                if handle.load_seconds is not None:
                    load.add_metric((handle.name,), handle.load_seconds)
                reloads.add_metric((handle.name, "ok"), handle.reloads)
                reloads.add_metric((handle.name, "failed"), handle.reload_failures)
                ooms.add_metric((handle.name,), handle.batcher.stats.oom_events)
                cap.add_metric((handle.name,), handle.batcher.cap.value)
            for pipeline in m.engine.pipelines.values():  # their CPU steps' process pools
                restarts.add_metric((pipeline.name,), pool_restarts(pipeline.pipeline))
        yield depth
        yield load
        yield reloads
        yield ooms
        yield cap
        yield restarts
        yield GaugeMetricFamily("batchery_in_flight_requests", "HTTP requests being answered", value=m.in_flight)
        cache = CounterMetricFamily(
            "batchery_cache_events", "Response cache look-ups: hit, miss or error", labels=("model", "backend", "event")
        )
        for labels, count in m.cache_events.items():
            cache.add_metric(labels, count)
        yield cache
        rejected = CounterMetricFamily(
            "batchery_rejected",
            "Refused or dropped inputs (engine) or requests (web layer)",
            labels=("model", "reason"),
        )
        for (model, reason), total in m.rejections.items():
            rejected.add_metric((model, reason), total)
        yield rejected
        yield from m._gpu.collect(GaugeMetricFamily)


def _histograms(family: Any, name: str, text: str, labels: tuple[str, ...], source: dict[Any, Histogram]) -> Any:
    metric = family(name, text, labels=labels)
    for label_values, histogram in source.items():
        metric.add_metric(label_values, histogram.cumulative(), histogram.total)
    return metric


class _Gpu:
    """GPU gauges from NVML readings (gpu.py); no GPU means no GPU metrics."""

    def collect(self, gauge: Any) -> Iterator[Any]:
        readings = NVML.readings()
        if not readings:
            return
        utilization = gauge("batchery_gpu_utilization_ratio", "GPU busy time share", labels=("device",))
        memory = gauge("batchery_gpu_memory_used_bytes", "GPU memory in use", labels=("device",))
        for reading in readings:
            utilization.add_metric((str(reading.index),), reading.utilization)
            memory.add_metric((str(reading.index),), float(reading.memory_used_bytes))
        yield utilization
        yield memory

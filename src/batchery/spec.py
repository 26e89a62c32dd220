"""Per-model serving settings: the model's own attributes, overridden by a config file or BATCHERY_MODEL_* variables.

The user's object is never modified: the handle reads a resolved `ModelSpec` instead of the model's attributes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from batchery import cores
from batchery.errors import ConfigError

#: Settings a config file or environment variable may override per model, with their types.
OVERRIDABLE: dict[str, type] = {
    "name": str,
    "version": str,
    "max_batch_size": int,
    "max_delay_ms": float,
    "batching": str,
    "workers": int,
    "max_queue_per_worker": int,
    "max_queue_wait_ms": float,
    "max_batch_cost": int,
    "devices": str,
    "workers_per_device": int,
    "threads_per_worker": int,
}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How one model is served."""

    name: str | None = None
    version: str | None = None
    max_batch_size: int | None = None
    max_delay_ms: float | None = None
    batching: str | None = None
    workers: int | None = None
    max_queue_per_worker: int | None = None
    max_queue_wait_ms: float | None = None
    max_batch_cost: int | None = None
    #: "auto", "cpu", "cuda", "cuda:1", or several separated by commas.
    devices: str | None = None
    #: Lanes per device; with several devices the lanes are spread over them.
    workers_per_device: int | None = None
    #: Intra-op threads of each CPU worker (its share of the cores); default: cores // workers.
    threads_per_worker: int | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str) -> ModelSpec:
        unknown = set(values) - set(OVERRIDABLE)
        if unknown:
            raise ConfigError(
                f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(OVERRIDABLE)}"
            )
        parsed: dict[str, Any] = {}
        for key, value in values.items():
            kind = OVERRIDABLE[key]
            if key == "devices" and isinstance(value, list):
                value = ",".join(str(v) for v in value)
            try:
                parsed[key] = kind(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: {key} must be a {kind.__name__}, not {value!r}") from exc
        return cls(**parsed)

    def merged(self, other: ModelSpec) -> ModelSpec:
        """This spec with `other`'s set values taking precedence."""
        changes = {
            f.name: getattr(other, f.name) for f in dataclasses.fields(other) if getattr(other, f.name) is not None
        }
        return dataclasses.replace(self, **changes)


@dataclass(slots=True)
class Served:
    """A model with its serving settings, and how to import it again for a hot reload (models from files)."""

    model: Any
    spec: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    reimport: Callable[[], Any] | None = None
    #: Files whose change reloads the model when the server watches files (its source file, for one).
    files: tuple[str, ...] = ()


def from_env(name: str, env: Mapping[str, str] | None = None) -> ModelSpec:
    """Overrides from `BATCHERY_MODEL_<NAME>_<SETTING>` (name upper-cased, `-` and `.` as `_`)."""
    env = os.environ if env is None else env
    prefix = "BATCHERY_MODEL_" + name.upper().replace("-", "_").replace(".", "_") + "_"
    values = {key[len(prefix) :].lower(): value for key, value in env.items() if key.startswith(prefix)}
    return ModelSpec.from_mapping(values, f"environment ({prefix}*)") if values else ModelSpec()


def resolve_devices(devices: str) -> list[str]:
    """Concrete devices for a devices setting; "auto" is CUDA where a runtime sees a GPU, else the CPU."""
    resolved: list[str] = []
    for device in (part.strip() for part in devices.split(",") if part.strip()):
        if device == "auto":
            resolved.append("cuda" if cuda_available() else "cpu")
        elif device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
            resolved.append(device)
        else:
            raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N (several separated by commas)")
    return resolved or ["cpu"]


def cuda_available() -> bool:
    """True when ONNX Runtime's CUDA provider or torch can use a GPU; never imports torch just to ask."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return True
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers() and _nvidia_device_present()


def _nvidia_device_present() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")


def check_thread_budget(name: str, cpu_workers: int, threads_per_worker: int, available: int | None = None) -> None:
    """Refuse settings whose CPU workers x threads oversubscribe the cores this process may use."""
    available = available or cores.available()
    if cpu_workers * threads_per_worker > available:
        raise ConfigError(
            f"model '{name}': {cpu_workers} CPU worker(s) x {threads_per_worker} thread(s) each = "
            f"{cpu_workers * threads_per_worker} threads, but this process may use {available} core(s). "
            "Oversubscribed runtimes slow down by orders of magnitude: lower workers or threads_per_worker"
        )

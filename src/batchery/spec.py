"""Per-model serving settings: the model's own attributes, overridden by a config file or BATCHERY_MODEL_* variables.

The user's object is never modified: the handle reads a resolved `ModelSpec` instead of the model's attributes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batchery import cores
from batchery.errors import ConfigError

log = logging.getLogger("batchery.engine")

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


#: Settings that must be at least 1 where set: a queue of 0 refuses every request, -1 threads is no thread count.
_AT_LEAST_ONE = (
    "max_batch_size",
    "workers",
    "max_queue_per_worker",
    "max_batch_cost",
    "workers_per_device",
    "threads_per_worker",
)


def _typed(key: str, value: Any, where: str) -> Any:
    """`value` as the type `key` takes: text (from the environment) is parsed, anything else must already be that
    type, so 2.7 never becomes 2, ["x"] never becomes a name and true never becomes 1."""
    kind = OVERRIDABLE[key]
    if isinstance(value, str) and kind is not str:
        try:
            return kind(value)
        except ValueError:
            pass
    elif isinstance(value, bool):
        pass
    elif isinstance(value, kind):
        return value
    elif kind is int and isinstance(value, numbers.Integral):  # numpy's integers, say
        return int(value)
    elif kind is float and isinstance(value, numbers.Real):
        return float(value)
    article = "an integer" if kind is int else "a number" if kind is float else "a string"
    hint = ' (quote it: "...")' if kind is str and isinstance(value, (int, float)) else ""
    raise ConfigError(f"{where}: {key} must be {article}, not {value!r}{hint}")


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

    def __post_init__(self) -> None:
        if self.name is not None:
            check_name(self.name)
        if self.devices is not None:
            for device in _device_list(self.devices):
                _check_device(device)
        for key in _AT_LEAST_ONE:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be >= 1, not {value!r}")
        for key in ("max_delay_ms", "max_queue_wait_ms"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < math.inf:  # also refuses NaN and infinity
                raise ConfigError(f"{key} must be a finite number >= 0, not {value!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str) -> ModelSpec:
        """A spec from a config file's entry (typed values) or the environment (strings, parsed strictly)."""
        unknown = set(values) - set(OVERRIDABLE)
        if unknown:
            raise ConfigError(
                f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(OVERRIDABLE)}"
            )
        parsed: dict[str, Any] = {}
        for key, value in values.items():
            if key == "devices" and isinstance(value, list) and all(isinstance(v, str) for v in value):
                value = ",".join(value)
            parsed[key] = _typed(key, value, where)
        try:
            return cls(**parsed)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}") from exc

    @classmethod
    def from_attributes(cls, model: Any, overridden: ModelSpec | None = None) -> ModelSpec:
        """The settings `model`'s class sets as attributes, checked as strictly as a config file's: 2.5 never
        becomes 2, 0 workers is refused, not taken for "unset". None (and an empty name) stand for unset; those
        `overridden` sets are not read at all. The name and version keep their own, looser reading (a number is
        taken as its text)."""
        values = {
            key: getattr(model, key)
            for key in OVERRIDABLE
            if getattr(model, key, None) not in (None, "") and (overridden is None or getattr(overridden, key) is None)
        }
        for key in ("name", "version"):
            if key in values:
                values[key] = str(values[key])
        return cls.from_mapping(values, f"model class {type(model).__name__}")

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
    """Overrides from `BATCHERY_MODEL_<NAME>_<SETTING>` (name upper-cased, `-` and `.` as `_`).

    A variable belongs to the model named by everything before its setting, so with models `a` and `a-b`,
    `BATCHERY_MODEL_A_B_WORKERS` is `a-b`'s alone (the longest name wins), not an unknown setting of `a`.
    """
    env = os.environ if env is None else env
    prefix = _env_prefix(name)
    values: dict[str, str] = {}
    for key, value in env.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :].lower()
        setting = _setting_suffix(rest)
        if setting is None:
            values[rest] = value  # no setting at all: refused below as unknown
        elif setting == rest:
            values[rest] = value
        # else: `rest` is `<more name>_<setting>`, a variable of a model whose name is longer than this one's.
    return ModelSpec.from_mapping(values, f"environment ({prefix}*)") if values else ModelSpec()


def check_model_env(names: Iterable[str], env: Mapping[str, str] | None = None) -> None:
    """Refuse a `BATCHERY_MODEL_*` variable that starts like a served model's but names none of its settings.

    `from_env` leaves `<model>_<more>_<setting>` to a model with a longer name; when no served model has that
    name, the variable is a typo (`BATCHERY_MODEL_M_MAX_WORKERS`), not somebody else's. Variables that match no
    served model at all are left alone: a shared environment may configure other servers too.
    """
    env = os.environ if env is None else env
    prefixes = {name: _env_prefix(name) for name in names}
    for key in env:
        owners = [name for name, prefix in prefixes.items() if key.startswith(prefix)]
        if not owners:
            continue
        owner = max(owners, key=lambda name: len(prefixes[name]))
        sharing = sorted(name for name in owners if prefixes[name] == prefixes[owner])
        if len(sharing) > 1:  # `a-b`, `a_b` and `a.b` all read BATCHERY_MODEL_A_B_*: whose is it?
            raise ConfigError(
                f"{key} is read by models {' and '.join(repr(name) for name in sharing)} alike (their names differ "
                f"only in '-', '_' or '.'); rename one of them to configure them apart"
            )
        rest = key[len(prefixes[owner]) :].lower()
        if rest not in OVERRIDABLE:
            raise ConfigError(
                f"{key} names no setting of model '{owner}' (and no served model is named after it); "
                f"settings: {', '.join(sorted(OVERRIDABLE))}"
            )


def _env_prefix(name: str) -> str:
    """`BATCHERY_MODEL_<NAME>_`: the model's name upper-cased, `-` and `.` as `_`."""
    return "BATCHERY_MODEL_" + name.upper().replace("-", "_").replace(".", "_") + "_"


def _setting_suffix(rest: str) -> str | None:
    """The longest per-model setting that `rest` ends with (whole words only), or None."""
    matches = [key for key in OVERRIDABLE if rest == key or rest.endswith("_" + key)]
    return max(matches, key=len, default=None)


def resolve_devices(devices: str) -> list[str]:
    """Concrete devices for a devices setting; "auto" is CUDA where a runtime sees a GPU, else the CPU."""
    resolved: list[str] = []
    for device in _device_list(devices):
        _check_device(device)
        resolved.append(("cuda" if cuda_available() else "cpu") if device == "auto" else device)
    if any(device != "cpu" for device in resolved) and not _nvidia_device_present():
        # Not refused: a model may reach a GPU some other way; but nobody should learn it from the latency.
        log.warning(
            "devices %r asks for CUDA, but this machine shows no NVIDIA device (no /dev/nvidiactl): ONNX Runtime "
            "and torch will compute on the CPU, one single-threaded worker per device listed",
            devices,
        )
    return resolved or ["cpu"]


def _device_list(devices: str) -> list[str]:
    return [part.strip() for part in devices.split(",") if part.strip()]


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N (several separated by commas)")


def check_name(name: str) -> None:
    """Refuse a model name no route can reach: empty, or holding a `/` or a control character."""
    if not name.strip() or "/" in name or not name.isprintable():
        raise ConfigError(
            f"name {name!r} cannot be a model's name: it is the path segment of /v1/models/{{name}}/predict, so it "
            "must be non-empty, printable and free of '/'; use letters, digits, '-', '_' or '.'"
        )


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

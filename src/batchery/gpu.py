"""GPU readings through NVML (the `nvidia-ml-py` package), for metrics and `/v1/models`.

Loaded on first use; no package, no driver or no GPU simply means no readings, never an error.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("batchery.gpu")


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One device's state at the time it was read."""

    index: int
    utilization: float  # share of the last sample period the GPU was busy, 0..1
    memory_used_bytes: int
    memory_total_bytes: int


class Nvml:
    """Reads every NVIDIA GPU of the machine; `readings()` is empty where there is none."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._available: bool | None = None

    def readings(self) -> list[GpuReading]:
        if self._available is None:
            self._available = self._init()
        if not self._available:
            return []
        nvml = self._nvml
        found = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                device = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(device)
                busy = nvml.nvmlDeviceGetUtilizationRates(device).gpu / 100.0
                found.append(GpuReading(index, busy, int(memory.used), int(memory.total)))
        except Exception as exc:  # a driver hiccup must never fail a scrape or a model listing
            log.debug("NVML query failed: %r", exc)
            return []
        return found

    def _init(self) -> bool:
        try:
            pynvml = importlib.import_module("pynvml")  # from nvidia-ml-py, which has no type hints
            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() < 1:
                return False
        except Exception:  # no package, no driver or no GPU: simply no readings
            return False
        self._nvml = pynvml
        return True


#: The process-wide reader.
NVML = Nvml()


def device_index(device: str) -> int | None:
    """The GPU index of a device name: "cuda" is 0, "cuda:1" is 1, anything else None."""
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return None

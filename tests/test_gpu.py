"""GPU readings: none and no error on this CPU machine; parsed per device where NVML reports GPUs."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from batchery import gpu
from batchery.engine import Engine
from batchery.spec import ModelSpec, Served
from batchery.testing import EchoModel


def test_no_gpu_means_no_readings_and_no_error() -> None:
    assert gpu.Nvml().readings() == [] or all(r.memory_total_bytes > 0 for r in gpu.Nvml().readings())
    handle = Engine([EchoModel()], cores_available=2).handle("echo")
    assert handle.info().gpus is None  # a CPU model reports no GPU


def test_device_names_map_to_gpu_indexes() -> None:
    assert gpu.device_index("cuda") == 0
    assert gpu.device_index("cuda:3") == 3
    assert gpu.device_index("cpu") is None


def fake_nvml() -> Any:
    """What the NVML bindings answer on a machine with two GPUs (this one has none to ask)."""
    module = types.ModuleType("pynvml")
    devices = {0: (0.25, 1_000, 16_000), 1: (0.75, 5_000, 16_000)}
    module.nvmlInit = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda index: index  # type: ignore[attr-defined]
    module.nvmlDeviceGetUtilizationRates = lambda i: types.SimpleNamespace(gpu=devices[i][0] * 100)  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda i: types.SimpleNamespace(used=devices[i][1], total=devices[i][2])  # type: ignore[attr-defined]
    return module


def test_a_model_on_a_gpu_lists_that_gpus_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    monkeypatch.setattr(gpu, "NVML", gpu.Nvml())
    monkeypatch.setattr("batchery.handle.NVML", gpu.NVML)
    handle = Engine([Served(EchoModel(), ModelSpec(devices="cuda:1"))], cores_available=2).handle("echo")
    (reading,) = handle.info().gpus or []
    assert reading == gpu.GpuReading(index=1, utilization=0.75, memory_used_bytes=5_000, memory_total_bytes=16_000)


def test_cuda_n_runs_on_gpu_n_and_the_cpu_stays_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    from batchery.runtimes import onnx_impl

    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: both)
    assert onnx_impl.providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert onnx_impl.providers("cuda") == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert onnx_impl.providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_impl.providers("cuda:1") == ["CPUExecutionProvider"]


def test_asking_for_cuda_without_a_gpu_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from batchery import spec

    monkeypatch.setattr(spec, "_nvidia_device_present", lambda: False)
    with caplog.at_level("WARNING", logger="batchery.engine"):
        assert spec.resolve_devices("cpu,auto") == ["cpu", "cpu"]
        assert not caplog.records
        assert spec.resolve_devices("cuda:1") == ["cuda:1"]
    assert "shows no NVIDIA device" in caplog.text

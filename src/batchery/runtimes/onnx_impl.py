"""ONNX Runtime sessions sized to the cores a lane is granted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from batchery.errors import ModelLoadError


def opt_out_of_telemetry() -> None:
    """Before onnxruntime is imported: its telemetry would write a database under $HOME/.cache (issue 11)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def load(path: Path | str, *, threads: int, device: str = "cpu") -> Any:
    """An InferenceSession with `threads` intra-op threads.

    A one-thread session has no pool; a wider one lets its pool threads spin between operators (ONNX Runtime's
    default): waking them through the OS for each of a transformer's ~100 operators costs about 0.5 ms a
    batch-1 call here, and they go back to sleep soon after the call.
    """
    opt_out_of_telemetry()
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelLoadError("ONNX models need onnxruntime: `pip install onnxruntime`") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads > 1 else "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers(device))


def providers(device: str) -> list[Any]:
    """Execution providers for `device`: CUDA first (on GPU N for "cuda:N") where asked for and installed, the CPU
    always last."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]

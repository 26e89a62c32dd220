"""Per-model settings: overrides from files and environment, devices, and the CPU thread budget."""

from __future__ import annotations

import pytest

from batchery.engine import Engine
from batchery.errors import ConfigError
from batchery.spec import ModelSpec, Served, from_env, resolve_devices
from batchery.testing import EchoModel


def test_environment_overrides_a_model_setting() -> None:
    spec = from_env("all-minilm-l6-v2", {"BATCHERY_MODEL_ALL_MINILM_L6_V2_MAX_BATCH_SIZE": "8", "OTHER": "1"})
    assert spec == ModelSpec(max_batch_size=8)
    with pytest.raises(ConfigError, match="unknown setting"):
        from_env("echo", {"BATCHERY_MODEL_ECHO_SPEED": "fast"})


def test_spec_overrides_without_touching_the_users_object(monkeypatch: pytest.MonkeyPatch) -> None:
    model = EchoModel()
    engine = Engine([Served(model, ModelSpec(name="renamed", max_batch_size=3))], cores_available=2)
    handle = engine.handle("renamed")
    assert handle.max_batch_size == 3
    assert model.max_batch_size == 64
    assert "name" not in vars(model)
    monkeypatch.setenv("BATCHERY_MODEL_RENAMED_MAX_DELAY_MS", "9")
    assert (
        Engine([Served(EchoModel(), ModelSpec(name="renamed"))], cores_available=2).handle("renamed").max_delay_ms == 9
    )


def test_devices_resolve_and_auto_falls_back_to_the_cpu_without_a_gpu() -> None:
    assert resolve_devices("cpu") == ["cpu"]
    assert resolve_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    assert resolve_devices("auto") in (["cpu"], ["cuda"])
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_devices("tpu")


def test_workers_are_spread_over_devices() -> None:
    engine = Engine([Served(EchoModel(), ModelSpec(devices="cuda:0,cuda:1", workers_per_device=2))], cores_available=2)
    handle = engine.handle("echo")
    assert handle.workers == 4
    assert handle.lane_devices == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]


def test_an_oversubscribing_setting_is_refused_with_the_arithmetic() -> None:
    with pytest.raises(ConfigError) as info:
        Engine([Served(EchoModel(), ModelSpec(workers=2, threads_per_worker=2, devices="cpu"))], cores_available=2)
    assert "2 CPU worker(s) x 2 thread(s) each = 4 threads, but this process may use 2 core(s)" in info.value.message


def test_default_threads_share_the_cores_among_workers() -> None:
    handle = Engine([Served(EchoModel(), ModelSpec(devices="cpu"))], cores_available=8).handle("echo")
    assert handle.workers == 8
    assert handle.threads_per_worker == 1
    handle = Engine([Served(EchoModel(), ModelSpec(devices="cpu", workers=2))], cores_available=8).handle("echo")
    assert handle.threads_per_worker == 4

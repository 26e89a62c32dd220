"""Per-model settings: overrides from files and environment, devices, and the CPU thread budget."""

from __future__ import annotations

import pytest

from batchery.engine import Engine
from batchery.errors import ConfigError
from batchery.spec import OVERRIDABLE, ModelSpec, Served, from_env, resolve_devices
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


def test_a_variable_belongs_to_the_longest_model_name_it_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"BATCHERY_MODEL_A_B_MAX_BATCH_SIZE": "3", "BATCHERY_MODEL_A_MAX_DELAY_MS": "7"}
    assert from_env("a", env) == ModelSpec(max_delay_ms=7)
    assert from_env("a-b", env) == ModelSpec(max_batch_size=3)
    # A model name that ends like a setting still gets only its own variables.
    env = {"BATCHERY_MODEL_A_WORKERS": "1", "BATCHERY_MODEL_A_WORKERS_MAX_BATCH_SIZE": "5"}
    assert from_env("a", env) == ModelSpec(workers=1)
    assert from_env("a-workers", env) == ModelSpec(max_batch_size=5)
    with pytest.raises(ConfigError, match="unknown setting"):
        from_env("a", {"BATCHERY_MODEL_A_B_SPEED": "fast"})
    monkeypatch.setenv("BATCHERY_MODEL_A_B_MAX_BATCH_SIZE", "3")
    served = [Served(EchoModel(), ModelSpec(name="a")), Served(EchoModel(), ModelSpec(name="a-b"))]
    engine = Engine(served, cores_available=2)
    assert engine.handle("a-b").max_batch_size == 3
    assert engine.handle("a").max_batch_size == EchoModel.max_batch_size


def test_no_setting_name_ends_with_another_so_variables_split_one_way() -> None:
    # from_env reads the setting off the end of a variable's name; "x_workers" beside "workers" would be ambiguous.
    for setting in OVERRIDABLE:
        assert not [other for other in OVERRIDABLE if setting.endswith("_" + other)]


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("MAX_BATCH_SIZE", "2.7", "max_batch_size must be an integer, not '2.7'"),
        ("MAX_QUEUE_PER_WORKER", "0", "max_queue_per_worker must be >= 1, not 0"),
        ("THREADS_PER_WORKER", "-1", "threads_per_worker must be >= 1, not -1"),
        ("THREADS_PER_WORKER", "0", "threads_per_worker must be >= 1, not 0"),
        ("MAX_QUEUE_WAIT_MS", "nan", "max_queue_wait_ms must be a finite number >= 0, not nan"),
        ("MAX_DELAY_MS", "inf", "max_delay_ms must be a finite number >= 0, not inf"),
    ],
)
def test_out_of_range_variables_are_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(f"BATCHERY_MODEL_ECHO_{variable}", value)
    with pytest.raises(ConfigError) as info:
        Engine([EchoModel()], cores_available=2)
    assert info.value.message == f"environment (BATCHERY_MODEL_ECHO_*): {says}"


def test_specs_in_python_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="max_queue_per_worker must be >= 1, not 0"):
        ModelSpec(max_queue_per_worker=0)
    with pytest.raises(ConfigError, match="max_delay_ms must be a finite number >= 0"):
        ModelSpec(max_delay_ms=-1.0)
    assert ModelSpec(threads_per_worker=1, max_queue_per_worker=1, max_delay_ms=0.0).threads_per_worker == 1


@pytest.mark.parametrize(("attribute", "value"), [("max_queue_per_worker", 0), ("threads_per_worker", -1)])
def test_limits_set_as_class_attributes_are_checked_too(attribute: str, value: int) -> None:
    model = EchoModel()
    setattr(model, attribute, value)
    with pytest.raises(ConfigError, match=f"{attribute} must be >= 1, not {value}"):
        Engine([model], cores_available=2)


def test_a_mistyped_variable_of_a_served_model_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHERY_MODEL_ECHO_MAX_WORKERS", "4")  # no setting max_workers, no model echo-max
    with pytest.raises(ConfigError, match="BATCHERY_MODEL_ECHO_MAX_WORKERS names no setting of model 'echo'"):
        Engine([EchoModel()], cores_available=2)
    monkeypatch.delenv("BATCHERY_MODEL_ECHO_MAX_WORKERS")
    monkeypatch.setenv("BATCHERY_MODEL_OTHER_WORKERS", "4")  # another server's model: left alone
    Engine([EchoModel()], cores_available=2)

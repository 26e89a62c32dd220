"""Configuration and multi-model serving, as a hostile reviewer drives them: real processes and real servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import batchery
from batchery import config_file
from batchery.errors import ConfigError
from batchery.spec import ModelSpec, Served, from_env
from batchery.testing import running_server
from batchery.workers.process import ProcessModel


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`batchery ARGS` as a user runs it; only for commands that end by themselves (errors, --version)."""
    return subprocess.run(
        [sys.executable, "-m", "batchery.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def test_batchery_version_prints_the_version_and_exits_0() -> None:
    done = cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"batchery {batchery.__version__}"


@pytest.mark.parametrize("kind", ["folder", "latin-1"])
def test_a_config_file_that_cannot_be_read_stops_with_one_line_not_a_traceback(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "batchery.toml"
    if kind == "folder":
        path.mkdir()
    else:  # an editor that saved a comment in Latin-1
        path.write_bytes(b'[[models]]\ntarget = "batchery.testing:EchoModel"\n# caf\xe9\n')
    done = cli("serve", "--port", "0", str(path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("batchery: ")
    assert str(path) in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_config_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "batchery.toml"
    path.write_bytes(b'\xef\xbb\xbf[server]\nmax_items = 3\n[[models]]\ntarget = "batchery.testing:EchoModel"\n')
    server_settings, entries = config_file.load(path)
    assert server_settings == {"max_items": 3}
    assert len(entries) == 1


@pytest.mark.parametrize("name", ["", " ", "a/b", "tab\there"])
def test_a_model_name_that_no_route_can_reach_is_refused(tmp_path: Path, name: str) -> None:
    # "a/b" was served and listed by GET /v1/models, but POST /v1/models/a/b/predict is a 404; "" was ignored.
    path = tmp_path / "batchery.toml"
    quoted = name.replace("\t", "\\t")
    path.write_text(f'[[models]]\ntarget = "batchery.testing:EchoModel"\nname = "{quoted}"\n')
    with pytest.raises(ConfigError) as info:
        config_file.load(path)
    assert f"{path}: models[0]: name {name!r}" in info.value.message


def test_a_model_name_from_the_environment_is_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"BATCHERY_MODEL_ECHO_\*\): name 'x/y' cannot be a model's name"):
        from_env("echo", {"BATCHERY_MODEL_ECHO_NAME": "x/y"})


def test_an_unknown_device_names_the_config_file_and_the_model(tmp_path: Path) -> None:
    path = tmp_path / "batchery.toml"
    path.write_text('[[models]]\ntarget = "batchery.testing:EchoModel"\n[[models]]\ntarget = "x.py:Y"\ndevices = "gpu"')
    done = cli("serve", "--port", "0", str(path))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"batchery: {path}: models[1]: unknown device 'gpu': use auto, cpu, cuda or cuda:N (several separated by "
        "commas)"
    )


class CostlyShare(batchery.Model):
    """Reports its batch size and the cores granted at setup and in predict; costs one per character."""

    name = "costly"
    devices = "cpu"
    workers_per_device = 1
    threads_per_worker = 1
    max_batch_cost = 2
    example = "x"

    def input_cost(self, payload: Any) -> int:
        return len(payload)

    def setup(self, device: str) -> None:
        self.granted_at_setup = batchery.granted_cores()

    def predict(self, batch: list[Any]) -> list[Any]:
        return [[len(batch), self.granted_at_setup, batchery.granted_cores()] for _ in batch]


async def test_a_process_model_keeps_the_serving_settings_of_the_model_it_wraps() -> None:
    # ProcessModel copied only some of its model's settings: workers_per_device, threads_per_worker, devices and
    # max_batch_cost (with input_cost) were dropped without a word, and its child never saw its core share.
    async with running_server([ProcessModel(CostlyShare())]) as server, httpx.AsyncClient(base_url=server.url) as http:
        info = (await http.get("/v1/models")).json()["models"][0]
        pair = (await http.post("/v1/models/costly/predict", json={"inputs": ["aa", "bb"]})).json()["outputs"]
        small = (await http.post("/v1/models/costly/predict", json={"inputs": ["a", "b"]})).json()["outputs"]
    assert info["workers"] == 1  # one device, one worker per device (not one per core)
    assert pair == [[1, 1, 1], [1, 1, 1]]  # cost 2 each with max_batch_cost 2: each computed alone
    assert small == [[2, 1, 1], [2, 1, 1]]  # cost 1 each: together; the child was granted its one thread


def test_a_process_model_refuses_a_thread_budget_its_model_oversubscribes() -> None:
    class Greedy(CostlyShare):
        threads_per_worker = 64

    with pytest.raises(ConfigError, match="1 CPU worker\\(s\\) x 64 thread\\(s\\) each"):
        batchery.Engine([ProcessModel(Greedy())], cores_available=2)


# Found in review, but their fix belongs in the engine core (handle.py), which this review leaves alone: the
# report carries the patch. Strict, so they fail (and ask for this marker to go) once it is applied.


async def test_a_per_model_workers_setting_beats_the_server_wide_default(tmp_path: Path) -> None:
    # In Kubernetes BATCHERY_WORKERS comes from the CPU limit, so a model's own `workers = 1` (its file entry or
    # BATCHERY_MODEL_<NAME>_WORKERS) was silently replaced by the pod's core count.
    path = tmp_path / "batchery.toml"
    path.write_text('[server]\nworkers = 2\n[[models]]\ntarget = "batchery.testing:EchoModel"\nworkers = 1\n')
    server_settings, entries = config_file.load(path)
    async with running_server(entries, **server_settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        info = (await http.get("/v1/models")).json()["models"][0]
    assert info["workers"] == 1


class Share(batchery.Model):
    """Reports the cores granted at setup and in predict."""

    name = "share"
    example = "x"

    def setup(self, device: str) -> None:
        self.granted_at_setup = batchery.granted_cores()

    def predict(self, batch: list[Any]) -> list[Any]:
        return [[self.granted_at_setup, batchery.granted_cores()] for _ in batch]


async def test_threads_per_worker_is_the_grant_in_predict_too() -> None:
    if batchery.cores.available() < 2:
        pytest.skip("needs two cores to tell one thread from all of them")
    spec = ModelSpec(workers=1, threads_per_worker=1)
    async with running_server([Served(Share(), spec)]) as server, httpx.AsyncClient(base_url=server.url) as http:
        output = (await http.post("/v1/models/share/predict", json={"input": "x"})).json()["output"]
    assert output == [1, 1]


async def test_v1_models_lists_the_queue_thread_and_cost_settings_in_force(tmp_path: Path) -> None:
    path = tmp_path / "batchery.toml"
    path.write_text(
        '[[models]]\ntarget = "batchery.testing:EchoModel"\nworkers = 1\nthreads_per_worker = 1\n'
        "max_queue_per_worker = 7\nmax_batch_cost = 100\n"
    )
    server_settings, entries = config_file.load(path)
    async with running_server(entries, **server_settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        info = (await http.get("/v1/models")).json()["models"][0]
    assert (info["max_queue_per_worker"], info["threads_per_worker"], info["max_batch_cost"]) == (7, 1, 100)


def test_a_variable_two_models_would_both_read_is_refused() -> None:
    from batchery.spec import check_model_env

    check_model_env(["a-b", "a_b"], {"BATCHERY_WORKERS": "2"})  # nothing ambiguous set: fine
    with pytest.raises(ConfigError, match=r"'a-b' and 'a_b' alike"):
        check_model_env(["a-b", "a_b", "c"], {"BATCHERY_MODEL_A_B_WORKERS": "1"})


def test_a_file_target_under_the_home_folder_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.py").write_text("from batchery.testing import EchoModel as Mine\n")
    config = tmp_path / "elsewhere" / "batchery.toml"
    config.parent.mkdir()
    config.write_text('[[models]]\ntarget = "~/models/m.py:Mine"\n')
    _, entries = config_file.load(config)
    assert type(entries[0].model).__name__ == "EchoModel"


@pytest.mark.parametrize("name", ["x/y", " ", "a\nb"])
def test_a_class_or_pipeline_name_that_no_route_can_reach_is_refused(name: str) -> None:
    from batchery.engine import Engine
    from batchery.pipeline import Sequential
    from batchery.testing import EchoModel

    model = EchoModel()
    model.name = name
    with pytest.raises(ConfigError, match="cannot be a model's name"):
        Engine([model])
    with pytest.raises(ConfigError, match="cannot be a model's name"):
        Engine([Sequential(name, [EchoModel()])])

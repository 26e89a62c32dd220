"""Several models from one TOML file, each with its own queue, batcher and workers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from batchery import config_file
from batchery.errors import ConfigError
from batchery.testing import EchoModel, SleepModel, running_server

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "batchery.toml"
    path.write_text(text)
    return path


async def test_a_config_file_serves_several_models_with_their_own_settings(tmp_path: Path) -> None:
    (tmp_path / "models.py").write_text((ROOT / "examples" / "quickstart.py").read_text())
    path = write(
        tmp_path,
        """
        [server]
        max_items = 7

        [[models]]
        target = "models.py:Shout"
        name = "loud"
        max_batch_size = 4
        workers = 1

        [[models]]
        target = "batchery.testing:EchoModel"
        batching = "fixed"
        max_delay_ms = 1
        """,
    )
    server_settings, entries = config_file.load(path)
    assert server_settings == {"max_items": 7}
    async with running_server(entries, **server_settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        shouted = await http.post("/v1/models/loud/predict", json={"input": "hi"})
        assert shouted.json()["output"] == "HI!"
        models = {m["name"]: m for m in (await http.get("/v1/models")).json()["models"]}
        too_many = await http.post("/v1/models/echo/predict", json={"inputs": list(range(8))})
    assert models["loud"]["max_batch_size"] == 4
    assert models["loud"]["workers"] == 1
    assert models["echo"]["batching"] == "fixed"
    assert models["echo"]["max_delay_ms"] == 1
    assert models["echo"]["device"] == "cpu"
    assert too_many.status_code == 413


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[models]]\nname = 'x'\n", "needs a target"),
        ("[[models]]\ntarget = 'batchery.testing:EchoModel'\nmax_batch_size = 'big'\n", "must be an integer"),
        ("[[models]]\ntarget = 'batchery.testing:EchoModel'\ncolour = 'red'\n", "unknown setting(s) colour"),
        (
            "[server]\nprot = 1\n[[models]]\ntarget = 'batchery.testing:EchoModel'\n",
            "unknown [server] setting(s): prot",
        ),
        ("[server]\n", "at least one model"),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_bad_config_files_are_refused_with_a_clear_message(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_file.load(write(tmp_path, text))
    assert says in info.value.message


async def test_a_slow_model_never_stalls_a_fast_one_beside_it() -> None:
    slow = SleepModel(0.5)
    slow.workers = 1
    slow.max_batch_size = 1
    async with running_server([slow, EchoModel()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        stuck = [asyncio.create_task(http.post("/v1/models/sleep/predict", json={"input": i})) for i in range(4)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        for i in range(20):
            fast = await http.post("/v1/models/echo/predict", json={"input": i})
            assert fast.status_code == 200
        fast_seconds = time.monotonic() - started
        slow_done = sum(task.done() for task in stuck)
        await asyncio.gather(*stuck)
    # 20 fast requests finished while the slow model still had most of its 2 s of work queued.
    assert slow_done <= 1, f"the fast requests waited for the slow model ({fast_seconds:.2f}s)"


ECHO = "[[models]]\ntarget = 'batchery.testing:EchoModel'\n"


@pytest.mark.parametrize(
    ("server", "says"),
    [
        ("[server]\nport = '8112'\n", "[server] port must be an integer, not '8112'; write it without quotes"),
        ("[server]\nmax_items = 'many'\n", "[server] max_items must be an integer, not 'many'"),
        ("[server]\nmax_items = 2.5\n", "[server] max_items must be an integer, not 2.5"),
        ("[server]\nport = true\n", "[server] port must be an integer, not True"),
        ("[server]\ndrain_seconds = 'soon'\n", "[server] drain_seconds must be a number"),
        ("[server]\nhost = 127\n", "[server] host must be a string, not 127"),
        ("[server]\ndashboard = 'false'\n", "[server] dashboard must be true or false, not 'false'"),
        ("[server]\nwatch = 'no'\n", "[server] watch must be true or false, not 'no'"),
        ("[server]\nwatch = 1\n", "[server] watch must be true or false, not 1"),
        ("server = 5\n", "server must be a table"),
    ],
)
def test_server_settings_of_the_wrong_type_are_refused(tmp_path: Path, server: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_file.load(write(tmp_path, server + ECHO))
    assert says in info.value.message


def test_server_settings_of_the_right_type_pass(tmp_path: Path) -> None:
    text = "[server]\nport = 8112\ndrain_seconds = 2\nrate_limit = 0.5\ndashboard = false\nhost = '0.0.0.0'\n"
    server_settings, _ = config_file.load(write(tmp_path, text + ECHO))
    assert server_settings == {
        "port": 8112,
        "drain_seconds": 2,
        "rate_limit": 0.5,
        "dashboard": False,
        "host": "0.0.0.0",
    }


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("max_batch_size = 2.7", "max_batch_size must be an integer, not 2.7"),
        ("max_batch_size = true", "max_batch_size must be an integer, not True"),
        ("name = ['x']", "name must be a string, not ['x']"),
        ("name = 5", "name must be a string, not 5"),
        ("max_queue_per_worker = 0", "max_queue_per_worker must be >= 1, not 0"),
        ("max_queue_per_worker = -3", "max_queue_per_worker must be >= 1, not -3"),
        ("threads_per_worker = 0", "threads_per_worker must be >= 1, not 0"),
        ("threads_per_worker = -1", "threads_per_worker must be >= 1, not -1"),
        ("workers_per_device = 0", "workers_per_device must be >= 1, not 0"),
        ("max_delay_ms = -1", "max_delay_ms must be a finite number >= 0, not -1"),
        ("devices = ['cpu', 1]", "devices must be a string"),
    ],
)
def test_model_settings_out_of_range_or_of_the_wrong_type_are_refused(tmp_path: Path, setting: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_file.load(write(tmp_path, ECHO + setting + "\n"))
    assert info.value.message.startswith(f"{tmp_path / 'batchery.toml'}: models[0]: ")
    assert says in info.value.message


async def test_a_queue_of_zero_is_refused_before_anything_serves(tmp_path: Path) -> None:
    # Before: the server started "ready" and answered every request with 503 (a limit of 0 queued inputs).
    with pytest.raises(ConfigError, match="max_queue_per_worker must be >= 1"):
        config_file.load(write(tmp_path, ECHO + "max_queue_per_worker = 0\n"))
    _, entries = config_file.load(write(tmp_path, ECHO + "max_queue_per_worker = 1\nmax_delay_ms = 3\n"))
    async with running_server(entries) as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post("/v1/models/echo/predict", json={"input": 1})
        models = (await http.get("/v1/models")).json()["models"]
    assert response.status_code == 200
    assert models[0]["max_delay_ms"] == 3

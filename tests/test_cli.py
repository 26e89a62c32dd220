"""`batchery serve` as users run it: a real process, a real port, a clear failure when a model cannot load."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from batchery.cli import build_parser, parse_args

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def batchery_process(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    command = [sys.executable, "-m", "batchery.cli", "serve", "--port", "0", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)
        assert process.stdout is not None
        process.stdout.close()


def wait_for_line(process: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"the process ended without printing {pattern!r}:\n{''.join(seen)}")


def test_serve_a_model_file_and_then_stop_cleanly() -> None:
    with batchery_process(f"{ROOT}/examples/quickstart.py:Shout") as process:
        url = wait_for_line(process, r"ready on (http://\S+)").group(1)
        response = httpx.post(f"{url}/v1/models/shout/predict", json={"input": "cli"})
        assert response.json()["output"] == "CLI!"
        process.terminate()
        assert process.wait(30) == 0


def test_a_model_that_fails_to_load_stops_start_up_with_a_clear_message() -> None:
    with batchery_process("batchery.testing:BrokenSetupModel") as process:
        match = wait_for_line(process, r"start-up failed: (.*)")
        assert process.wait(30) != 0
    message = match.group(1)
    assert "model 'broken' (version 1) failed to load" in message
    assert "weights.bin not found" in message
    assert "Fix the model's setup()" in message


def test_a_target_that_cannot_be_imported_is_refused() -> None:
    with batchery_process("no/such/file.py:Model") as process:
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 2
    assert "no such file" in output


def test_flags_are_derived_from_settings_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchery.config import Settings

    args = build_parser().parse_args(["serve", "--max-items", "9"])
    assert args.max_items == 9
    monkeypatch.setenv("BATCHERY_MAX_ITEMS", "12")
    assert Settings.load().max_items == 12
    assert Settings.load({"max_items": 3}).max_items == 3


def test_sighup_reloads_the_models_of_a_running_server() -> None:
    with batchery_process(f"{ROOT}/examples/quickstart.py:Shout") as process:
        url = wait_for_line(process, r"ready on (http://\S+)").group(1)
        process.send_signal(signal.SIGHUP)
        wait_for_line(process, r"model 'shout' now serves version 1\.1")
        response = httpx.post(f"{url}/v1/models/shout/predict", json={"input": "again"})
        assert response.headers["x-model-version"] == "1.1"
        assert response.json()["output"] == "AGAIN!"


def refusal(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `batchery serve` expecting a config error: exit code 2 and one `batchery: ...` line, never a traceback."""
    with batchery_process(*args, env=env) as process:
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 2, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("batchery: "), output
    return lines[0]


ECHO_ENTRY = "\n[[models]]\ntarget = 'batchery.testing:EchoModel'\n"


@pytest.mark.parametrize(
    ("server", "says"),
    [
        ("[server]\nport = '8112'", "[server] port must be an integer, not '8112'"),
        ("[server]\nmax_items = 'many'", "[server] max_items must be an integer, not 'many'"),
        ("server = 5", "server must be a table"),
        ("[server]\ndashboard = 'false'", "[server] dashboard must be true or false, not 'false'"),
        ("[server]\nwatch = 'no'", "[server] watch must be true or false, not 'no'"),
        ("", "max_queue_per_worker must be >= 1, not 0"),
    ],
)
def test_config_file_mistakes_exit_2_with_one_line(tmp_path: Path, server: str, says: str) -> None:
    path = tmp_path / "batchery.toml"
    path.write_text(server + ECHO_ENTRY + ("max_queue_per_worker = 0\n" if not server else ""))
    assert says in refusal(str(path))


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("import nonexistent_pkg_for_batchery\n", "No module named 'nonexistent_pkg_for_batchery'"),
        ("class Broken(:\n    pass\n", "SyntaxError at "),
        ("def f():\n  x = 1\n    y = 2\n", "IndentationError at "),
    ],
)
def test_a_model_file_that_cannot_be_imported_exits_2_with_one_line(tmp_path: Path, source: str, says: str) -> None:
    (tmp_path / "bad_model.py").write_text(source)
    line = refusal(f"{tmp_path}/bad_model.py:Model")
    assert f"cannot import {tmp_path}/bad_model.py" in line
    assert says in line


def test_a_package_module_with_a_syntax_error_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken_pkg_for_batchery.py").write_text("x = (\n")
    line = refusal("broken_pkg_for_batchery:Model", env={"PYTHONPATH": str(tmp_path)})
    assert "cannot import 'broken_pkg_for_batchery': SyntaxError at " in line


def test_boolean_variables_and_flags_are_read_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchery.config import Settings
    from batchery.errors import ConfigError

    for word, value in (("false", False), ("OFF", False), ("0", False), ("yes", True), (" True ", True)):
        monkeypatch.setenv("BATCHERY_WATCH", word)
        assert Settings.load().watch is value
    monkeypatch.setenv("BATCHERY_WATCH", "maybe")
    with pytest.raises(ConfigError, match=r"BATCHERY_WATCH='maybe' is not valid: use true or false"):
        Settings.load()
    with pytest.raises(SystemExit) as info:
        parse_args(["serve", "--watch=maybe"])
    assert info.value.code == 2
    assert parse_args(["serve", "--dashboard", "false"]).dashboard is False


@pytest.mark.parametrize(
    ("argv", "watch", "targets"),
    [
        (["serve", "--watch", "app.py:A"], True, ["app.py:A"]),  # a bare flag does not swallow the target
        (["serve", "app.py:A", "--watch"], True, ["app.py:A"]),
        (["serve", "--watch", "off", "app.py:A"], False, ["app.py:A"]),
        (["serve", "--watch=yes", "app.py:A"], True, ["app.py:A"]),
        (["serve", "--no-watch", "app.py:A", "b.py:B"], False, ["app.py:A", "b.py:B"]),
        (["serve", "app.py:A"], None, ["app.py:A"]),
        (["serve", "--", "--watch"], None, ["--watch"]),
    ],
)
def test_a_boolean_flag_alone_means_true(argv: list[str], watch: bool | None, targets: list[str]) -> None:
    args = parse_args(argv)
    assert (args.watch, args.targets) == (watch, targets)


def test_bench_arguments_are_left_as_they_are() -> None:
    args = parse_args(["bench", "http://127.0.0.1:1/x", "-c", "4"])
    assert (args.command, args.connections) == ("bench", [4])


def test_an_unreadable_boolean_variable_stops_the_server() -> None:
    line = refusal("batchery.testing:EchoModel", env={"BATCHERY_WATCH": "maybe"})
    assert line == "batchery: BATCHERY_WATCH='maybe' is not valid: use true or false"


def test_settings_passed_from_python_are_type_checked() -> None:
    from batchery.config import Settings
    from batchery.errors import ConfigError

    with pytest.raises(ConfigError, match="dashboard must be true or false, not 'false'"):
        Settings(dashboard="false")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="port must be an integer"):
        Settings.load({"port": "8112"})
    assert Settings(drain_seconds=2).drain_seconds == 2  # an integer is a number


def test_environment_beats_the_config_files_server_table_and_flags_beat_both(tmp_path: Path) -> None:
    path = tmp_path / "batchery.toml"
    path.write_text("[server]\nmax_items = 7\nmax_body_bytes = 100000\n" + ECHO_ENTRY)
    with batchery_process(str(path), "--max-body-bytes", "200000", env={"BATCHERY_MAX_ITEMS": "3"}) as process:
        url = wait_for_line(process, r"ready on (http://\S+)").group(1)
        four = httpx.post(f"{url}/v1/models/echo/predict", json={"inputs": [1, 2, 3, 4]})
        three = httpx.post(f"{url}/v1/models/echo/predict", json={"inputs": [1, 2, 3]})
        padded = httpx.post(f"{url}/v1/models/echo/predict", json={"input": "x" * 150_000})
    assert four.status_code == 413  # BATCHERY_MAX_ITEMS=3, not the file's 7
    assert three.status_code == 200
    assert padded.status_code == 200  # --max-body-bytes 200000, not the file's 100000


def test_a_misspelt_batchery_variable_is_named_with_the_setting_it_was_likely_meant_for() -> None:
    from batchery.config import unknown_variables

    env = {"BATCHERY_API_KEY": "k", "BATCHERY_PORT": "1", "BATCHERY_MODEL_X_WORKERS": "2", "BATCHERY_CACHE_DIR": "/c"}
    env |= {"BATCHERY_FROBNICATE": "1", "PATH": "/bin"}
    assert unknown_variables(env) == ["BATCHERY_API_KEY (did you mean BATCHERY_API_KEYS?)", "BATCHERY_FROBNICATE"]

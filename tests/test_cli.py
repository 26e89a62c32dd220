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

from batchery.cli import build_parser

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

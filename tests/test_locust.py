"""examples/locustfile.py runs headless against a real server for a few seconds, with no failures."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchery.testing import EchoModel, server_thread

LOCUSTFILE = Path(__file__).resolve().parents[1] / "examples" / "locustfile.py"


@pytest.mark.slow
def test_locustfile_runs_headless_without_failures(tmp_path: Path) -> None:
    # Never import locust here: it monkey-patches the whole process with gevent. It runs in its own process.
    if importlib.util.find_spec("locust") is None:
        pytest.skip("`pip install locust` (it is in the dev extra)")
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "8", "-r", "8"]
    command += ["-t", "3s", "--only-summary", "--json", "--skip-log-setup", "--exit-code-on-error", "1"]
    with server_thread([EchoModel()]) as server:
        env = {**os.environ, "LOCUST_MODEL": "echo"}
        run = subprocess.run(
            [*command, "--host", server.url], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert run.returncode == 0, run.stderr[-3000:]
    stats = {entry["name"]: entry for entry in json.loads(run.stdout)}
    predict = stats["/v1/models/[model]/predict"]
    assert predict["num_requests"] > 0
    assert sum(entry["num_failures"] for entry in stats.values()) == 0
    assert "/v1/models" in stats

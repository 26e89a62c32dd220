"""`batchery serve` (the default model) in its own process group, with per-model settings from the environment."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from benchmarks.adaptive.configs import MODEL, Config
from benchmarks.servers import MAIN_PY, ROOT, free_port, stop

PATH = f"/v1/models/{MODEL}/predict"
_SAMPLE = re.compile(r"^(batchery_\w+)\{([^}]*)\} (\S+)$")


@contextlib.contextmanager
def serving(config: Config, log: Path, timeout: float = 180.0) -> Iterator[str]:
    """Yield the base URL of a ready server for `config`; stop it (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    env = {**os.environ, **config.env(), "TOKENIZERS_PARALLELISM": "false"}
    argv = [str(MAIN_PY.parent / "batchery"), "serve", "--port", str(port), "--log-level", "warning"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc, timeout, log)
        yield base
    finally:
        stop(proc)


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    body = orjson.dumps({"input": "Is the server ready?"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"batchery serve exited with {proc.returncode}; see {log}")
        request = urllib.request.Request(base + PATH, data=body, headers={"Content-Type": "application/json"})
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(request, timeout=10) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"batchery serve not ready after {timeout:.0f} s; see {log}")


def model_info(base: str) -> dict[str, Any]:
    """The model's entry in `GET /v1/models` (batching, batch_cap, ...)."""
    with urllib.request.urlopen(base + "/v1/models", timeout=10) as response:
        document = orjson.loads(response.read())
    info: dict[str, Any] = next(m for m in document["models"] if m["name"] == MODEL)
    return info


def metrics(base: str) -> dict[str, float]:
    """The model's batching counters from `/metrics`: histogram sums and counts, rejections by reason."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or f'model="{MODEL}"' not in match.group(2):
            continue
        name, labels, value = match.groups()
        if name.endswith(("_sum", "_count")) and name.startswith(
            ("batchery_batch_size", "batchery_queue_wait_seconds", "batchery_compute_seconds")
        ):
            values[name] += float(value)
        elif name == "batchery_rejected_total":
            reason = re.search(r'reason="([^"]*)"', labels)
            values[f"rejected_{reason.group(1) if reason else 'other'}"] += float(value)
    return dict(values)


def batching_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """What the server did between two `metrics` snapshots: batches, mean size, mean queue wait and compute."""
    diff = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in set(before) | set(after)}
    batches = diff.get("batchery_batch_size_count", 0.0)
    waits = diff.get("batchery_queue_wait_seconds_count", 0.0)
    return {
        "batches": batches,
        "mean_batch": diff.get("batchery_batch_size_sum", 0.0) / batches if batches else None,
        "mean_queue_wait_ms": 1000 * diff.get("batchery_queue_wait_seconds_sum", 0.0) / waits if waits else None,
        "mean_compute_ms": 1000 * diff.get("batchery_compute_seconds_sum", 0.0) / batches if batches else None,
        **{key: value for key, value in diff.items() if key.startswith("rejected_") and value},
    }

"""How to start each server for each workload, its request format, and the knobs its sweep tries."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "peers"
VENVS = HERE / ".venvs"
MAIN_PY = Path(sys.executable)


def sentences() -> list[str]:
    return (HERE / "sentences.txt").read_text().splitlines()


def bodies(kind: str, workload: str) -> list[bytes]:
    """Request bodies for a server's protocol (`native` or `kserve`) and a workload."""
    texts = sentences()
    per = 16 if workload == "embed16" else 1
    groups = [[texts[(i + j) % len(texts)] for j in range(per)] for i in range(len(texts))]
    if kind == "kserve":
        return [
            orjson.dumps({"inputs": [{"name": "text", "shape": [len(g), 1], "datatype": "BYTES", "data": g}]})
            for g in groups
        ]
    return [orjson.dumps({"input": g[0]} if per == 1 else {"inputs": g}) for g in groups]


@dataclass(frozen=True, slots=True)
class Knobs:
    """One configuration of a peer: batch size, batch wait (ms), workers / instances."""

    batch: int = 1
    wait_ms: float = 0.0
    workers: int = 1

    def label(self) -> str:
        return f"batch {self.batch}, wait {self.wait_ms:g} ms, {self.workers} worker(s)"


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    kind: str  # request format
    paths: dict[str, str]  # workload -> URL path
    sweep: dict[str, list[Knobs]] = field(default_factory=dict)  # workload group -> configurations

    def label(self, knobs: Knobs) -> str:
        """What a result was measured with: batchery takes no knobs, so its rows say so (not `Knobs()`'s batch 1)."""
        return knobs.label() if self.sweep else "its default configuration"

    def configs(self, workload: str, quick: bool) -> list[Knobs]:
        group = "noop" if workload == "noop" else "embed"
        found = self.sweep.get(group, [Knobs()])
        return found[:1] if quick else found


_NATIVE = {"noop": "/noop", "embed": "/embed", "embed16": "/embed"}
PEERS_ALL: dict[str, Peer] = {
    "batchery": Peer(
        "batchery",
        "native",
        {
            "noop": "/v1/models/echo/predict",
            "embed": "/v1/models/all-minilm-l6-v2/predict",
            "embed16": "/v1/models/all-minilm-l6-v2/predict",
        },
    ),
    "batchery-granian": Peer("batchery-granian", "native", {"noop": "/v1/models/echo/predict"}),
    "mosec": Peer(
        "mosec",
        "native",
        {w: "/inference" for w in _NATIVE},
        {
            "embed": [Knobs(32, 1, 2), Knobs(1, 0, 2), Knobs(8, 1, 2)],
            "noop": [Knobs(32, 1, 1), Knobs(1, 0, 1)],
        },
    ),
    "pytriton": Peer(
        "pytriton",
        "kserve",
        {w: "/v2/models/model/infer" for w in _NATIVE},
        {"embed": [Knobs(32, 0, 2), Knobs(32, 0, 1)], "noop": [Knobs(32, 0, 1)]},
    ),
    "litserve": Peer(
        "litserve",
        "native",
        {w: "/predict" for w in _NATIVE},
        {
            "embed": [Knobs(32, 5, 2), Knobs(1, 0, 2), Knobs(32, 20, 2)],
            "noop": [Knobs(1, 0, 1), Knobs(32, 5, 1)],
        },
    ),
    "fastapi": Peer("fastapi", "native", _NATIVE, {"embed": [Knobs(1, 0, 1), Knobs(1, 0, 2)], "noop": [Knobs()]}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _command(peer: Peer, workload: str, port: int) -> tuple[list[str], Path]:
    if peer.name == "batchery":
        exe = str(MAIN_PY.parent / "batchery")
        target = [str(HERE / "echo_model.py") + ":Echo"] if workload == "noop" else []
        return [exe, "serve", *target, "--port", str(port), "--log-level", "warning"], ROOT
    if peer.name == "batchery-granian":
        exe = str(VENVS / "granian" / "bin" / "granian")
        argv = [exe, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        return [*argv, "--loop", "uvloop", "--log-level", "warning", "granian_app:app"], PEERS
    py = str(VENVS / peer.name / "bin" / "python")
    script = str(PEERS / f"{peer.name}_server.py")
    if peer.name == "mosec":
        return [py, script, "--address", "127.0.0.1", "--port", str(port), "--log-level", "warning"], PEERS
    return [py, script], PEERS


def _model_env() -> dict[str, str]:
    from batchery.models import minilm_export

    return {
        "BENCH_ONNX": str(minilm_export.onnx_path()),
        "BENCH_TOKENIZER": str(minilm_export.source_dir() / "tokenizer.json"),
        "TOKENIZERS_PARALLELISM": "false",
    }


@dataclass(slots=True)
class Running:
    peer: Peer
    workload: str
    knobs: Knobs
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def running(peer: Peer, workload: str, knobs: Knobs, log_dir: Path, timeout: float = 180.0) -> Iterator[Running]:
    """Start `peer` for `workload` in its own process group; yield once a real request succeeds; stop it."""
    port = free_port()
    argv, cwd = _command(peer, workload, port)
    env = {
        **os.environ,
        **_model_env(),
        "BENCH_WORKLOAD": workload,
        "BENCH_PORT": str(port),
        "BENCH_BATCH": str(knobs.batch),
        "BENCH_WAIT_MS": str(knobs.wait_ms),
        "BENCH_WORKERS": str(knobs.workers),
        "PYTHONPATH": str(PEERS),
    }
    if peer.name == "pytriton":
        # Triton's Python backend stub must load this interpreter's own libpython (PERFORMANCE.md).
        libdir = sysconfig.get_config_var("LIBDIR")
        env["LD_LIBRARY_PATH"] = f"{libdir}:{env.get('LD_LIBRARY_PATH', '')}"
        env["PYTRITON_HOME"] = str(VENVS / "pytriton-home")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{peer.name}-{workload}-{knobs.batch}-{knobs.wait_ms:g}-{knobs.workers}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}{peer.paths[workload]}"
    try:
        _wait_ready(url, bodies(peer.kind, workload)[0], proc, timeout, log)
        yield Running(peer, workload, knobs, url, proc, log)
    finally:
        stop(proc)


def _wait_ready(url: str, body: bytes, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready; see {log}")
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            # Up and refusing our body: waiting will not help (404 is Triton before its model has loaded).
            if 400 <= exc.code < 500 and exc.code != 404:
                raise RuntimeError(f"server answers {exc.code} to the benchmark body; see {log}") from exc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout:.0f} s; see {log}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group, SIGKILL it after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Worker processes of the group may outlive the leader for a moment.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def rss_kib(pid: int) -> int:
    """Resident memory of `pid` and its descendants (KiB)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                pids.extend(int(c) for c in children)
    return total

"""Security checks over real HTTP: keys kept secret and compared in constant time, rotation without a restart,
no stack traces in error bodies, CORS off unless configured, admin routes closed, request ids validated, and a
server that writes nothing outside its cache directory (read-only package directory, as in the container).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchery.app.auth import ApiKeys
from batchery.model import Model
from batchery.testing import EchoModel, running_server

PREDICT = "/v1/models/echo/predict"
USER_KEY, ADMIN_KEY, WRONG_KEY = "user-secret-5e1f0c", "admin-secret-93ab7d", "wrong-secret-77c2e4"
SECRETS = (USER_KEY, ADMIN_KEY, WRONG_KEY)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logs() -> Iterator[_Collect]:
    """Every log line (the access log does not propagate, so it is watched by name too)."""
    handler = _Collect()
    watched = [logging.getLogger(), logging.getLogger("batchery.access")]
    levels = [logger.level for logger in watched]
    for logger in watched:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(watched, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


class Explodes(Model):
    name = "explodes"

    def predict(self, batch: list[Any]) -> list[Any]:
        raise RuntimeError("the model blew up")


async def test_api_keys_never_reach_logs_metrics_or_error_bodies(logs: _Collect) -> None:
    settings = {"api_keys": USER_KEY, "admin_api_key": ADMIN_KEY, "access_log": "json", "rate_limit": 1000.0}
    async with running_server([EchoModel()], **settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        bodies = []
        for key in (USER_KEY, ADMIN_KEY, WRONG_KEY, WRONG_KEY * 100):
            for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}, {"Authorization": f"Basic {key}"}):
                for method, path in (("POST", PREDICT), ("POST", "/admin/cache/clear"), ("GET", "/v1/models")):
                    response = await http.request(method, path, json={"input": key}, headers=headers)
                    bodies.append(response.text if response.status_code >= 400 else "")
        metrics = (await http.get("/metrics")).text
    everything = "\n".join([*bodies, metrics, *logs.lines])
    assert any('"status":403' in line for line in logs.lines), "the access log did not record the refusals"
    for secret in SECRETS:
        assert secret not in everything


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured key is compared, with hmac.compare_digest on equal-length digests, whichever matches."""
    calls: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr("batchery.app.auth.hmac.compare_digest", counting)
    keys = ApiKeys(["first", "second", "third"], "admin")
    for presented in (b"first", b"third", b"admin", b"nobody", b"x" * 1000):
        calls.clear()
        keys.check(presented)
        assert calls == [(32, 32)] * 4, presented


async def _status(http: httpx.AsyncClient, key: str) -> int:
    return (await http.post(PREDICT, json={"input": 1}, headers={"X-API-Key": key})).status_code


async def _until(http: httpx.AsyncClient, key: str, status: int) -> None:
    give_up = time.monotonic() + 30
    while await _status(http, key) != status:  # the file is re-read at most once a second
        assert time.monotonic() < give_up, f"key {key!r} never answered {status}"
        await asyncio.sleep(0.1)


async def test_keys_rotate_without_a_restart_with_old_and_new_valid_together(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("old-key\n")
    async with (
        running_server([EchoModel()], api_keys_file=str(keys_file)) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        assert await _status(http, "old-key") == 200
        assert await _status(http, "new-key") == 403
        keys_file.write_text("# rotating\nold-key\nnew-key\n")
        await _until(http, "new-key", 200)
        assert await _status(http, "old-key") == 200  # both valid during the rotation
        keys_file.write_text("new-key\n")
        await _until(http, "old-key", 403)
        assert await _status(http, "new-key") == 200
        # A file emptied by mistake (or mid-write) must not switch auth off: the previous keys stay.
        keys_file.write_text("")
        await asyncio.sleep(1.2)
        assert await _status(http, "new-key") == 200
        assert await _status(http, "anything") == 403


async def test_a_key_rotated_before_the_first_predict_is_revoked_on_every_route(tmp_path: Path) -> None:
    # The predict route's fast path built its own Auth layer on its first request, with the keys read at start-up
    # but the file marked as read then: a rotation before that first request never reached predict.
    keys_file = tmp_path / "keys"
    keys_file.write_text("old-key\n")
    async with (
        running_server([EchoModel()], api_keys_file=str(keys_file)) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        keys_file.write_text("new-key\n")
        give_up = time.monotonic() + 30
        while (await http.get("/v1/models", headers={"X-API-Key": "old-key"})).status_code != 403:
            assert time.monotonic() < give_up, "the rotation never applied"
            await asyncio.sleep(0.1)
        assert await _status(http, "old-key") == 403
        assert await _status(http, "new-key") == 200


async def test_error_bodies_carry_no_stack_trace() -> None:
    async with running_server([Explodes()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post("/v1/models/explodes/predict", json={"input": 1})
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "predict_failed"
        for marker in ("Traceback", 'File "', "line ", ".py"):
            assert marker not in response.text


async def test_cors_is_off_unless_configured() -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    async with running_server([EchoModel()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.options(PREDICT, headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
        answer = await http.post(PREDICT, json={"input": 1}, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in answer.headers
    async with (
        running_server([EchoModel()], cors_origins="https://app.example") as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        ok = await http.options(PREDICT, headers={**preflight, "Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        answer = await http.post(PREDICT, json={"input": 1}, headers={"Origin": "https://app.example"})
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        refused = await http.options(PREDICT, headers=preflight)
        assert "access-control-allow-origin" not in refused.headers


async def test_admin_routes_are_refused_to_ordinary_keys_and_to_everyone_without_an_admin_key() -> None:
    admin_paths = ["/admin/cache/clear", "/admin/models/echo/reload", "/admin/models/echo/rollback"]
    async with running_server([EchoModel()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        for path in admin_paths:  # keys off: even a loopback client is refused (no admin key configured)
            answer = await http.post(path)
            assert answer.status_code == 403
            assert "BATCHERY_ADMIN_API_KEY" in answer.json()["error"]["message"]
    async with (
        running_server([EchoModel()], api_keys=USER_KEY, admin_api_key=ADMIN_KEY) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        for path in admin_paths:
            assert (await http.post(path, headers={"X-API-Key": USER_KEY})).status_code == 403
        assert (await http.post(admin_paths[0], headers={"X-API-Key": ADMIN_KEY})).status_code == 200


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ("req-123_abc.DEF:9", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("tab\there", False),
        ("caf\xe9", False),
        ("<script>alert(1)</script>\x7f", False),
    ],
)
async def test_request_ids_are_validated_before_echo_and_log(logs: _Collect, sent: str, echoed: bool) -> None:
    async with (
        running_server([EchoModel()], access_log="text") as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        answer = await http.post(PREDICT, json={"input": 1}, headers={"X-Request-ID": sent.encode("latin-1")})
    if answer.status_code == 400:  # a control character: the HTTP parser refuses the request before the app
        assert answer.json()["error"]["code"] == "bad_request"
        assert sent not in "\n".join(logs.lines)
        return
    returned = answer.headers["x-request-id"]
    assert (returned == sent) is echoed
    assert re.fullmatch(r"[!-~]{1,128}", returned)
    logged = "\n".join(line for line in logs.lines if "POST" in line)
    assert returned in logged
    if not echoed:
        assert sent not in logged


_WRITE_WATCH = """
import os, sys
ALLOWED = tuple(p for p in os.environ["WATCH_ALLOWED"].split(os.pathsep) if p)
def _watch(event, args):
    if event == "open" and args[0] is not None and not isinstance(args[0], int):
        mode, flags = args[1] or "", args[2] or 0
        writes = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
    elif event in ("os.mkdir", "os.rename", "os.remove", "shutil.rmtree", "os.chmod"):
        writes = True
    else:
        return
    path = os.path.abspath(os.fsdecode(args[0]))
    if writes and not path.startswith(ALLOWED):
        sys.stderr.write(f"WROTE-OUTSIDE {event} {path}\\n")
sys.addaudithook(_watch)
"""


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


@pytest.mark.slow
def test_the_server_writes_nothing_outside_its_cache_directory(tmp_path: Path) -> None:
    """A copy of the package made read-only, HOME and the working directory read-only: serve the default model.

    As root, permissions do not stop writes, so an audit hook reports every write the Python side attempts.
    """
    import batchery
    from batchery.models import minilm_export

    package = tmp_path / "site" / "batchery"
    shutil.copytree(Path(batchery.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "site" / "sitecustomize.py").write_text(_WRITE_WATCH)
    cache, home, cwd = tmp_path / "cache", tmp_path / "home", tmp_path / "cwd"
    for folder in (cache / "models", home, cwd):
        folder.mkdir(parents=True)
    for exported in (minilm_export.cache_dir() / "models").glob("*.onnx"):
        shutil.copy(exported, cache / "models")  # an image ships the exported graph (Dockerfile)
    read_only = [tmp_path / "site", home, cwd]
    for root in read_only:
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
    before = {str(root): _snapshot(root) for root in read_only}
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(tmp_path / "site"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": str(home),
        "BATCHERY_CACHE_DIR": str(cache),
        "BATCHERY_PORT": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WATCH_ALLOWED": os.pathsep.join([str(cache), "/dev/"]),
    }
    command = [sys.executable, "-c", "import batchery, sys; print(batchery.__file__, flush=True); batchery.serve()"]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        url = None
        give_up = time.monotonic() + 240
        while url is None and time.monotonic() < give_up:
            line = process.stdout.readline()
            assert line, "the server exited: " + "".join(lines)
            lines.append(line)
            if "is ready on" in line:
                url = line.rsplit(" ", 1)[-1].strip()
        assert url is not None, "".join(lines)
        assert lines[0].startswith(str(package)), "the read-only copy was not the one imported"
        with httpx.Client(base_url=url, timeout=60) as http:
            answer = http.post("/v1/models/minilm/predict", json={"inputs": ["read-only", "still serves"]})
            assert answer.status_code in (200, 404), answer.text
            if answer.status_code == 404:
                name = http.get("/v1/models").json()["models"][0]["name"]
                answer = http.post(f"/v1/models/{name}/predict", json={"inputs": ["read-only", "still serves"]})
            assert answer.status_code == 200, answer.text
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        lines.append(output or "")
    assert process.returncode == 0, "".join(lines)
    log = "".join(lines)
    assert "WROTE-OUTSIDE" not in log, log
    assert {str(root): _snapshot(root) for root in read_only} == before

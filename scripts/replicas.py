#!/usr/bin/env python3
"""N batchery replicas behind nginx, sharing one Redis, all on loopback: scale-out on one machine.

    python scripts/replicas.py -n 3                       # the default model, Ctrl-C stops everything
    python scripts/replicas.py -n 2 batchery.testing:SleepModel -e BATCHERY_RATE_LIMIT=50

It needs `redis-server` and `nginx` (Debian packages) and `batchery` on PATH (or --batchery). Every replica gets
BATCHERY_REDIS_URL, a Redis-backed response cache and rate limit backend, and trusts X-Forwarded-For from nginx
only: nginx connects to the replicas from 127.0.0.2, a loopback address no local client uses by accident.
nginx passes a request to the next replica when one refuses connections, resets them or answers 502/503 (a replica
that drains after SIGTERM). The tests import this file (tests/test_replicas.py); it does not import batchery.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: nginx's source address towards the replicas, and so the one trusted proxy.
PROXY_ADDRESS = "127.0.0.2"
START_TIMEOUT = 120.0


@dataclass
class Replica:
    """One `batchery serve` process and the URL it listens on."""

    process: subprocess.Popen[str]
    url: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)


@dataclass
class Cluster:
    """What `cluster()` started: the nginx URL clients use, the replicas behind it and the Redis URL."""

    url: str
    replicas: list[Replica]
    redis_url: str
    workdir: Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (nginx and redis-server cannot be handed a bound socket)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, what: str, timeout: float = START_TIMEOUT) -> None:
    """Poll `check()` every 50 ms until it is true; fail naming `what` after `timeout` seconds."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")


def _connects(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, persistence off; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed: apt-get install redis-server")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        try:
            wait_until(lambda: process.poll() is not None or _connects(port), "redis-server listening", 30)
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


def start_replica(command: Sequence[str], env: Mapping[str, str]) -> Replica:
    """Start one replica on a free port; returns once it logged its URL (not yet ready)."""
    process = subprocess.Popen(
        list(command), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    replica = Replica(process)
    assert process.stdout is not None
    for line in process.stdout:
        replica.log.append(line)
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            replica.url = found.group(1)
            break
    else:
        process.wait()
        raise RuntimeError("a replica exited before listening:\n" + "".join(replica.log))
    # Keep draining its output, so a chatty replica never blocks on a full pipe.
    threading.Thread(target=_drain, args=(replica,), daemon=True).start()
    return replica


def _drain(replica: Replica) -> None:
    assert replica.process.stdout is not None
    for line in replica.process.stdout:
        replica.log.append(line)
        del replica.log[:-200]


def nginx_config(workdir: Path, listen: int, upstreams: Sequence[int]) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;" for port in upstreams)
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream batchery {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{listen};
        client_max_body_size 16m;
        location / {{
            proxy_pass http://batchery;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # The replicas trust X-Forwarded-For from this address only (BATCHERY_TRUSTED_PROXIES).
            proxy_bind {PROXY_ADDRESS};
            # A replica that refuses or resets connections (stopped, draining, killed) or answers 502/503:
            # try the next. Inference is safe to repeat, so POSTs are retried too (non_idempotent).
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 4;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(workdir: Path, upstreams: Sequence[int]) -> Iterator[str]:
    """nginx in the foreground with its own config and temp paths in `workdir`; yields its URL."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        raise FileNotFoundError("nginx is not installed: apt-get install nginx")
    port = free_port()
    config = workdir / "nginx.conf"
    config.write_text(nginx_config(workdir, port, upstreams))
    command = [binary, "-p", str(workdir), "-c", str(config), "-e", str(workdir / "nginx-error.log")]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as process:
        try:
            wait_until(lambda: process.poll() is not None or _connects(port), "nginx listening", 30)
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited: {process.stderr.read() if process.stderr else ''}")
            yield f"http://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def cluster(
    replicas: int = 3,
    targets: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    batchery: str | None = None,
) -> Iterator[Cluster]:
    """Redis, `replicas` batchery processes serving `targets`, and nginx in front; all stopped on exit."""
    executable = batchery or shutil.which("batchery") or str(Path(sys.executable).parent / "batchery")
    if not Path(executable).exists():
        raise FileNotFoundError(
            f"batchery is not installed for {sys.executable}: run this script with the project's .venv/bin/python, "
            "activate the virtual environment, or pass --batchery PATH"
        )
    command = [executable, "serve"]
    with tempfile.TemporaryDirectory(prefix="batchery-replicas-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx's workers (user nobody when started as root) use temp paths in here
        with redis_server(workdir) as redis_url:
            settings = {
                "BATCHERY_HOST": "127.0.0.1",
                "BATCHERY_PORT": "0",
                "BATCHERY_LOG_LEVEL": "info",
                "BATCHERY_REDIS_URL": redis_url,
                "BATCHERY_CACHE": "redis",
                "BATCHERY_RATE_LIMIT_BACKEND": "redis",
                "BATCHERY_TRUSTED_PROXIES": PROXY_ADDRESS,
                **(env or {}),
            }
            started: list[Replica] = []
            try:
                for _ in range(replicas):
                    started.append(start_replica([*command, *targets], {**os.environ, **settings}))
                for replica in started:
                    wait_until(lambda r=replica: r.process.poll() is not None or _ready(r.url), f"{replica.url} ready")
                    if replica.process.poll() is not None:
                        raise RuntimeError("a replica exited while loading:\n" + "".join(replica.log))
                with nginx(workdir, [r.port for r in started]) as url:
                    yield Cluster(url, started, redis_url, workdir)
            finally:
                for replica in started:
                    if replica.process.poll() is None:
                        replica.process.terminate()
                for replica in started:
                    try:
                        replica.process.wait(30)
                    except subprocess.TimeoutExpired:
                        replica.process.kill()
                        replica.process.wait()
                    if replica.process.stdout is not None:
                        replica.process.stdout.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="model targets for `batchery serve` (none: the default model)")
    parser.add_argument("-n", "--replicas", type=int, default=2, help="how many batchery processes (default 2)")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE", help="extra setting")
    parser.add_argument("--batchery", help="the batchery executable (default: the one on PATH)")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with cluster(args.replicas, args.targets, extra, args.batchery) as running:
            print(f"{len(running.replicas)} replicas behind {running.url} (Redis {running.redis_url}):", flush=True)
            for replica in running.replicas:
                print(f"  {replica.url} (pid {replica.process.pid})", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
    except FileNotFoundError as exc:  # a program it needs is missing: one line that says which, not a traceback
        print(f"replicas: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

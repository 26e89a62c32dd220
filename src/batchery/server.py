"""Run an app on uvicorn (uvloop + httptools when installed), from Python or the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import uvicorn

from batchery.app.factory import create_app
from batchery.app.fastpath import FastDispatch
from batchery.config import Settings, unknown_variables
from batchery.engine import Engine
from batchery.errors import ConfigError, NotReady, describe
from batchery.metrics import Metrics
from batchery.reloading import FileWatch, reload_all

log = logging.getLogger("batchery.server")


class _Uvicorn(uvicorn.Server):
    """uvicorn's server with an event set once it listens (uvicorn itself only sets a flag)."""

    def __init__(
        self,
        config: uvicorn.Config,
        listening: asyncio.Event,
        on_exit: Callable[[], None],
        on_drain_expired: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self.listening = listening
        self.on_exit = on_exit
        self.on_drain_expired = on_drain_expired

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Before uvicorn's next tick closes the listener: /ready turns 503 and new requests get 503 at once.
        self.on_exit()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn cancels the request handlers once its graceful timeout passes, and a cancelled handler answers
        # a text/plain 500. Shortly before that, every input still queued or computing is answered 503 with
        # Retry-After instead, which clients and load balancers retry elsewhere.
        grace = float(self.config.timeout_graceful_shutdown or 0)
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(max(0.0, grace - min(0.5, grace / 4)), self.on_drain_expired) if grace else None
        try:
            await super().shutdown(sockets)
        finally:
            if expiry is not None:
                expiry.cancel()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises SIGTERM after a graceful shutdown, so the process would die by the signal; a drained
        # server exits 0 instead, which is what process managers and Kubernetes expect.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


class Server:
    """One serving process: the engine, its app and the HTTP server. `started` is set once it listens."""

    def __init__(self, models: Sequence[Any], settings: Settings | None = None) -> None:
        self.settings = settings or Settings.load()
        for variable in unknown_variables():
            log.warning(
                "%s is set but is not a batchery setting: it is ignored (batchery serve --help lists them)", variable
            )
        self.metrics = Metrics() if self.settings.metrics != "off" else None
        self.engine = Engine(
            models,
            workers=self.settings.workers or None,
            observer=self.metrics,
            load_timeout=self.settings.load_timeout_seconds,
        )
        self.app = create_app(self.engine, self.settings, metrics=self.metrics)
        self.started = asyncio.Event()
        self.url = ""
        self.load_error: BaseException | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[dict[str, str]]] = set()  # keeps SIGHUP reloads referenced until done

    async def serve(self, sock: socket.socket | None = None) -> int:
        """Serve until stopped; return the process exit code (1 when a model failed to load)."""
        if sock is None:
            sock = bind(self.settings.host, self.settings.port)
        config = uvicorn.Config(
            FastDispatch(self.app),
            loop="auto",
            http=_http_protocol(self.settings),
            log_level=self.settings.log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=max(1, round(self.settings.drain_seconds)),
            # Hostile clients (http_limits.py, docs/reliability.md): every connection's cost is bounded.
            timeout_keep_alive=self.settings.keep_alive_seconds,
            limit_concurrency=self.settings.max_connections or None,
            h11_max_incomplete_event_size=self.settings.max_header_bytes,
            # uvicorn would trust X-Forwarded-For from 127.0.0.1 by default; app/proxy.py decides whom to trust.
            proxy_headers=False,
        )
        server = _Uvicorn(config, self.started, self._begin_drain, self._drain_expired)
        self._uvicorn = server
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        listening = asyncio.create_task(self.started.wait())
        await asyncio.wait([serving, listening], return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if server.started:
            log.info("batchery listening on %s", self.url)
            loading: asyncio.Task[None] = self.app.state.loading
            loading.add_done_callback(self._on_loaded)
            self._install_reload_signal()
        await serving
        if self._watch is not None:
            self._watch.cancel()
        return 1 if self.load_error is not None or not server.started else 0

    def _install_reload_signal(self) -> None:
        """SIGHUP reloads every model (main thread only: signal handlers cannot be set elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: self._reloads.add(loop.create_task(self.reload())))

    async def reload(self) -> dict[str, str]:
        """Reload every model without dropping a request; a model that fails keeps its old version."""
        log.info("reloading every model")
        return await reload_all(self.engine)

    def _on_loaded(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            log.info("batchery is ready on %s", self.url)
            if self.settings.watch:
                self._watch = asyncio.get_running_loop().create_task(FileWatch(self.engine).run())
            return
        self.load_error = error
        log.error("start-up failed: %s", describe(error))
        self.stop()

    def stop(self) -> None:
        """Begin a graceful shutdown: stop accepting, drain, exit."""
        self._begin_drain()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True

    def _drain_expired(self) -> None:
        error = NotReady(
            f"the server is shutting down and its drain time ({self.settings.drain_seconds:g}s) ran out before this "
            "request was computed; retry it",
            retry_after=1.0,
        )
        aborted = self.engine.abort(error)
        if aborted:
            log.warning("drain time ran out: %d queued or computing input(s) answered with 503", aborted)

    def _begin_drain(self) -> None:
        # Runs in a signal handler: only flag assignments. Queued and running inputs still finish (Engine.stop).
        if self.app.state.drain_started is None:
            self.app.state.drain_started = time.monotonic()
        self.engine.ready = False
        self.engine.accepting = False


def _http_protocol(settings: Settings) -> Any:
    """httptools with head size and read timeouts (http_limits.py); h11 (size-limited by uvicorn) without it."""
    try:
        from batchery.http_limits import LimitedHttpTools
    except ImportError:
        return "h11"
    return LimitedHttpTools.configured(
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        send_timeout=settings.send_timeout_seconds,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 picks a free one); ConfigError when it cannot listen there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {_address(host, port)}: {_why(exc)}") from exc
    return sock


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _why(exc: OSError) -> str:
    """What went wrong and what to do about it, for the errors people meet when choosing a host and port."""
    if isinstance(exc, socket.gaierror):
        return f"the host does not resolve ({exc.strerror}); pick --host, such as 127.0.0.1 or 0.0.0.0"
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another server running? pick --port)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges; pick --port above 1023)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no interface on this machine has that address; pick --host, such as 127.0.0.1 or 0.0.0.0"
    return f"{exc.strerror or exc}; check --host and --port"


#: Seconds a thread may hold the GIL while another waits for it, in a serving process.
SWITCH_INTERVAL = 0.0005


def serve(*models: Any, host: str | None = None, port: int | None = None, **settings: Any) -> None:
    """Serve `models` over HTTP until interrupted; exits the process with 1 if a model fails to load."""
    resolved = Settings.load({"host": host, "port": port, **settings})
    from batchery.runtimes.onnx_impl import opt_out_of_telemetry

    opt_out_of_telemetry()  # a server writes nothing outside its cache directory (docs/reliability.md)
    # A lane coming back from a GIL-free runtime call waits for the event loop to hand the GIL over; Python's
    # default 5 ms switch interval puts up to that much on every batch (measured: batch-1 p50 0.6 ms lower).
    sys.setswitchinterval(SWITCH_INTERVAL)
    logging.basicConfig(level=resolved.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not models:
        from batchery.models.embedding import SentenceEmbedder

        models = (SentenceEmbedder(),)
    code = _run(Server(models, resolved))
    if code:
        raise SystemExit(code)


def _run(server: Server) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(server.serve())
    return uvloop.run(server.serve())

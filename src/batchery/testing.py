"""Fakes and a running-server helper, public so users can test their own servers the same way."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from batchery.config import Settings
from batchery.model import Model
from batchery.server import Server, bind


class EchoModel(Model):
    """Returns each input unchanged and records the size of every batch it saw."""

    name = "echo"
    max_batch_size = 64
    example = "warm-up"

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def predict(self, batch: list[Any]) -> list[Any]:
        self.batch_sizes.append(len(batch))
        return list(batch)


class SleepModel(Model):
    """Sleeps `seconds` per batch (releasing the GIL, like a real runtime), then echoes."""

    name = "sleep"
    example = "warm-up"

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(self.seconds)
        return list(batch)


class FailingModel(Model):
    """Raises for any batch holding the input "fail"; echoes otherwise."""

    name = "failing"
    example = "warm-up"

    def predict(self, batch: list[Any]) -> list[Any]:
        if "fail" in batch:
            raise RuntimeError("asked to fail")
        return list(batch)


class WrongCountModel(Model):
    """Returns one output too few: the mistake batchery must report clearly."""

    name = "wrongcount"
    workers = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)[1:]


class BrokenSetupModel(Model):
    """Fails in `setup`, as a model with missing weights would."""

    name = "broken"

    def setup(self, device: str) -> None:
        raise FileNotFoundError("weights.bin not found")

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)


@asynccontextmanager
async def running_server(models: Sequence[Any], **settings: Any) -> AsyncIterator[Server]:
    """Serve `models` on 127.0.0.1 on a free port in this event loop; yields once every model is ready."""
    server = Server(models, Settings.load({"port": 0, "log_level": "warning", **settings}))
    task = asyncio.create_task(server.serve(bind("127.0.0.1", 0)))
    try:
        await server.started.wait()
        await server.app.state.loading
        yield server
    finally:
        server.stop()
        await task


@contextmanager
def server_thread(models: Sequence[Any], **settings: Any) -> Iterator[Server]:
    """Like `running_server`, on its own thread and event loop, for synchronous code."""
    holder: dict[str, Any] = {}
    ready = threading.Event()
    stop = threading.Event()

    async def main() -> None:
        async with running_server(models, **settings) as server:
            holder["server"] = server
            ready.set()
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="batchery-test-server", daemon=True)
    thread.start()
    ready.wait()
    if "error" in holder:
        raise holder["error"]
    try:
        yield holder["server"]
    finally:
        stop.set()
        thread.join()

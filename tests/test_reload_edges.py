"""Hot reload's edges: which source a later reload rebuilds, swaps inside one request, start-up, failures, races."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from batchery import loader
from batchery.engine import Engine
from batchery.errors import Conflict, ModelLoadError
from batchery.model import Model
from batchery.reloading import FileWatch, reload_all
from batchery.testing import EchoModel, running_server

ADMIN = "admin-secret"

SOURCE = """
from batchery import Model


class M(Model):
    name = "m"
    example = "warm"

    def predict(self, batch):
        return ["{tag}:" + str(x) for x in batch]
"""


def write(path: Path, tag: str, *, extra: str = "") -> None:
    path.write_text(extra + SOURCE.format(tag=tag))
    stamp = time.time() + len(tag)  # a newer mtime on each write, even on coarse clocks
    os.utime(path, (stamp, stamp))


async def test_a_plain_reload_after_a_reload_to_another_file_rebuilds_from_that_file(tmp_path: Path) -> None:
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    write(first, "one")
    write(second, "two")
    served = loader.served(f"{first}:M")
    async with (
        running_server([served], admin_api_key=ADMIN) as server,
        httpx.AsyncClient(base_url=server.url, headers={"X-API-Key": ADMIN}) as http,
    ):
        moved = await http.post("/admin/models/m/reload", json={"target": f"{second}:M"})
        assert moved.status_code == 200, moved.text
        assert server.engine.handle("m").watch_files == [str(second.resolve())]
        # The file changed since it was last imported: a reload to it must run the new code.
        write(second, "two-b")
        again = await http.post("/admin/models/m/reload", json={"target": f"{second}:M", "version": "2b"})
        assert again.status_code == 200, again.text
        assert (await http.post("/v1/models/m/predict", json={"input": 1})).json()["output"] == "two-b:1"
        # A reload with no target (and SIGHUP, and --watch) rebuilds the version serving now, not the first.
        plain = await http.post("/admin/models/m/reload")
        assert plain.status_code == 200, plain.text
        assert (await http.post("/v1/models/m/predict", json={"input": 1})).json()["output"] == "two-b:1"
        rolled = await http.post("/admin/models/m/rollback")
        assert rolled.status_code == 200
        assert server.engine.handle("m").watch_files == [str(second.resolve())]


class Gated(Model):
    """One lane, batches of 2. On version 1 a batch holding "c" waits for `gate`, so a test can swap versions while
    one request's inputs are split over batches before and after the swap."""

    name = "gated"
    version = "1"
    tag = "v1"
    workers = 1
    max_batch_size = 2
    example = "warm"
    gate = threading.Event()

    def predict(self, batch: list[Any]) -> list[Any]:
        if self.tag == "v1" and "c" in batch:
            self.gate.wait(30)
        return [f"{self.tag}:{x}" for x in batch]


class GatedV2(Gated):
    version = "2"
    tag = "v2"


async def test_a_request_whose_inputs_straddle_a_swap_is_answered_by_one_version() -> None:
    Gated.gate.clear()
    engine = Engine([Gated()])
    await engine.start()
    try:
        request = asyncio.create_task(engine.infer_versioned("gated", ["a", "b", "c", "d", "e"]))
        give_up = time.monotonic() + 30
        while engine.handle("gated").batcher.stats.batches < 2:  # [a, b] done on v1, [c, d] held on v1
            assert time.monotonic() < give_up, "the second batch never started"
            await asyncio.sleep(0.01)
        await engine.reload("gated", GatedV2())  # [e] now goes to version 2
        Gated.gate.set()
        outputs, version = await request
    finally:
        Gated.gate.set()
        await engine.stop()
    assert {output.partition(":")[0] for output in outputs} == {"v2"}, outputs
    assert version == "2"


class SlowSetup(Model):
    name = "starting"
    version = "1"
    tag = "v1"
    example = "warm"
    workers = 1

    def setup(self, device: str) -> None:
        time.sleep(0.5)

    def predict(self, batch: list[Any]) -> list[Any]:
        return [f"{self.tag}:{x}" for x in batch]


class QuickV2(SlowSetup):
    version = "2"
    tag = "v2"

    def setup(self, device: str) -> None:
        pass


async def test_a_reload_sent_during_start_up_is_not_undone_by_the_initial_load() -> None:
    engine = Engine([SlowSetup()])
    starting = asyncio.create_task(engine.start())
    await asyncio.sleep(0.1)
    label = await engine.reload("starting", QuickV2())  # waits for the initial load, then swaps
    await starting
    try:
        assert label == "2"
        assert await engine.infer("starting", ["x"]) == ["v2:x"]
        assert engine.handle("starting").version == "2"
    finally:
        await engine.stop()


async def test_a_reload_refuses_a_model_whose_start_up_failed() -> None:
    engine = Engine([SlowSetup()])
    handle = engine.handle("starting")
    handle.status = "failed"
    with pytest.raises(Conflict, match="is failed, not serving"):
        await handle.reload(QuickV2())


async def test_an_import_that_raises_is_a_logged_failed_reload_and_the_watch_keeps_watching(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "watched.py"
    write(path, "w1")
    engine = Engine([loader.served(f"{path}:M")])
    await engine.start()
    watch = asyncio.create_task(FileWatch(engine, interval=0.05).run())
    handle = engine.handle("m")
    try:
        write(path, "w2", extra="raise RuntimeError('half-saved file')\n")
        for _ in range(100):
            if handle.reload_failures:
                break
            await asyncio.sleep(0.05)
        assert handle.reload_failures == 1
        assert "half-saved file" in caplog.text
        assert await engine.infer("m", [1]) == ["w1:1"]  # the old version keeps serving
        results = await reload_all(engine)  # SIGHUP
        assert results["m"].startswith("failed: model 'm' could not be imported again")
        write(path, "w3")
        for _ in range(100):
            if await engine.infer("m", [1]) == ["w3:1"]:
                break
            await asyncio.sleep(0.05)
        assert await engine.infer("m", [1]) == ["w3:1"]  # the watch outlived the failure
    finally:
        watch.cancel()
        await engine.stop()


class Arrays(Model):
    """Returns a numpy array, one row per input: what an ONNX Runtime session's `run` gives back."""

    name = "arrays"
    example = 1.0

    def predict(self, batch: list[Any]) -> Any:
        return np.asarray(batch, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)


class Mapping(Model):
    name = "mapping"
    example = 1

    def predict(self, batch: list[Any]) -> Any:
        return {i: x for i, x in enumerate(batch)}


async def test_an_array_of_rows_is_a_batch_of_outputs_and_warm_up_checks_what_serving_checks() -> None:
    async with running_server([Arrays()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post("/v1/models/arrays/predict", json={"inputs": [1.0, 2.0]})
        assert response.status_code == 200, response.text
        assert response.json()["outputs"] == [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    engine = Engine([Mapping()])
    with pytest.raises(ModelLoadError, match="returned a dict for a batch of 1 inputs"):
        await engine.start()


class Hangs(Model):
    name = "hangs"
    example = "warm"
    release = threading.Event()

    def setup(self, device: str) -> None:
        self.release.wait(30)

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)


class Plain(Model):
    name = "hangs"
    version = "2"
    example = "warm"

    def predict(self, batch: list[Any]) -> list[Any]:
        return [f"ok:{x}" for x in batch]


async def test_a_setup_that_hangs_in_a_reload_times_out_and_frees_later_reloads() -> None:
    engine = Engine([Plain()], load_timeout=0.3)
    await engine.start()
    try:
        started = time.monotonic()
        with pytest.raises(ModelLoadError, match=r"did not finish setup and warm-up within 0.3s"):
            await engine.reload("hangs", Hangs())
        assert time.monotonic() - started < 5
        assert await engine.reload("hangs", Plain(), "3") == "3"  # not blocked behind the hung one
        assert await engine.infer("hangs", ["x"]) == ["ok:x"]
    finally:
        Hangs.release.set()
        await engine.stop()


class Fragile(Model):
    """Its setup fails while `broken` is set: a version whose files went missing."""

    name = "fragile"
    example = "warm"
    broken = False

    def setup(self, device: str) -> None:
        if Fragile.broken:
            raise FileNotFoundError("weights.bin")

    def predict(self, batch: list[Any]) -> list[Any]:
        return [f"{self.version}:{x}" for x in batch]


async def test_a_failed_rollback_keeps_the_version_it_tried_to_go_back_to() -> None:
    engine = Engine([Fragile()])
    await engine.start()
    try:
        await engine.reload("fragile", Fragile(), "2")
        Fragile.broken = True
        with pytest.raises(ModelLoadError):
            await engine.rollback("fragile")
        Fragile.broken = False
        assert await engine.rollback("fragile") == "1"
        assert await engine.infer("fragile", ["x"]) == ["1:x"]
    finally:
        Fragile.broken = False
        await engine.stop()


class SlowToLoad(Fragile):
    def setup(self, device: str) -> None:
        time.sleep(0.4)


async def test_a_rollback_during_a_reload_waits_for_it_and_keeps_the_history_straight() -> None:
    engine = Engine([Fragile()])
    await engine.start()
    try:
        await engine.reload("fragile", Fragile(), "2")
        reloading = asyncio.create_task(engine.reload("fragile", SlowToLoad(), "3"))
        await asyncio.sleep(0.1)
        assert await engine.rollback("fragile") == "2"  # from 3, once the reload to 3 is done
        assert await reloading == "3"
        assert engine.handle("fragile").info().previous_versions == ["1", "3"]
    finally:
        await engine.stop()


class FailsOnItsExample(Model):
    name = "example-fails"
    example = "warm"

    def predict(self, batch: list[Any]) -> list[Any]:
        raise ValueError("cannot handle 'warm'")


async def test_a_warm_up_failure_says_it_was_the_warm_up_and_which_step() -> None:
    with pytest.raises(ModelLoadError) as failure:
        await Engine([FailsOnItsExample()]).start()
    message = failure.value.message
    assert "failed its warm-up: predict on a batch of 1 copies of `example` raised" in message
    assert "cannot handle 'warm'" in message
    assert "setup()" not in message


class SecondModel(Plain):
    name = "second"


async def test_a_reload_of_a_model_still_waiting_for_its_start_up_applies_after_it() -> None:
    engine = Engine([SlowSetup(), SecondModel()])  # loaded one after the other: "second" waits its turn
    starting = asyncio.create_task(engine.start())
    await asyncio.sleep(0.1)
    assert engine.handle("second").status == "pending"
    label = await engine.reload("second", SecondModel(), "9")  # before the fix: 409 "pending, not serving"
    await starting
    try:
        assert label == "9"
        assert engine.handle("second").version == "9"
    finally:
        await engine.stop()


def test_outputs_without_an_order_or_rows_are_refused() -> None:
    from batchery.batching.lane import checked_predict
    from batchery.errors import PredictError

    class Sets(Model):
        def predict(self, batch: list[Any]) -> Any:
            return set(batch)

    with pytest.raises(PredictError, match="returned a set for a batch of 2 inputs"):
        checked_predict(Sets(), [1, 2], "sets")
    assert checked_predict(Arrays(), [1.0, 2.0], "arrays")[1].tolist() == [2.0, 2.0, 2.0]


class Closing(EchoModel):
    """Counts the copies closed after their last batch."""

    closed = 0

    def close(self) -> None:
        Closing.closed += 1


async def test_each_retired_workers_model_is_closed_after_a_reload() -> None:
    Closing.closed = 0
    model = Closing()
    model.workers = 2
    async with running_server([model]) as server:
        await server.engine.reload("echo", Closing())
        for _ in range(500):  # each retired worker closes its own copy, on its own thread
            if Closing.closed == 2:
                break
            await asyncio.sleep(0.01)
        assert Closing.closed == 2  # the serving version's two are not

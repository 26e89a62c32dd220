"""Core accounting: per-thread grants, and core slots that let only as many native calls run as there are cores."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import pytest

from batchery import cores
from batchery.testing import EchoModel, running_server
from batchery.workers.process import ProcessModel


def test_a_grant_holds_for_its_thread_and_block_only() -> None:
    seen: list[int] = []
    with cores.granted(2):
        other = threading.Thread(target=lambda: seen.append(cores.granted_cores()))
        other.start()
        other.join()
        assert cores.granted_cores() == 2
    assert cores.granted_cores() == 1
    assert seen == [1]


def test_core_slots_let_one_call_per_core_run_at_a_time() -> None:
    limit = cores.available()
    running = most = 0
    lock = threading.Lock()

    def call() -> None:
        nonlocal running, most
        with cores.core_slot():
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.05)
            with lock:
                running -= 1

    threads = [threading.Thread(target=call) for _ in range(2 * limit + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == limit


def test_pinned_cpus_are_taken_by_position_and_wrap_around() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    assert cores.cpus_at(0, 1) == (cpus[0],)
    assert cores.cpus_at(len(cpus), 1) == (cpus[0],)  # past the last CPU: the first again
    assert len(cores.cpus_at(0, 10_000)) == len(cpus)  # never more than there are


class Other(EchoModel):
    name = "other"


async def test_pinned_process_workers_each_run_on_cpus_of_their_own() -> None:
    if cores.available() < 2:
        pytest.skip("needs two cores to pin workers apart")
    models = [ProcessModel(EchoModel(), pin_cpus=True), ProcessModel(Other(), pin_cpus=True)]
    for model in models:  # one worker of one core each: echo's on the first CPU, other's on the second
        model.workers = model.threads_per_worker = 1
    async with running_server(models, admin_api_key="admin") as server:

        def pinned() -> list[set[int]]:
            return [
                os.sched_getaffinity(lane.model.pid)
                for name in ("echo", "other")
                for lane in server.engine.handle(name).lanes
            ]

        at_start = pinned()
        # A crash and restart keeps the child's CPUs (the lane is idle: its next batch restarts the child).
        child = server.engine.handle("echo").lanes[0].model
        os.kill(child.pid, signal.SIGKILL)
        child._process.join(5)
        assert await asyncio.to_thread(child.predict, ["x"]) == ["x"]
        after_restart = pinned()
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            for _ in range(3):  # and so do hot reloads: the new version's workers take their place
                for name in ("echo", "other"):
                    reload = await http.post(f"/admin/models/{name}/reload", headers={"X-API-Key": "admin"})
                    assert reload.status_code == 200, reload.text
            assert (await http.post("/v1/models/echo/predict", json={"input": "x"})).status_code == 200
        after_reloads = pinned()
    first, second = sorted(os.sched_getaffinity(0))[:2]
    assert at_start == [{first}, {second}]
    assert after_restart == at_start
    assert after_reloads == at_start

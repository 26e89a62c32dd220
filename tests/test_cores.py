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


def test_claims_take_the_cpus_in_turn() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    first, second = cores.claim(1), cores.claim(1)
    assert first != second or len(cpus) == 1
    assert set(first) | set(second) <= set(cpus)
    assert len(cores.claim(10_000)) == len(cpus)  # never more than there are


async def test_pinned_process_workers_each_run_on_cpus_of_their_own() -> None:
    if cores.available() < 2:
        pytest.skip("needs two cores to pin two workers apart")
    model = ProcessModel(EchoModel(), pin_cpus=True)
    async with running_server([model]) as server:
        children = [lane.model for lane in server.engine.handle("echo").lanes]
        pinned = [os.sched_getaffinity(child.pid) for child in children]
        # A crash and restart keeps the child's CPUs (the lane is idle: its next batch restarts the child).
        os.kill(children[0].pid, signal.SIGKILL)
        children[0]._process.join(5)
        assert await asyncio.to_thread(children[0].predict, ["x"]) == ["x"]
        restarted = os.sched_getaffinity(children[0].pid)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.post("/v1/models/echo/predict", json={"input": "x"})).status_code == 200
    assert len(pinned) == 2
    assert all(len(cpus) == 1 for cpus in pinned)
    assert pinned[0] != pinned[1]
    assert restarted == pinned[0]

"""Core accounting: per-thread grants, and core slots that let only as many native calls run as there are cores."""

from __future__ import annotations

import threading
import time

from batchery import cores


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

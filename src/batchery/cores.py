"""CPU core accounting: how many cores this process may use, and how many the current batch was granted.

When every lane of a model is idle and one batch holds all the work, the batcher grants that batch every
core, so a model whose runtime can widen (more intra-op threads) answers a lone request fastest; under load
each lane gets its fair share, so lanes never oversubscribe the machine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


def available() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def granted_cores() -> int:
    """Cores granted to the batch that the calling lane is computing (1 outside a batch)."""
    return int(getattr(_local, "cores", 1))


@contextmanager
def granted(cores: int) -> Iterator[None]:
    """Record, for this thread, that the current batch may use `cores` cores."""
    previous = getattr(_local, "cores", 1)
    _local.cores = cores
    try:
        yield
    finally:
        _local.cores = previous


def cpus_at(first: int, count: int) -> tuple[int, ...]:
    """`count` CPUs of this process's affinity set, from its `first`-th on (wrapping around): the CPUs a pinned
    worker takes, by its position among the pinned workers. Outside Linux (no affinity), an empty tuple."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return ()
    count = max(1, min(count, len(cpus)))
    return tuple(cpus[(first + offset) % len(cpus)] for offset in range(count))


_slots = threading.BoundedSemaphore(available())


@contextmanager
def core_slot() -> Iterator[None]:
    """Hold one of this process's core slots (one per core) while a single-threaded native call computes.

    A pipeline can have more single-threaded lanes than cores (the OCR example: five on two). Left alone, the OS
    time-slices their calls on the same cores, and each switch evicts the other call's working set from the
    core's cache; lanes that run their calls inside a slot compute as many at a time as there are cores.
    """
    with _slots:
        yield

"""Shared fixtures: fakes come from batchery.testing, servers bind 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any

import uvloop

pytest_plugins = ["redis_fixture"]  # a real redis-server on a free loopback port (tests/redis_fixture.py)

# The default model's tokenizer must not start its own thread pool inside the tests' lanes.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    # The server runs on uvloop in production; the stdlib loop adds ~40 ms per loopback round trip here.
    return {"uvloop": uvloop.new_event_loop}

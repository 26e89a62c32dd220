"""An in-process LRU cache of response bytes, bounded in bytes, with a time to live."""

from __future__ import annotations

import time
from collections import OrderedDict

#: Bytes counted per entry on top of its key's and value's lengths: the str and bytes headers, the tuple, the
#: expiry float, the ordered dict's slot and link, and its table's spare room (measured with tracemalloc: 1.0x of
#: `max_bytes` held for small responses).
ENTRY_OVERHEAD = 320


class MemoryCache:
    """Least recently used entries go first once `max_bytes` is reached; `ttl` 0 means entries never expire.

    Used from the event loop only, so it needs no lock.
    """

    backend = "memory"

    def __init__(self, *, max_bytes: int, ttl: float) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.size = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires and expires <= time.monotonic():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        cost = len(key) + len(value) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return  # one response larger than the whole cache: keep the rest instead
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (time.monotonic() + self.ttl if self.ttl else 0.0, value)
        self.size += cost
        while self.size > self.max_bytes:
            self._remove(next(iter(self._entries)))

    async def clear(self) -> None:
        self._entries.clear()
        self.size = 0

    def _remove(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.size -= len(key) + len(value) + ENTRY_OVERHEAD

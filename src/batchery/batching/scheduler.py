"""The queue in front of a batcher: per-client queues, priorities, weighted round-robin, shedding under overload.

- Higher priority joins the next batch first.
- Within a priority, clients take turns (weighted round-robin), so one client's burst cannot starve others.
- Bounded: when full, a new item from a client with a shorter (or lower-priority) backlog sheds the newest item
  of the longest backlog at the lowest priority; otherwise the new item is refused. Either way someone gets 503.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence

from batchery.batching.records import Item

DEFAULT_CLIENT = ""
_REQUEUED = 1 << 30  # a priority above any client's, for items put back at the front


class _Level:
    """One priority level: a deque per client and the round-robin order of clients with work."""

    __slots__ = ("credit", "order", "queues")

    def __init__(self) -> None:
        self.queues: dict[str, deque[Item]] = {}
        self.order: deque[str] = deque()
        self.credit: dict[str, int] = {}

    def push(self, client: str, item: Item) -> None:
        queue = self.queues.get(client)
        if queue is None:
            queue = self.queues[client] = deque()
            self.order.append(client)
        queue.append(item)

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())


class Scheduler:
    """Items waiting for a batch, across clients and priorities."""

    def __init__(self, max_items: int, weight: Callable[[str], int] | None = None) -> None:
        self.max_items = max_items
        self._weight = weight or (lambda client: 1)
        self._levels: dict[int, _Level] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def push(self, items: Sequence[Item], client: str = DEFAULT_CLIENT, priority: int = 0) -> list[Item]:
        """Queue all of `items` or none; return the items shed to make room, or `items` themselves if refused.

        A request's inputs are admitted together: queuing part of one would compute inputs whose request fails.
        """
        shed: list[tuple[Item, str, int]] = []
        while self._count + len(items) > self.max_items:
            found = self._victim(client, priority)
            if found is None:
                for victim, owner, level in reversed(shed):  # not enough room after all: undo, in order
                    self._append(victim, owner, level)
                return list(items)
            shed.append(found)
        for item in items:
            self._append(item, client, priority)
        return [victim for victim, _, _ in shed]

    def _append(self, item: Item, client: str, priority: int) -> None:
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = _Level()
        level.push(client, item)
        self._count += 1

    def requeue(self, item: Item) -> None:
        """Put `item` back at the very front (it was popped but did not fit the batch); never sheds."""
        level = self._levels.get(_REQUEUED)
        if level is None:
            level = self._levels[_REQUEUED] = _Level()
        level.push(DEFAULT_CLIENT, item)
        self._count += 1

    def pop(self, limit: int) -> Iterator[Item]:
        """Yield up to `limit` items: highest priority first, clients in weighted round-robin within a level."""
        taken = 0
        for priority in sorted(self._levels, reverse=True):
            level = self._levels[priority]
            while level.order and taken < limit:
                client = level.order[0]
                queue = level.queues[client]
                turn = level.credit.get(client) or self._weight(client)
                item = queue.popleft()
                self._count -= 1
                taken += 1
                if not queue:
                    del level.queues[client]
                    level.order.popleft()
                    level.credit.pop(client, None)
                elif turn > 1:
                    level.credit[client] = turn - 1
                else:
                    level.credit.pop(client, None)
                    level.order.rotate(-1)
                yield item
            if not level.order:
                del self._levels[priority]
            if taken >= limit:
                return

    def oldest(self) -> Item | None:
        """The longest-waiting item at the highest priority (its wait drives the flush timer)."""
        for priority in sorted(self._levels, reverse=True):
            level = self._levels[priority]
            heads = [q[0] for q in level.queues.values() if q]
            if heads:
                return min(heads, key=lambda item: item.enqueued_at)
        return None

    def waiting_since(self, client: str, priority: int) -> float | None:
        """When the longest-waiting item of `client` at `priority` was queued; None when it has none queued."""
        level = self._levels.get(priority)
        queue = level.queues.get(client) if level is not None else None
        return queue[0].enqueued_at if queue else None

    def items(self) -> Iterator[Item]:
        for level in self._levels.values():
            for queue in level.queues.values():
                yield from queue

    def _victim(self, client: str, priority: int) -> tuple[Item, str, int] | None:
        """Remove the newest item of the longest backlog at the lowest priority, if shedding it is fairer than
        refusing; return it with its client and priority (so it can be put back exactly where it was)."""
        if not self._levels:
            return None
        lowest = min(self._levels)
        if lowest > priority:
            return None
        level = self._levels[lowest]
        longest = max(level.queues, key=lambda c: len(level.queues[c]))
        own = len(self._levels[priority].queues.get(client, ())) if priority in self._levels else 0
        if lowest == priority and (longest == client or len(level.queues[longest]) <= own + 1):
            return None
        queue = level.queues[longest]
        victim = queue.pop()
        self._count -= 1
        if not queue:
            del level.queues[longest]
            level.order.remove(longest)
            level.credit.pop(longest, None)
            if not level.queues:
                del self._levels[lowest]
        return victim, longest, lowest

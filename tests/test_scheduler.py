"""The fair, bounded queue: priorities, weighted round-robin, shedding the longest backlog."""

from __future__ import annotations

import asyncio

from batchery.batching.records import Item
from batchery.batching.scheduler import Scheduler


def item(payload: object) -> Item:
    loop = asyncio.new_event_loop()
    try:
        return Item(payload, loop.create_future(), 0.0)
    finally:
        loop.close()


def test_higher_priority_goes_first_then_clients_take_turns() -> None:
    scheduler = Scheduler(100)
    scheduler.push([item(f"a{i}") for i in range(4)], client="a")
    scheduler.push([item(f"b{i}") for i in range(2)], client="b")
    scheduler.push([item("urgent")], client="c", priority=5)
    taken = [i.payload for i in scheduler.pop(10)]
    assert taken == ["urgent", "a0", "b0", "a1", "b1", "a2", "a3"]
    assert len(scheduler) == 0


def test_weights_give_heavier_clients_more_turns() -> None:
    scheduler = Scheduler(100, weight=lambda client: 3 if client == "big" else 1)
    scheduler.push([item(f"big{i}") for i in range(6)], client="big")
    scheduler.push([item(f"small{i}") for i in range(6)], client="small")
    taken = [i.payload for i in scheduler.pop(8)]
    assert taken == ["big0", "big1", "big2", "small0", "big3", "big4", "big5", "small1"]


def test_a_full_queue_sheds_the_flooding_client_not_the_newcomer() -> None:
    scheduler = Scheduler(4)
    assert scheduler.push([item(f"flood{i}") for i in range(4)], client="flood") == []
    shed = scheduler.push([item("polite")], client="polite")
    assert [i.payload for i in shed] == ["flood3"]
    refused = scheduler.push([item("flood-more")], client="flood")
    assert [i.payload for i in refused] == ["flood-more"]
    assert sorted(i.payload for i in scheduler.items()) == ["flood0", "flood1", "flood2", "polite"]


def test_lower_priority_is_shed_before_higher() -> None:
    scheduler = Scheduler(2)
    scheduler.push([item("low0"), item("low1")], client="x", priority=0)
    shed = scheduler.push([item("high")], client="x", priority=1)
    assert [i.payload for i in shed] == ["low1"]
    assert [i.payload for i in scheduler.pop(5)] == ["high", "low0"]


def test_requeued_items_come_back_first() -> None:
    scheduler = Scheduler(10)
    scheduler.push([item("a"), item("b")])
    (first,) = scheduler.pop(1)
    scheduler.requeue(first)
    assert [i.payload for i in scheduler.pop(5)] == ["a", "b"]


def test_a_request_is_admitted_whole_or_not_at_all() -> None:
    scheduler = Scheduler(4)
    scheduler.push([item(f"a{i}") for i in range(3)], client="a")
    request = [item("a-x"), item("a-y")]
    assert scheduler.push(request, client="a") == request  # no room, nobody fairer to shed: refused whole
    assert sorted(i.payload for i in scheduler.items()) == ["a0", "a1", "a2"]
    shed = scheduler.push([item("b0"), item("b1")], client="b")
    assert [i.payload for i in shed] == ["a2"]
    assert sorted(i.payload for i in scheduler.items()) == ["a0", "a1", "b0", "b1"]
    too_big = [item(f"c{i}") for i in range(5)]
    assert scheduler.push(too_big, client="c") == too_big
    assert sorted(i.payload for i in scheduler.items()) == ["a0", "a1", "b0", "b1"]  # victims put back in place
    assert [i.payload for i in scheduler.pop(4)] == ["a0", "b0", "a1", "b1"]

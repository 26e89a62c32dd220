"""What the batcher expects of the clients it just answered: back at once in a closed loop, and not at all from
a pipeline stage's inputs (policy.ReturningClients)."""

from __future__ import annotations

import pytest

from batchery.batching.policy import ReturningClients


def window(_pending: int) -> float:
    return 0.005


def test_answered_clients_are_expected_back_within_their_window_only() -> None:
    clients = ReturningClients()
    clients.answered(4, now=10.0, window=window)
    assert clients.expected(10.001) == 4
    clients.arrived(3, now=10.002)
    assert clients.expected(10.002) == 1
    assert clients.expected(10.006) == 0  # the window is over
    clients.arrived(1, now=10.007)  # too late to count as back
    clients.answered(4, now=11.0, window=window)  # closes the first window: 3 of 4 came back in time
    assert clients.share_back == pytest.approx(0.95)  # weight 0.2: 1.0 + 0.2 * (0.75 - 1.0)


def test_clients_that_stop_coming_back_are_no_longer_waited_for_and_are_again_once_they_return() -> None:
    clients = ReturningClients()
    now = 0.0
    windows_until_given_up = 0
    while clients.expected(now) or windows_until_given_up == 0:
        now += 1.0  # each batch is answered long after the last window closed; nobody came back
        clients.answered(8, now, window)
        windows_until_given_up += 1
        assert windows_until_given_up < 10
    assert clients.share_back < 0.5
    assert windows_until_given_up >= 3  # one window without returns is not enough to give up
    for _ in range(5):  # a closed loop again: every answered client is back in time
        now += 1.0
        clients.answered(8, now, window)
        clients.arrived(8, now + 0.001)
    now += 1.0
    clients.answered(8, now, window)
    assert clients.expected(now) == 8

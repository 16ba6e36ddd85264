"""Abuse limits with a clock the test moves: what is refused at the limit is allowed again after."""

from __future__ import annotations

from kartero.policy.limits import ConnectionLimits, Greylist, SlidingWindow, parse_networks


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_forgets_old_events() -> None:
    clock = Clock()
    window = SlidingWindow(60.0, clock)
    for _ in range(3):
        window.record("u")
        clock.now += 10
    assert window.count("u") == 3 and window.retry_after("u") == 30.0
    clock.now += 31
    assert window.count("u") == 2
    clock.now += 60
    assert window.count("u") == 0 and window.retry_after("u") == 0.0


def test_connection_limits_at_once_and_per_minute() -> None:
    clock = Clock()
    limits = ConnectionLimits(concurrent=2, per_minute=3, exempt=parse_networks(["127.0.0.0/8"]), clock=clock)
    assert [limits.open("192.0.2.1") for _ in range(3)] == [None, None, "more than 2 connections at once"]
    limits.close("192.0.2.1")
    limits.close("192.0.2.1")
    assert limits.open("192.0.2.1") == "more than 3 connections a minute"  # two counted + the refused one
    limits.close("192.0.2.1")
    limits.close("192.0.2.1")
    clock.now += 61
    assert limits.open("192.0.2.1") is None
    assert all(limits.open("127.0.0.1") is None for _ in range(10))  # exempt
    assert limits.open("192.0.2.2") is None  # per address


def test_greylist_triplets() -> None:
    clock = Clock()
    grey = Greylist(delay_s=300, retry_window_s=3600, pass_s=86400, clock=clock)
    assert grey.wait("192.0.2.1", "a@x.test", "b@y.test") == 300
    clock.now += 100
    assert grey.wait("192.0.2.1", "a@x.test", "b@y.test") == 200  # too early
    clock.now += 200
    assert grey.wait("192.0.2.9", "A@x.test", "b@y.test") == 0  # same /24, case-insensitive: passes
    clock.now += 80000
    assert grey.wait("192.0.2.1", "a@x.test", "b@y.test") == 0  # remembered, and refreshed
    assert grey.wait("198.51.100.1", "a@x.test", "b@y.test") == 300  # another network
    clock.now += 4000
    assert grey.wait("198.51.100.1", "a@x.test", "b@y.test") == 300  # retried too late: starts over
    assert grey.wait("2001:db8:1:2::5", "a@x.test", "b@y.test") == 300
    clock.now += 300
    assert grey.wait("2001:db8:1:2::99", "a@x.test", "b@y.test") == 0  # same /64

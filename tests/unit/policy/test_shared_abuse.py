"""Issue 11: the abuse state a cluster shares (policy/shared.py). Two processes' throttles, sending counts
and greylists, each connected to one in-memory stand-in for the database, with clocks the test moves:
attempts spread over both count as if made at one; the database away leaves each counting alone."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from kartero.auth.accounts import DirectoryCache
from kartero.auth.throttle import AuthThrottle, Lockout
from kartero.policy.limits import Greylist
from kartero.policy.shared import MAX_PENDING, AbuseSync
from kartero.policy.submission import SubmissionPolicy
from kartero.store.interface import AbuseEvent, AbuseKind, StoreUnavailable

X = "192.0.2.10"
ALICE, BOB = "alice@example.test", "bob@example.test"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Table:
    """The database: every process's events in order."""

    rows: list[tuple[str, AbuseEvent]] = field(default_factory=list)
    is_away: bool = False


@dataclass
class FakeAbuseStore:
    table: Table
    origin: str
    read: int = 0
    is_behind: bool = False

    def exchange(self, outgoing: Sequence[AbuseEvent], since: float) -> list[AbuseEvent]:
        if self.table.is_away:
            raise StoreUnavailable("database unavailable: connection refused")
        self.table.rows.extend((self.origin, e) for e in outgoing)
        new, self.read = self.table.rows[self.read :], len(self.table.rows)
        return [e for origin, e in new if origin != self.origin and e.at >= since]

    def expire(self, before: Mapping[AbuseKind, float], max_rows: int) -> int:
        return 0


class Node:
    """One process: its throttle, submission policy and greylist, synchronised through `table`."""

    def __init__(self, table: Table, name: str, wall: Clock, monotonic: Clock) -> None:
        self.throttle = AuthThrottle(per_pair=4, clock=monotonic)
        # The directory is never consulted: the test counts messages, it does not check senders.
        self.submission = SubmissionPolicy(DirectoryCache.__new__(DirectoryCache), "example.test", 3)
        self.submission.sent.clock = monotonic
        self.greylist = Greylist(delay_s=300, clock=wall)
        self.sync = AbuseSync(FakeAbuseStore(table, name), self.throttle, self.submission, self.greylist, wall)

    def exchange(self) -> None:
        self.sync.apply(self.sync.exchange())


@pytest.fixture
def table() -> Table:
    return Table()


@pytest.fixture
def clocks() -> tuple[Clock, Clock]:
    """Wall clock (seconds since the epoch) and monotonic clock: they move together."""
    return Clock(1.8e9), Clock(5000.0)


@pytest.fixture
def nodes(table: Table, clocks: tuple[Clock, Clock]) -> tuple[Node, Node]:
    return Node(table, "a", *clocks), Node(table, "b", *clocks)


def fail(throttle: AuthThrottle, address: str = X, user: str = ALICE) -> None:
    assert throttle.reserve(address, user) is None
    throttle.failed(address, user)


def sync(nodes: tuple[Node, Node]) -> None:
    """Each process sends its events and reads the other's (one round for each direction)."""
    a, b = nodes
    a.exchange()
    b.exchange()
    a.exchange()


def advance(clocks: tuple[Clock, Clock], seconds: float) -> None:
    for clock in clocks:
        clock.now += seconds


def test_issue_11_failed_logins_at_two_processes_lock_out_as_fast_as_at_one(nodes: tuple[Node, Node]) -> None:
    """per_pair = 4: two failures at A and two at B lock the pair out at both (before: four at each)."""
    a, b = nodes
    fail(a.throttle)
    fail(a.throttle)
    fail(b.throttle)
    fail(b.throttle)
    sync(nodes)
    assert a.throttle.reserve(X, ALICE) is Lockout.PAIR
    assert b.throttle.reserve(X, ALICE) is Lockout.PAIR
    assert a.throttle.reserve(X, BOB) is None  # another account from that address goes on


def test_issue_11_remote_failures_leave_with_the_window(nodes: tuple[Node, Node], clocks: tuple[Clock, Clock]) -> None:
    a, b = nodes
    for _ in range(3):
        fail(b.throttle)
    b.exchange()
    advance(clocks, 600)
    a.exchange()  # read 600 s late (the database was away): they count for the rest of the window only
    fail(a.throttle)
    assert a.throttle.reserve(X, ALICE) is Lockout.PAIR
    advance(clocks, 301)
    assert a.throttle.reserve(X, ALICE) is None  # B's three are out of the window; A's one is not


def test_issue_11_a_success_at_one_process_takes_the_pairs_failures_back_at_the_other(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    for _ in range(3):
        fail(a.throttle)
    a.exchange()
    b.exchange()
    assert b.throttle.reserve(X, ALICE) is None
    b.throttle.succeeded(X, ALICE)  # the user typed it right at B
    b.exchange()
    a.exchange()
    for _ in range(3):
        fail(a.throttle)  # three more at A: with the old three it would be locked out
    assert a.throttle.reserve(X, ALICE) is None


def test_issue_11_the_sending_limit_counts_both_processes_together(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    for node in (a, a, b):
        node.submission.sent.record(ALICE)
        assert node.submission.publish is not None
        node.submission.publish(AbuseKind.SENT, (ALICE,))
    sync(nodes)
    assert a.submission.sent.count(ALICE) == b.submission.sent.count(ALICE) == 3
    assert b.submission.sent.count(BOB) == 0


def test_issue_11_a_triplet_greylisted_at_one_process_passes_at_the_other_after_the_delay(
    nodes: tuple[Node, Node], clocks: tuple[Clock, Clock]
) -> None:
    a, b = nodes
    assert a.greylist.wait("198.51.100.7", "s@sender.example", BOB) == 300
    a.exchange()
    b.exchange()
    advance(clocks, 100)
    assert b.greylist.wait("198.51.100.9", "S@sender.example", BOB) == 200  # same /24: the delay runs on
    advance(clocks, 200)
    assert b.greylist.wait("198.51.100.9", "s@sender.example", BOB) == 0
    b.exchange()
    a.exchange()
    assert a.greylist.wait("198.51.100.7", "s@sender.example", BOB) == 0  # known at A now
    assert a.greylist.wait("198.51.100.7", "other@sender.example", BOB) == 300


def test_issue_11_the_database_away_leaves_each_process_counting_alone(
    nodes: tuple[Node, Node], table: Table, caplog: pytest.LogCaptureFixture
) -> None:
    """No check raises or waits: each process still locks out after its own four; the events wait and
    count at the other process once the database is back. One warning per outage, not one per try."""
    a, b = nodes
    table.is_away = True
    caplog.set_level(logging.INFO, "kartero.policy")
    for _ in range(4):
        fail(a.throttle)
    fail(b.throttle)
    for _ in range(3):
        a.exchange()
        b.exchange()
    assert a.throttle.reserve(X, ALICE) is Lockout.PAIR
    assert b.throttle.reserve(X, ALICE) is None
    b.throttle.failed(X, ALICE)
    assert sum("event=abuse.sync_failed" in r.message for r in caplog.records) == 2  # one per process
    table.is_away = False
    a.exchange()
    b.exchange()
    assert b.throttle.reserve(X, ALICE) is Lockout.PAIR  # A's four arrived
    assert sum("event=abuse.sync_resumed" in r.message for r in caplog.records) == 2


def test_issue_11_events_kept_while_the_database_is_away_are_bounded(nodes: tuple[Node, Node], table: Table) -> None:
    a, _ = nodes
    table.is_away = True
    for i in range(MAX_PENDING + 10):
        a.sync.publish(AbuseKind.SENT, (f"u{i}",))
    a.exchange()
    table.is_away = False
    a.exchange()
    assert len(table.rows) == MAX_PENDING
    assert table.rows[0][1].key == ("u10",)  # the oldest went


def test_issue_11_remote_failures_are_bounded_per_key(clocks: tuple[Clock, Clock]) -> None:
    """Many nodes' failures of one pair keep a bounded tail (only "at least the limit" matters)."""
    throttle = AuthThrottle(per_pair=4, per_network=6, per_account=8, clock=clocks[1])
    for i in range(1000):
        throttle.remote_failure(X, ALICE, 900.0 - i * 0.5)
    assert throttle.reserve(X, ALICE) is Lockout.PAIR
    assert [len(table) for table in (throttle._pairs[(X, ALICE)], throttle._networks[X], throttle._accounts[ALICE])] \
        == [1 + 8, 12, 16]  # fmt: skip

"""The failed-login throttle (issue 8, finding 7): per (address, account), per address and per account,
counted before the check, cleared only for the pair that succeeded, bounded with LRU eviction."""

from __future__ import annotations

import pytest

from kartero.auth.throttle import INVALID_USER, AuthThrottle, Lockout, account_key, client_network

X = "192.0.2.10"  # the attacker's (or a NAT's) address
ALICE, BOB, MALLORY = "alice@example.test", "bob@example.test", "mallory@example.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def throttle(clock: Clock) -> AuthThrottle:
    return AuthThrottle(clock=clock)


def fail(throttle: AuthThrottle, address: str, user: str) -> float:
    """One checked attempt with a wrong password; returns the delay before its answer."""
    assert throttle.reserve(address, user) is None
    return throttle.failed(address, user)


def test_issue_8_delays_double_per_address_and_account(throttle: AuthThrottle) -> None:
    assert [fail(throttle, X, ALICE) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert fail(throttle, X, BOB) == 0.5  # another account from the same address starts over


def test_issue_8_success_with_own_account_never_clears_failures_at_another(
    throttle: AuthThrottle, clock: Clock
) -> None:
    """The issue's attack: Mallory logs in to her own account between guesses at Alice's (66 checked
    guesses a minute, never blocked, with the old throttle). Now: 10 checked guesses per window."""
    checked = 0
    for _ in range(66 * 15):  # 15 minutes at 66 guesses a minute
        assert throttle.reserve(X, MALLORY) is None
        throttle.succeeded(X, MALLORY)
        if throttle.reserve(X, ALICE) is None:
            checked += 1
            throttle.failed(X, ALICE)
        else:
            assert throttle.reserve(X, ALICE) is Lockout.PAIR
        clock.now += 60 / 66
    assert checked == 10
    assert throttle.reserve(X, MALLORY) is None  # her own account still works


def test_issue_8_parallel_attempts_are_counted_before_any_check(throttle: AuthThrottle) -> None:
    """60 simultaneous logins: each is reserved before its password is checked, so at most the limit
    of them reach the check, whatever order the answers come back in; the rest are held (BUSY) until
    those settle, and refused once they have failed."""
    admitted = [throttle.reserve(X, ALICE) for _ in range(60)]
    assert admitted.count(None) == 10
    assert set(admitted[10:]) == {Lockout.BUSY}
    for _ in range(10):
        throttle.failed(X, ALICE)
    assert throttle.reserve(X, ALICE) is Lockout.PAIR
    # Spread over accounts, the per-address limit holds the same way.
    spread = [throttle.reserve("192.0.2.20", f"user{n}@example.test") for n in range(60)]
    assert spread.count(None) == 30 and set(spread[30:]) == {Lockout.BUSY}
    for n in range(30):
        throttle.failed("192.0.2.20", f"user{n}@example.test")
    assert throttle.reserve("192.0.2.20", "user99@example.test") is Lockout.NETWORK


def test_issue_9_twenty_concurrent_logins_with_the_right_password_all_get_in(throttle: AuthThrottle) -> None:
    """Twenty devices of one user behind one NAT log in at once (the load of issue 9): ten are checked,
    ten wait for one of them to settle; every success lets the waiters in, none is refused."""
    woken: list[int] = []
    first = [throttle.reserve(X, ALICE) for _ in range(20)]
    assert first.count(None) == 10 and set(first[10:]) == {Lockout.BUSY}
    cancels = [throttle.wait_settled(X, ALICE, lambda n=n: woken.append(n)) for n in range(10)]
    throttle.succeeded(X, ALICE)
    assert sorted(woken) == list(range(10))  # each waiter is called once
    for cancel in cancels:
        cancel()
    for _ in range(9):
        throttle.succeeded(X, ALICE)
    assert [throttle.reserve(X, ALICE) for _ in range(10)] == [None] * 10
    for _ in range(10):
        throttle.succeeded(X, ALICE)
    assert throttle.reserve(X, ALICE) is None


def test_issue_9_a_success_does_not_take_back_the_failures_of_guesses_in_flight(throttle: AuthThrottle) -> None:
    """Ten guesses in flight and one right password among them: the success takes back its own
    reservation, not the others' (they still fail, and count)."""
    for _ in range(10):
        assert throttle.reserve(X, ALICE) is None
    throttle.succeeded(X, ALICE)
    assert throttle.reserve(X, ALICE) is None  # the success freed one slot
    for _ in range(10):
        throttle.failed(X, ALICE)
    assert throttle.reserve(X, ALICE) is Lockout.PAIR


def test_issue_9_a_cancelled_wait_is_not_called(throttle: AuthThrottle) -> None:
    called: list[str] = []
    assert throttle.reserve(X, ALICE) is None
    cancel = throttle.wait_settled(X, ALICE, lambda: called.append("woken"))
    cancel()
    throttle.failed(X, ALICE)
    assert called == []


def test_issue_8_a_success_clears_only_its_own_reservation_and_pair(throttle: AuthThrottle) -> None:
    for _ in range(9):
        fail(throttle, X, ALICE)
    for _ in range(9):
        fail(throttle, X, BOB)
    assert throttle.reserve(X, ALICE) is None  # the 10th attempt is checked ... and right
    throttle.succeeded(X, ALICE)
    assert [fail(throttle, X, ALICE) for _ in range(2)] == [0.5, 1.0]  # Alice's count starts over
    assert fail(throttle, X, BOB) == 8.0  # Bob's 10th failure: untouched by Alice's success
    assert throttle.reserve(X, BOB) is Lockout.PAIR


def test_issue_8_one_users_failures_do_not_lock_out_others_behind_the_same_address(
    throttle: AuthThrottle,
) -> None:
    for _ in range(10):
        fail(throttle, X, ALICE)
    assert throttle.reserve(X, ALICE) is Lockout.PAIR
    assert throttle.reserve(X, BOB) is None  # Bob, behind the same NAT, is checked
    throttle.succeeded(X, BOB)
    for _ in range(10):
        fail(throttle, X, "carol@example.test")
    # Two users' worth of failures (20) still block nobody else.
    assert throttle.reserve(X, "dave@example.test") is None


def test_issue_8_an_address_failing_for_many_accounts_is_blocked_but_known_users_go_on(
    throttle: AuthThrottle,
) -> None:
    assert throttle.reserve(X, BOB) is None
    throttle.succeeded(X, BOB)  # Bob logs in from this (shared) address
    for n in range(30):
        fail(throttle, X, f"victim{n}@example.test")
    assert throttle.reserve(X, "victim99@example.test") is Lockout.NETWORK
    assert throttle.reserve(X, ALICE) is Lockout.NETWORK  # never logged in from here
    assert throttle.reserve(X, BOB) is None  # known here: not locked out by the sprayer
    throttle.succeeded(X, BOB)
    assert throttle.reserve("192.0.2.11", ALICE) is None  # other addresses are unaffected


def test_issue_8_an_account_attacked_from_many_addresses_is_limited_not_locked(
    throttle: AuthThrottle, clock: Clock
) -> None:
    """100 failures for one account from 10 addresses: each address that failed for it is refused for
    it, even below its own limit; addresses that did not fail (the owner) are still checked."""
    attackers = [f"198.51.100.{n}" for n in range(20)]
    assert throttle.reserve("203.0.113.5", ALICE) is None
    throttle.succeeded("203.0.113.5", ALICE)  # the owner's usual address
    for address in attackers[:10]:
        for _ in range(10):
            fail(throttle, address, ALICE)
    fail(throttle, attackers[10], ALICE)  # below the pair limit, but the account is under attack now
    assert throttle.reserve(attackers[10], ALICE) is Lockout.ACCOUNT
    assert throttle.reserve(attackers[10], BOB) is None  # only for that account
    assert fail(throttle, attackers[11], ALICE) == 0.5  # a fresh address gets one checked attempt
    assert throttle.reserve(attackers[11], ALICE) is Lockout.ACCOUNT
    assert throttle.reserve("203.0.113.99", ALICE) is None  # the owner from a new address: checked
    throttle.succeeded("203.0.113.99", ALICE)
    fail(throttle, "203.0.113.5", ALICE)  # the owner mistypes at a known address ...
    assert throttle.reserve("203.0.113.5", ALICE) is None  # ... and still gets the pair limit
    clock.now += 901
    assert throttle.reserve(attackers[10], ALICE) is None  # the window passed: nothing is permanent


def test_issue_8_lockout_ends_when_the_window_passes(throttle: AuthThrottle, clock: Clock) -> None:
    for _ in range(10):
        fail(throttle, X, ALICE)
        clock.now += 10
    assert throttle.reserve(X, ALICE) is Lockout.PAIR
    clock.now += 900 - 100 - 1  # the first failure is just inside the window
    assert throttle.reserve(X, ALICE) is Lockout.PAIR
    clock.now += 1  # ... and now out of it: one slot
    assert throttle.reserve(X, ALICE) is None
    assert throttle.reserve(X, ALICE) is Lockout.BUSY  # held while that one is checked ...
    throttle.failed(X, ALICE)
    assert throttle.reserve(X, ALICE) is Lockout.PAIR  # ... refused once it failed; refusals never extend it


def test_issue_8_user_names_count_in_canonical_form(throttle: AuthThrottle) -> None:
    for user in ("Alice@Example.TEST", "alice@EXAMPLE.test") * 5:
        fail(throttle, X, user)
    assert throttle.reserve(X, "alice@example.test") is Lockout.PAIR
    assert account_key("not an address") == account_key("x" * 10_000) == INVALID_USER


def test_issue_8_ipv6_counts_by_64() -> None:
    assert client_network("2001:db8:1:2:aaaa::1") == client_network("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_network("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert client_network("::ffff:192.0.2.1") == client_network("192.0.2.1") == "192.0.2.1"
    assert client_network("fe80::1%eth0") == "fe80::/64"


def test_issue_8_an_ipv6_spray_within_one_64_is_one_address(throttle: AuthThrottle) -> None:
    results = [throttle.reserve(f"2001:db8::{n:x}", ALICE) for n in range(1, 30)]
    assert results.count(None) == 10


def test_issue_8_table_is_bounded_and_evicts_least_recently_used(clock: Clock) -> None:
    throttle = AuthThrottle(clock=clock, max_entries=100)
    for _ in range(10):
        fail(throttle, X, ALICE)
    # A spray of addresses fills the table: it is never cleared whole, so X stays locked out ...
    for n in range(99):
        fail(throttle, f"2001:db8:{n:x}::1", BOB)
        assert throttle.reserve(X, ALICE) is Lockout.PAIR  # each look keeps X's entry recently used
    for n in range(500):
        fail(throttle, f"2001:db9:{n:x}::1", f"u{n}@example.test")
    # ... and memory stays bounded: only the most recent entries are kept.
    assert len(throttle._pairs) <= 100 and len(throttle._networks) <= 100
    assert len(throttle._accounts) <= 100
    assert throttle.reserve("2001:db9:1f3::1", "u499@example.test") is None  # recent: still counted
    assert throttle.failed("2001:db9:1f3::1", "u499@example.test") == 1.0

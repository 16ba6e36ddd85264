"""Slowing down password guessing, for every protocol that takes passwords (SMTP AUTH, IMAP, POP3).

Failures are counted per (client network, account), per client network and per account, within a
sliding window (15 minutes by default). A client network is an IPv4 address or an IPv6 /64: one
customer gets a whole /64, so counting single IPv6 addresses would give one attacker 2^64 fresh starts.

An attempt counts as a failure from the moment it starts (`reserve`), before the password is checked,
so 60 parallel guesses cannot all reach the check before the first failure is recorded; a success
(`succeeded`) takes back the failures of that one (network, account) pair and of no other pair, except
those of its attempts still being checked. An attempt that would pass a limit only because of attempts
still in flight is not refused but held (BUSY): the adapter waits until one of them settles
(`wait_settled`) and asks again. So twenty devices of one user behind one NAT, logging in at once with
the right password, all get in (ten checked at a time), while parallel guesses still reach the check no
faster than the limit allows (issue 9: the load's logins were refused as failures that never happened).

An attempt is refused unchecked (SMTP `454 4.7.0`, IMAP `NO`, POP3 `-ERR`) when:
- PAIR: its (network, account) pair has `per_pair` failures (10) in the window. A user who mistypes
  locks out only their own account from their own address; others behind the same NAT go on;
- NETWORK: its network has `per_network` failures (30) in the window, across accounts — so at least
  three accounts' worth: one user alone can never reach it. Accounts that logged in successfully from
  that network within KNOWN_S are exempt, so a password sprayer behind a shared address does not lock
  out the users there;
- ACCOUNT: the account has `per_account` failures (100) in the window from all networks together
  (it is under attack from many addresses), and this network has failed for it in the window and has
  not logged in to it within KNOWN_S. A network that has not failed for the account — its owner at
  home, at work, travelling — is still checked: the owner is never locked out by others' failures.

Each failure is answered after a delay that grows with the pair's failures: 0.5 s, 1, 2, 4, 8 s (the
cap). Refused attempts are neither checked nor counted, so every lockout ends when the window passes.

Memory is bounded: at most `max_entries` pairs, networks and accounts, the least recently used evicted
first (never the whole table: an address spray must not reset everyone).
In memory: a restart forgets, which is fine. All calls come from the event loop thread.

In a cluster (PostgreSQL), the counts are the cluster's: each settled attempt is published (`publish`:
a failure, or a success that takes back its pair's failures) and policy/shared.py feeds the other
processes' in (`remote_failure`, `remote_success`) within about a second, so spreading guesses over the
nodes gives no more of them. The checks themselves stay in memory and never wait for the database.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kartero.auth.accounts import DirectoryError, parse_address
from kartero.store.interface import AbuseKind

# A successful login makes its network "known" for that account this long (30 days).
KNOWN_S = 30 * 86400.0
# User names that are no address share one key: they cannot log in, and each must not cost memory.
INVALID_USER = "(invalid)"
MAX_USER_CHARS = 320
# A login held because as many attempts of its address as the throttle allows are being checked waits
# this long at most for one of them to settle (a check takes tens of milliseconds).
LOGIN_BUSY_WAIT_S = 30.0


class Lockout(StrEnum):
    """Why an attempt was refused unchecked (logged as `reason=`)."""

    PAIR = "address+account"
    NETWORK = "address"
    ACCOUNT = "account"
    # Not a failure limit: as many attempts of this pair or network as the limit allows are being checked.
    # The caller waits for one to settle (`wait_settled`) and reserves again; refused only if none does.
    BUSY = "attempts in flight"


def client_network(address: str) -> str:
    """The key failures count under: the IPv4 address, or the IPv6 /64 (IPv4-mapped IPv6 as IPv4)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def account_key(user: str) -> str:
    """The account a login names, canonical (`Bob@Example.TEST` counts as `bob@example.test`)."""
    if len(user) > MAX_USER_CHARS:
        return INVALID_USER
    try:
        return parse_address(user)
    except DirectoryError:
        return INVALID_USER


def _prune(times: list[float], start: int, cutoff: float) -> None:
    """Drop the times (sorted, from index `start`) at or before `cutoff`."""
    end = start
    while end < len(times) and times[end] <= cutoff:
        end += 1
    del times[start:end]


def _remove(times: list[float], taken: list[float]) -> None:
    """Remove one occurrence of each of `taken` (equal times are interchangeable for counting)."""
    for t in taken:
        with contextlib.suppress(ValueError):  # already pruned or trimmed
            times.remove(t)


def _take_oldest(table: OrderedDict[Any, list[float]], key: Any) -> list[float]:
    """Drop the oldest time under `key` (equal times are interchangeable for counting); returns the rest."""
    times = table.get(key)
    if times is None:
        return []
    del times[:1]
    if not times:
        del table[key]
    return times


@dataclass
class AuthThrottle:
    window_s: float = 900.0
    per_pair: int = 10
    per_network: int = 30
    per_account: int = 100
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_entries: int = 50_000  # per table; about 0.8 KB per attempt from a new address for a new account
    clock: Callable[[], float] = time.monotonic
    # Each value is a list of failure times, oldest first, within the window (reservations included);
    # a pair's list starts with the time of its last success (0.0: none). Least recently used first.
    _pairs: OrderedDict[tuple[str, str], list[float]] = field(default_factory=OrderedDict)
    _networks: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)
    _accounts: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)
    # The reservation times of attempts not settled yet (a subset of the failure times above), per pair
    # and per network; an attempt abandoned unsettled leaves with the window like a failure.
    _pairs_in_flight: OrderedDict[tuple[str, str], list[float]] = field(default_factory=OrderedDict)
    _networks_in_flight: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)
    # Per network: callbacks to call at the next settled attempt (see wait_settled).
    _waiters: dict[str, list[Callable[[], None]]] = field(default_factory=dict)
    # Tells the cluster of each settled attempt (policy/shared.py); None: one process counts alone.
    publish: Callable[[AbuseKind, tuple[str, ...]], None] | None = None

    def reserve(self, address: str, user: str) -> Lockout | None:
        """Start a login attempt of `user` from `address`: None when it may be checked (it now counts
        as a failure until `succeeded`, and is in flight until `succeeded` or `failed`), else why it is
        refused or held (BUSY; nothing is recorded then)."""
        now = self.clock()
        cutoff = now - self.window_s
        net, account = client_network(address), account_key(user)
        pair = self._pairs.get((net, account))
        if pair is not None:
            _prune(pair, 1, cutoff)
            flying = self._in_flight(self._pairs_in_flight, (net, account), cutoff)
            if len(pair) - 1 - flying >= self.per_pair:
                return Lockout.PAIR
            if len(pair) - 1 >= self.per_pair:
                return Lockout.BUSY
        if pair is None or not pair[0] or now - pair[0] >= KNOWN_S:  # not a known (network, account)
            failures = self._networks.get(net)
            if failures is not None:
                _prune(failures, 0, cutoff)
                flying = self._in_flight(self._networks_in_flight, net, cutoff)
                if len(failures) - flying >= self.per_network:
                    return Lockout.NETWORK
                if len(failures) >= self.per_network:
                    return Lockout.BUSY
            failures = self._accounts.get(account)
            if failures is not None:
                _prune(failures, 0, cutoff)
                if len(failures) >= self.per_account and pair is not None and len(pair) > 1:
                    return Lockout.ACCOUNT
        self._touch(self._pairs, (net, account), [0.0]).append(now)
        # Only "at least the limit" matters; known pairs may add beyond it, so keep a bounded tail.
        failures = self._touch(self._networks, net, [])
        failures.append(now)
        del failures[: -2 * self.per_network]
        failures = self._touch(self._accounts, account, [])
        failures.append(now)
        del failures[: -2 * self.per_account]
        self._touch(self._pairs_in_flight, (net, account), []).append(now)
        self._touch(self._networks_in_flight, net, []).append(now)
        return None

    def succeeded(self, address: str, user: str) -> None:
        """The password was right: take back this pair's failures (only this pair's, also from its
        network's and its account's counts; the attempts of the pair still in flight stay counted) and
        remember the network as known for the account."""
        net, account = client_network(address), account_key(user)
        flying = self._settle(net, account)
        pair = self._touch(self._pairs, (net, account), [0.0])
        taken = pair[1:]
        _remove(taken, flying)
        pair[:] = [self.clock(), *flying]
        self._take_back(net, account, taken)
        if self.publish is not None:
            self.publish(AbuseKind.LOGIN_OK, (net, account))
        self._wake(net)

    def failed(self, address: str, user: str) -> float:
        """The password was wrong, or the attempt was abandoned (the failure was recorded by `reserve`):
        how long to wait before answering, 0.5 s doubling with each failure of the pair in the window,
        at most 8 s."""
        net, account = client_network(address), account_key(user)
        self._settle(net, account)
        pair = self._pairs.get((net, account))
        count = max(1, len(pair) - 1) if pair is not None else 1
        if self.publish is not None:
            self.publish(AbuseKind.LOGIN_FAILED, (net, account))
        self._wake(net)
        return min(self.base_delay_s * 2.0 ** (count - 1), self.max_delay_s)

    def wait_settled(self, address: str, user: str, wake: Callable[[], None]) -> Callable[[], None]:
        """After BUSY: call `wake` once, when an attempt from this network next succeeds or fails (then
        reserve again). Returns the function that cancels the wait (call it in any case)."""
        net = client_network(address)
        waiters = self._waiters.setdefault(net, [])
        waiters.append(wake)

        def cancel() -> None:
            with contextlib.suppress(ValueError):
                waiters.remove(wake)
            if not waiters and self._waiters.get(net) is waiters:
                del self._waiters[net]

        return cancel

    def remote_failure(self, net: str, account: str, age_s: float) -> None:
        """Another process of the cluster recorded a failure of this (network, account) pair `age_s`
        seconds ago: it counts here as a settled failure of our own (unless a success since took the
        pair's failures back)."""
        if age_s >= self.window_s:
            return
        at = self.clock() - max(0.0, age_s)
        pair = self._touch(self._pairs, (net, account), [0.0])
        if pair[0] and at <= pair[0]:
            return
        bisect.insort(pair, at, lo=1)
        del pair[1 : max(1, len(pair) - 2 * self.per_pair)]  # N nodes may add N limits' worth: keep a tail
        for table, key, keep in ((self._networks, net, 2 * self.per_network),
                                 (self._accounts, account, 2 * self.per_account)):  # fmt: skip
            failures = self._touch(table, key, [])
            bisect.insort(failures, at)
            del failures[:-keep]

    def remote_success(self, net: str, account: str, age_s: float) -> None:
        """Another process logged this pair in `age_s` seconds ago: as `succeeded` here, for the failures
        recorded before it (this process's attempts still being checked stay counted)."""
        if age_s >= KNOWN_S:
            return
        at = self.clock() - max(0.0, age_s)
        pair = self._touch(self._pairs, (net, account), [0.0])
        taken = [t for t in pair[1:] if t <= at]
        _remove(taken, list(self._pairs_in_flight.get((net, account), ())))
        rest = pair[1:]
        _remove(rest, taken)
        pair[:] = [max(pair[0], at), *rest]
        self._take_back(net, account, taken)
        self._wake(net)

    def _take_back(self, net: str, account: str, taken: list[float]) -> None:
        """Remove a pair's failures `taken` from its network's and its account's counts."""
        for table, key in ((self._networks, net), (self._accounts, account)):
            failures = table.get(key)
            if failures is not None:
                _remove(failures, taken)
                if not failures:
                    del table[key]

    def _settle(self, net: str, account: str) -> list[float]:
        """One attempt of the pair is no longer in flight; returns the pair's attempts still in flight."""
        _take_oldest(self._networks_in_flight, net)
        return list(_take_oldest(self._pairs_in_flight, (net, account)))

    def _wake(self, net: str) -> None:
        for wake in self._waiters.pop(net, ()):
            wake()

    def _in_flight(self, table: OrderedDict[Any, list[float]], key: Any, cutoff: float) -> int:
        """How many attempts under `key` are in flight (those reserved before the window are forgotten)."""
        times = table.get(key)
        if times is None:
            return 0
        _prune(times, 0, cutoff)
        if not times:
            del table[key]
        return len(times)

    def _touch(self, table: OrderedDict[Any, list[float]], key: Any, empty: list[float]) -> list[float]:
        """The entry for `key` (made from `empty` if missing), marked most recently used; evicts the
        least recently used entries beyond `max_entries`."""
        entry = table.get(key)
        if entry is None:
            entry = table[key] = empty
            while len(table) > self.max_entries:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return entry


async def reserve_login(throttle: AuthThrottle, client: str, user: str) -> Lockout | None:
    """The throttle's answer for a login, waiting while it is BUSY (at most LOGIN_BUSY_WAIT_S)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOGIN_BUSY_WAIT_S
    while (lockout := throttle.reserve(client, user)) is Lockout.BUSY and (left := deadline - loop.time()) > 0:
        settled: asyncio.Future[None] = loop.create_future()

        def wake(settled: asyncio.Future[None] = settled) -> None:
            if not settled.done():
                settled.set_result(None)

        cancel = throttle.wait_settled(client, user, wake)
        try:
            async with asyncio.timeout(left):
                await settled
        except TimeoutError:
            pass
        finally:
            cancel()
    return lockout

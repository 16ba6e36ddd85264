"""Abuse limits, in memory: connections per client address (at once and per minute), messages per
authenticated user per hour, and greylisting. A restart forgets them, which costs at most one more
round of greylisting; nothing here ever loses mail (every refusal is a 4xx the sender retries).
"""

from __future__ import annotations

import ipaddress
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_KEYS = 100_000  # bound memory under an address-spraying flood: forget everything past this


def parse_networks(texts: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


def in_networks(ip: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in n for n in networks)


class SlidingWindow:
    """How many events per key in the last `window_s` seconds."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._events: dict[str, deque[float]] = defaultdict(deque)

    def count(self, key: str) -> int:
        events = self._events.get(key)
        if not events:
            return 0
        cutoff = self.clock() - self.window_s
        while events and events[0] <= cutoff:
            events.popleft()
        if not events:
            del self._events[key]
            return 0
        return len(events)

    def record(self, key: str) -> None:
        if len(self._events) >= MAX_KEYS:
            self._events.clear()
        self._events[key].append(self.clock())

    def retry_after(self, key: str) -> float:
        events = self._events.get(key)
        return max(0.0, events[0] + self.window_s - self.clock()) if events else 0.0


@dataclass
class ConnectionLimits:
    """Per client address: at most `concurrent` sessions at once, `per_minute` new ones a minute (0 means
    no limit); addresses in `exempt` are not limited."""

    concurrent: int
    per_minute: int
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._open: dict[str, int] = defaultdict(int)
        self._recent = SlidingWindow(60.0, self.clock)

    def open(self, ip: str) -> str | None:
        """Count a new session; the reason to refuse it, or None. Every open is paired with `close`."""
        self._open[ip] += 1
        if in_networks(ip, self.exempt):
            return None
        recent = self._recent.count(ip)
        self._recent.record(ip)  # refused attempts count too: hammering keeps an address out
        if self.concurrent and self._open[ip] > self.concurrent:
            return f"more than {self.concurrent} connections at once"
        if self.per_minute and recent >= self.per_minute:
            return f"more than {self.per_minute} connections a minute"
        return None

    def close(self, ip: str) -> None:
        self._open[ip] -= 1
        if self._open[ip] <= 0:
            del self._open[ip]


@dataclass
class Greylist:
    """RFC 6647 greylisting of (client network, sender, recipient): the first attempt is deferred; a
    retry after `delay_s` (and within `retry_window_s`) passes, and the triplet then passes for `pass_s`.
    IPv4 clients count by /24 and IPv6 by /64, so a sender's pool of outgoing hosts is one client."""

    delay_s: float
    retry_window_s: float = 86400.0
    pass_s: float = 35 * 86400.0
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._first_seen: dict[tuple[str, str, str], float] = {}
        self._passed: dict[tuple[str, str, str], float] = {}

    def wait(self, ip: str, sender: str, recipient: str) -> float:
        """0 when the message may pass, else how many seconds the sender should still wait."""
        if in_networks(ip, self.exempt):
            return 0.0
        key = (_network(ip), sender.lower(), recipient.lower())
        now = self.clock()
        passed = self._passed.get(key)
        if passed is not None and now - passed < self.pass_s:
            self._passed[key] = now
            return 0.0
        first = self._first_seen.get(key)
        if first is None or now - first > self.retry_window_s:
            if len(self._first_seen) >= MAX_KEYS:
                self._first_seen.clear()
            self._first_seen[key] = now
            return self.delay_s
        if now - first < self.delay_s:
            return self.delay_s - (now - first)
        del self._first_seen[key]
        if len(self._passed) >= MAX_KEYS:
            self._passed.clear()
        self._passed[key] = now
        return 0.0


def _network(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))

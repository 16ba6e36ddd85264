"""Slowing down password guessing, per client address, for every protocol that takes passwords.

Each failure makes the next answer wait longer (0.5 s, 1 s, 2 s, ... up to 8 s); after `limit` failures
within `window_s` the address is refused outright (SMTP 454 4.7.0, IMAP/POP3 NO) until the window
passes. A success clears the address's record. In memory only: a restart forgets, which is fine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class AuthThrottle:
    window_s: float = 900.0
    limit: int = 10
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, list[float]] = field(default_factory=dict)

    def _recent(self, address: str) -> list[float]:
        cutoff = self.clock() - self.window_s
        times = [t for t in self._failures.get(address, ()) if t > cutoff]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def is_blocked(self, address: str) -> bool:
        return len(self._recent(address)) >= self.limit

    def failure(self, address: str) -> float:
        """Record a failure; returns how long to wait before answering it."""
        times = self._recent(address)
        times.append(self.clock())
        self._failures[address] = times
        if len(self._failures) > 100_000:  # bound memory under an address-spraying attack
            self._failures.clear()
        delay: float = min(self.base_delay_s * 2.0 ** (len(times) - 1), self.max_delay_s)
        return delay

    def success(self, address: str) -> None:
        self._failures.pop(address, None)

"""When to try a deferred recipient again: exponential backoff from `first_s`, capped at `max_s`."""

from __future__ import annotations


def retry_delay(attempts: int, first_s: float, max_s: float) -> float:
    """The wait after `attempts` failed attempts (1 -> first_s, 2 -> 2*first_s, ...), at most max_s."""
    if attempts < 1:
        return 0.0
    delay: float = min(first_s * 2.0 ** min(attempts - 1, 30), max_s)
    return delay


def next_attempt_at(now: float, attempts: int, first_s: float, max_s: float, expires_at: float) -> float:
    """The next attempt time, never later than the moment the message expires (one last try then)."""
    return min(now + retry_delay(attempts, first_s, max_s), max(expires_at, now))

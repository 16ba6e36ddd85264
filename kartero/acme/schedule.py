"""When to order a certificate: pure functions of the certificate's validity, the failures so far and now.

Renewal: 30 days before expiry (Let's Encrypt's advice for its 90-day certificates), or when a third of
the lifetime is left if that is sooner, so that short-lived certificates (6-day ones, or a test CA's
seconds-long ones) are renewed well before they expire and not at once after issuance. A failure waits
`backoff_s(failures)` before the next attempt: 1 minute doubling up to a day, so a CA that is down or
a DNS name not yet pointing here is neither hammered nor left for long once fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

RENEW_BEFORE_S = 30 * 86400.0
FIRST_BACKOFF_S = 60.0
MAX_BACKOFF_S = 86400.0
# However far the next renewal is, look again this often: the files may have changed (a restore, an admin
# deleting them), and a long sleep would miss a clock jump.
CHECK_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class Validity:
    """The part of a certificate the schedule needs (unix times, the DNS names of its SAN)."""

    not_before: float
    not_after: float
    names: frozenset[str]

    def __post_init__(self) -> None:
        if self.not_after < self.not_before:
            raise ValueError("not_after before not_before")


def renewal_due_at(validity: Validity) -> float:
    """The unix time from which `validity`'s certificate should be renewed: 30 days before expiry, or
    with a third of its lifetime left when that comes first."""
    lifetime = validity.not_after - validity.not_before
    return validity.not_after - min(RENEW_BEFORE_S, lifetime / 3)


def backoff_s(failures: int) -> float:
    """How long to wait after `failures` failed attempts in a row (0: none)."""
    if failures <= 0:
        return 0.0
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** min(failures - 1, 32))


def next_order_at(validity: Validity | None, names: frozenset[str], failures: int, last_failure_at: float) -> float:
    """When to order next (unix time; 0 means at once): at once without a certificate or when it lacks a
    name the config asks for, else at its renewal time; never before the backoff since the last failure
    has passed."""
    due = 0.0 if validity is None or not names <= validity.names else renewal_due_at(validity)
    if failures > 0:
        due = max(due, last_failure_at + backoff_s(failures))
    return due


def sleep_s(due_at: float, now: float) -> float:
    """How long the renewal task sleeps before looking again (0: order now)."""
    return max(0.0, min(due_at - now, CHECK_EVERY_S))

"""The renewal schedule (kartero/acme/schedule.py): when a certificate is due, and the backoff."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.acme.schedule import (
    CHECK_EVERY_S,
    MAX_BACKOFF_S,
    Validity,
    backoff_s,
    next_order_at,
    renewal_due_at,
    sleep_s,
)

DAY = 86400.0
NAMES = frozenset({"mail.example.test"})


def test_issue_15_a_90_day_certificate_is_due_30_days_before_expiry() -> None:
    assert renewal_due_at(Validity(0.0, 90 * DAY, NAMES)) == 60 * DAY


def test_issue_15_a_short_lived_certificate_is_due_with_a_third_of_its_life_left() -> None:
    assert renewal_due_at(Validity(1000.0, 1000.0 + 6 * DAY, NAMES)) == 1000.0 + 4 * DAY
    assert renewal_due_at(Validity(0.0, 12.0, NAMES)) == 8.0
    # a year-long certificate: 30 days, not a third
    assert renewal_due_at(Validity(0.0, 365 * DAY, NAMES)) == 335 * DAY


def test_issue_15_backoff_doubles_from_a_minute_up_to_a_day() -> None:
    assert [backoff_s(n) for n in range(0, 5)] == [0.0, 60.0, 120.0, 240.0, 480.0]
    assert backoff_s(11) == 61440.0
    assert backoff_s(12) == MAX_BACKOFF_S
    assert backoff_s(10**9) == MAX_BACKOFF_S  # no overflow however long the CA stays away


def test_issue_15_orders_at_once_without_a_certificate_or_with_a_name_missing() -> None:
    assert next_order_at(None, NAMES, 0, 0.0) == 0.0
    other = Validity(0.0, 90 * DAY, frozenset({"old.example.test"}))
    assert next_order_at(other, NAMES, 0, 0.0) == 0.0
    both = Validity(0.0, 90 * DAY, NAMES | {"old.example.test"})
    assert next_order_at(both, NAMES, 0, 0.0) == 60 * DAY  # extra names do not matter


def test_issue_15_a_failure_delays_the_next_order_by_the_backoff() -> None:
    assert next_order_at(None, NAMES, 3, 5000.0) == 5000.0 + 240.0
    # the backoff never brings a renewal forward
    assert next_order_at(Validity(0.0, 90 * DAY, NAMES), NAMES, 1, 100.0) == 60 * DAY


def test_issue_15_the_task_looks_again_at_least_hourly() -> None:
    assert sleep_s(60 * DAY, 0.0) == CHECK_EVERY_S
    assert sleep_s(100.0, 40.0) == 60.0
    assert sleep_s(100.0, 200.0) == 0.0


def test_issue_15_validity_refuses_an_expiry_before_the_start() -> None:
    with pytest.raises(ValueError):
        Validity(10.0, 5.0, NAMES)


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 2e9), st.floats(1, 400 * DAY))
def test_issue_15_renewal_is_always_inside_the_lifetime_and_in_its_last_third_or_month(start: float,
                                                                                     life: float) -> None:
    due = renewal_due_at(Validity(start, start + life, NAMES))
    assert start < due < start + life
    assert start + life - due <= max(life / 3, 30 * DAY) + 1e-6

"""The admin's operations (kartero/web/ops.py) over a real embedded store: the review's findings on them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kartero.auth.accounts import Directory
from kartero.config import embedded_default
from kartero.mail.trace import TraceEvent, TraceKind
from kartero.store import trace_sql
from kartero.store.sqlite import SQLiteStore
from kartero.web.ops import Operations, OpError


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Operations]:
    config = replace(embedded_default(tmp_path), domains=("example.test",))
    store = SQLiteStore(tmp_path / "data")
    try:
        yield Operations(config, store, Directory(store.accounts, config.domains, 4096))
    finally:
        store.close()


def test_issue_14_an_account_is_found_among_more_than_a_page_of_matches(ops: Operations) -> None:
    """F4: `account` searched a page of 100 substring matches: a@ was not among 0NNa@'s."""
    for n in range(100):
        ops.store.accounts.add_account(f"{n:03d}a@example.test", "x")
    info = ops.add_account("a@example.test", "a password", quota="2G")
    assert (info.address, info.quota_bytes) == ("a@example.test", 2 * 10**9)
    assert ops.set_admin("a@example.test", True).is_admin


def test_issue_14_a_quota_past_63_bits_is_refused_before_the_account_exists(ops: Operations) -> None:
    """F3: 99999999999999999999G overflowed SQLite's integer: a 500, and the account made without it."""
    for quota in ("99999999999999999999G", "9223372036854775808", str(10**18 + 1)):
        with pytest.raises(OpError) as refused:
            ops.add_account("q@example.test", "pw", quota=quota)
        assert refused.value.status == 400
        assert ops.store.accounts.get_account("q@example.test") is None
    assert ops.add_account("q@example.test", "pw", quota="1000000000000000000").quota_bytes == 10**18


def test_issue_14_an_alias_destination_the_address_parser_refuses_is_a_400(ops: Operations) -> None:
    """F5: a destination `parse_address` took but `parse_mailbox` refused raised AddressError: a 500."""
    with pytest.raises(OpError) as refused:
        ops.add_alias("zz@example.test", "a@b@c")
    assert refused.value.status == 400 and ops.aliases() == []


def test_issue_14_the_chart_counts_the_newest_hours_when_the_rows_are_capped(
    ops: Operations, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F9: the capped scan read the oldest rows first, so a busy day's newest hours showed zero."""
    now = 1_800_000_000.0
    events = [TraceEvent(TraceKind.RECEIVED, now - 3600 * hours_ago, trace_sql.id_at(now - 3600 * hours_ago) + "x" * 10)
              for hours_ago in range(47, -1, -1) for _ in range(20)]  # fmt: skip
    ops.store.trace.record(events)
    monkeypatch.setattr(trace_sql, "MAX_ACTIVITY_ROWS", 600)  # the 30 newest hours of 20 events
    buckets = ops.activity(now, hours=24)
    assert [b.received for b in buckets] == [20] * 24

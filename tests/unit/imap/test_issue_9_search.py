"""Issue 9, SEARCH and SORT on what the index keeps: SENT* on the day written in Date:, addresses with
comments and groups (ENVELOPE, SEARCH FROM/TO/CC, SORT). Exact responses over a real store."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client

WHEN = 1795687200


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.add_account("bob@example.test", "unused")
    s.start()
    yield s
    s.close()


def deliver(store: SQLiteStore, *messages: bytes) -> None:
    account = store.get_account("bob@example.test")
    assert account is not None
    for data in messages:
        store.deliver(Delivery(new_message_id(), data, (DeliveryTarget(account.id),), WHEN)).result(10)


def client(store: SQLiteStore) -> Client:
    c = Client(store=store)
    c.login()
    c.select()
    return c


def search(c: Client, criteria: str) -> bytes:
    lines = c.command(f"s SEARCH {criteria}")
    assert lines[-1] == b"s OK SEARCH completed\r\n", lines
    return b"".join(lines[:-1])


# -- SENTBEFORE / SENTON / SENTSINCE (RFC 9051 §6.4.4) ------------------------------------------------------

EAST = b"Subject: east\r\nDate: Sun, 25 Mar 2007 00:00:00 +0200\r\n\r\nbody\r\n"  # 24 March 22:00 UTC
WEST = b"Subject: west\r\nDate: Sat, 24 Mar 2007 23:30:00 -0500\r\n\r\nbody\r\n"  # 25 March 04:30 UTC
NO_DATE = b"Subject: none\r\n\r\nbody\r\n"  # the internal date stands in: 26 Nov 2026


def test_issue_9_sent_dates_are_the_day_written_in_the_date_field(store: SQLiteStore) -> None:
    deliver(store, EAST, WEST, NO_DATE)
    c = client(store)
    # The same answers whether SQLite decides (a lone key) or Python does (an OR with a body key).
    for template in ("{}", 'OR {} BODY "no such text"'):
        assert search(c, template.format("SENTON 25-Mar-2007")) == b"* SEARCH 1\r\n"
        assert search(c, template.format("SENTON 24-Mar-2007")) == b"* SEARCH 2\r\n"
        assert search(c, template.format("SENTBEFORE 25-Mar-2007")) == b"* SEARCH 2\r\n"
        assert search(c, template.format("SENTSINCE 25-Mar-2007")) == b"* SEARCH 1 3\r\n"
        assert search(c, template.format("SENTON 26-Nov-2026")) == b"* SEARCH 3\r\n"
    # SORT DATE still orders by the instant (RFC 5256 §2.2): west (04:30 UTC) after east (22:00 UTC).
    assert c.command("o SORT (DATE) UTF-8 ALL")[0] == b"* SORT 1 2 3\r\n"


def test_issue_9_messages_stored_before_the_sent_day_column_keep_the_old_rule(tmp_path: Path) -> None:
    """An old database gets the column (NULL for its rows: the UTC day of the Date instant stands in);
    mail stored after the upgrade gets the written day."""
    store = SQLiteStore(tmp_path / "data")
    store.add_account("bob@example.test", "unused")
    store.start()
    deliver(store, EAST)
    store.close()
    db = sqlite3.connect(tmp_path / "data" / "kartero.db")
    db.execute("ALTER TABLE blobs DROP COLUMN sent_day")  # the schema before issue 9
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path / "data")
    store.start()
    try:
        deliver(store, EAST)
        c = client(store)
        assert search(c, "SENTON 24-Mar-2007") == b"* SEARCH 1\r\n"
        assert search(c, "SENTON 25-Mar-2007") == b"* SEARCH 2\r\n"
    finally:
        store.close()

"""Issue 9, SEARCH and SORT on what the index keeps: SENT* on the day written in Date:, addresses with
comments and groups (ENVELOPE, SEARCH FROM/TO/CC, SORT). Exact responses over a real store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client

WHEN = 1795687200


def deliver(store: SQLiteStore, *messages: bytes) -> None:
    account = store.accounts.get_account("bob@example.test")
    assert account is not None
    for data in messages:
        store.mail.deliver(Delivery(new_message_id(), data, (DeliveryTarget(account.id),), WHEN)).result(10)


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
    store.accounts.add_account("bob@example.test", "unused")
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


# -- Addresses: comments and groups ---------------------------------------------------------------------

COMMENTED = (
    b"From: user@domain.org (Real Name)\r\n"
    b"To: <ab (c)c@ (c) example.org>, (leading) other@example.org\r\n"
    b"Cc: team: a@x.org, b@y.org;\r\n"
    b"Subject: commented\r\n\r\nbody\r\n"
)


def test_issue_9_envelope_names_from_comments_and_groups(store: SQLiteStore) -> None:
    deliver(store, COMMENTED)
    c = client(store)
    assert c.command("f FETCH 1 ENVELOPE")[0] == (
        b'* 1 FETCH (ENVELOPE (NIL "commented" (("Real Name" NIL "user" "domain.org")) '
        b'(("Real Name" NIL "user" "domain.org")) (("Real Name" NIL "user" "domain.org")) '
        b'((NIL NIL "abc" "example.org")(NIL NIL "other" "example.org")) '
        b'((NIL NIL "team" NIL)(NIL NIL "a" "x.org")(NIL NIL "b" "y.org")(NIL NIL NIL NIL)) NIL NIL NIL))\r\n'
    )


def test_issue_9_search_reads_addresses_without_their_comments(store: SQLiteStore) -> None:
    deliver(store, COMMENTED, b"From: abb@example.org\r\nTo: x@example.org\r\n\r\nbody\r\n")
    c = client(store)
    assert search(c, 'TO "abc@example.org"') == b"* SEARCH 1\r\n"
    assert search(c, 'FROM "Real Name <user@domain.org>"') == b"* SEARCH 1\r\n"
    assert search(c, 'CC "team: a@x.org, b@y.org;"') == b"* SEARCH 1\r\n"
    assert search(c, 'TO "leading"') == b"* SEARCH\r\n"  # a comment before an address is no part of it
    assert search(c, 'OR TO "abc@example.org" BODY "no such text"') == b"* SEARCH 1\r\n"  # in Python too


def test_issue_9_sort_uses_the_first_envelope_address(store: SQLiteStore) -> None:
    deliver(
        store,
        b"From: <ab(c)c@example.org>\r\nCc: team: a@x.org, b@y.org;\r\n\r\n1\r\n",
        b"From: abb@example.org\r\nCc: m@x.org\r\n\r\n2\r\n",
        b"From: ab@example.org\r\nCc: s@x.org\r\n\r\n3\r\n",
    )
    c = client(store)
    assert c.command("o SORT (FROM) UTF-8 ALL")[0] == b"* SORT 3 2 1\r\n"  # ab, abb, abc (comment dropped)
    assert c.command("o SORT (CC) UTF-8 ALL")[0] == b"* SORT 2 3 1\r\n"  # m, s, team (the group's name)

"""SORT=DISPLAY (RFC 5957): DISPLAYFROM and DISPLAYTO sort by the display name of the first From/To
mailbox, RFC 2047-decoded, or by its address when it has none, compared as i;unicode-casemap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client, play

# (From, To) of messages 1 to 6.
ADDRESSES = [
    (b'"Zoe Zed" <aaa@example.org>', b"Mallory <m@example.org>"),
    (b"bob@example.org", b"=?utf-8?q?=C3=84rger?= <zz@example.org>"),
    (b"=?utf-8?q?=C3=84rger?= <zz@example.org>", b"bob@example.org"),
    (b"undisclosed-recipients:;", b"Team: carl@example.org, x@example.org;"),
    (b'"  " <carl@example.org>', b"(no address)"),
    (b"BOB@example.org", b'"zoe   zed" <y@example.org>'),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    account = s.accounts.add_account("bob@example.test", "unused")
    s.start()
    for sender, recipient in ADDRESSES:  # one at a time: UIDs in this order
        message = b"From: " + sender + b"\r\nTo: " + recipient + b"\r\nSubject: s\r\n\r\nbody\r\n"
        target = DeliveryTarget(account.id, "INBOX", frozenset())
        s.mail.deliver(Delivery(new_message_id(), message, (target,), 1795687200)).result(10)
    yield s
    s.close()


def selected(store: SQLiteStore) -> Client:
    c = Client(store=store)
    c.login()
    c.select()
    c.greeting = b""
    return c


def test_sort_display_is_advertised(store: SQLiteStore) -> None:
    assert "SORT=DISPLAY" in selected(store).command("a CAPABILITY")[0].decode().split()


def test_displayfrom_and_displayto_sort_by_display_name_else_address(store: SQLiteStore) -> None:
    # DISPLAYFROM keys: 1 "ZOE ZED", 2 "BOB@EXAMPLE.ORG", 3 "A\u0308RGER" (NFKD), 4 "" (a group holds no
    # mailbox), 5 "CARL@EXAMPLE.ORG" (an empty name), 6 "BOB@EXAMPLE.ORG" (equal keys keep mailbox order,
    # RFC 5256 §3). FROM sorts by the local part of the first ENVELOPE address instead, which for a group is
    # the group's name (4: "UNDISCLOSED-RECIPIENTS"), as Dovecot reads it.
    play(
        lambda: selected(store),
        """
        C: a SORT (DISPLAYFROM) UTF-8 ALL
        S: * SORT 4 3 2 6 5 1
        S: a OK SORT completed
        C: b SORT (REVERSE DISPLAYFROM) UTF-8 ALL
        S: * SORT 1 5 2 6 3 4
        S: b OK SORT completed
        C: c SORT (FROM) UTF-8 ALL
        S: * SORT 1 2 6 5 4 3
        S: c OK SORT completed
        C: d UID SORT (displayto) utf-8 NOT TO zz
        S: * SORT 5 3 4 1 6
        S: d OK UID SORT completed
        C: e SORT (DISPLAYTO DISPLAYFROM) US-ASCII 2:6
        S: * SORT 5 2 3 4 6
        S: e OK SORT completed
        """,
        bytewise_too=False,
    )

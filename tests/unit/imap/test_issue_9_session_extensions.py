"""Issue 9: the session extensions UNAUTHENTICATE (RFC 8437), MULTIAPPEND (RFC 3502) and NOTIFY (RFC 5465),
as transcripts after their RFCs' examples, over a real store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kartero.imap.connection import APPEND_PIECE, AppendData, CommandReady, ImapConnection, LoginRequested
from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import SETTINGS, Client, play
from tests.unit.mime import corpus

WHEN = 1795687200  # 2026-11-26 10:00:00 UTC


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.add_account("bob@example.test", "unused")
    s.add_account("alice@example.test", "unused")
    s.start()
    yield s
    s.close()


def deliver(store: SQLiteStore, mailbox: str = "INBOX", account_id: int = 1) -> None:
    target = DeliveryTarget(account_id, mailbox)
    store.deliver(Delivery(new_message_id(), corpus.PLAIN, (target,), WHEN)).result(10)


def client(store: SQLiteStore) -> Client:
    c = Client(store=store)
    c.login()
    return c


def uidvalidity(store: SQLiteStore, name: str) -> int:
    mailbox = store.get_mailbox(1, name)
    assert mailbox is not None
    return mailbox.uidvalidity


# -- UNAUTHENTICATE (RFC 8437) -------------------------------------------------------------------------------


def test_issue_9_unauthenticate_is_advertised_after_login(store: SQLiteStore) -> None:
    c = Client(store=store)
    assert b"UNAUTHENTICATE" not in c.greeting
    assert b" UNAUTHENTICATE " in c.command("a LOGIN bob@example.test pw")[-1]


def test_issue_9_unauthenticate_returns_to_not_authenticated(store: SQLiteStore) -> None:
    deliver(store)
    play(lambda: Client(store=store), """
        S~ \\* OK \\[CAPABILITY .*\\] imap.example.test Kartero IMAP4rev2 ready
        C: a LOGIN bob@example.test pw
        S~ a OK \\[CAPABILITY .*\\] Logged in
        C: b ENABLE CONDSTORE
        S: * ENABLED CONDSTORE
        S: b OK ENABLE completed
        C: c EXAMINE INBOX
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S: c OK [READ-ONLY] EXAMINE completed
        C: d UNAUTHENTICATE
        S: d OK UNAUTHENTICATE completed
        C: e FETCH 1 FLAGS
        S: e BAD FETCH not allowed now
        C: f SELECT INBOX
        S: f BAD SELECT not allowed now
        C: g LOGIN alice@example.test pw
        S~ g OK \\[CAPABILITY .*\\] Logged in
        C: h ENABLE CONDSTORE
        S: * ENABLED CONDSTORE
        S: h OK ENABLE completed
        C: i STATUS INBOX (MESSAGES)
        S: * STATUS "INBOX" (MESSAGES 0)
        S: i OK STATUS completed
    """)  # fmt: skip


def test_issue_9_unauthenticate_lets_go_of_the_selected_mailbox(store: SQLiteStore) -> None:
    deliver(store)
    one, two = client(store), client(store)
    two.select()
    one.select()
    one.command("a STORE 1 +FLAGS.SILENT (\\Deleted)")
    one.command("b EXPUNGE")
    assert store.message_rows(1, [1], expunged=True) != []  # kept while session two shows it
    assert two.command("c UNAUTHENTICATE") == [b"c OK UNAUTHENTICATE completed\r\n"]
    deliver(store, "Archive")  # the committer has let it go meanwhile
    assert store.message_rows(1, [1], expunged=True) == []


# -- MULTIAPPEND (RFC 3502) -----------------------------------------------------------------------------------

FIRST = (
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nFrom: Fred Foobar <foobar@Blurdybloop.example.COM>\r\n"
    b"Subject: afternoon meeting\r\nTo: mooch@owatagu.siam.edu\r\n\r\nHello Joe, do you think we can meet at 3:30?\r\n"
)
SECOND = (
    b"Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\nFrom: Joe Mooch <mooch@OWaTaGu.siam.EDU>\r\n"
    b"Subject: Re: afternoon meeting\r\nTo: foobar@blurdybloop.example.com\r\n\r\n3:30 is fine with me.\r\n"
)


def test_issue_9_multiappend_rfc_3502_example(store: SQLiteStore) -> None:
    store.create_mailbox(1, "saved-messages")
    v = uidvalidity(store, "saved-messages")
    between = b' (\\Seen) " 7-Feb-1994 22:43:04 -0800" {%d}\r\n' % len(SECOND)
    play(lambda: Client(store=store), f"""
        S~ \\* OK .* ready
        C: l LOGIN bob@example.test pw
        S~ l OK .*
        C: A003 APPEND saved-messages (\\Seen) {{{len(FIRST)}}}
        S: + Ready for literal data
        C! {FIRST!r}
        C! {between!r}
        S: + Ready for literal data
        C! {SECOND!r}
        C:
        S: A003 OK [APPENDUID {v} 1:2] APPEND completed
        C: A004 APPEND unknown-mailbox {{1+}}
        C: x {{1+}}
        C: y
        S: A004 NO [TRYCREATE] No such mailbox
    """, bytewise_too=False)  # fmt: skip
    c = client(store)
    c.command("a EXAMINE saved-messages")
    assert c.command("b FETCH 1:2 (FLAGS RFC822.SIZE)")[:2] == [
        b"* 1 FETCH (FLAGS (\\Recent \\Seen) RFC822.SIZE %d)\r\n" % len(FIRST),
        b"* 2 FETCH (FLAGS (\\Recent \\Seen) RFC822.SIZE %d)\r\n" % len(SECOND),
    ]
    assert c.command("b2 FETCH 2 INTERNALDATE")[0] == b'* 2 FETCH (INTERNALDATE " 8-Feb-1994 06:43:04 +0000")\r\n'
    assert c.command("c FETCH 2 BODY.PEEK[]")[1:3] == [line + b"\r\n" for line in SECOND.split(b"\r\n")[:2]]


def test_issue_9_multiappend_into_the_selected_mailbox_reports_exists(store: SQLiteStore) -> None:
    c = client(store)
    c.command("e ENABLE IMAP4rev2")
    c.select()
    lines = c.command(f"a APPEND INBOX {{{len(FIRST)}+}}\r\n{FIRST.decode()} {{{len(SECOND)}+}}\r\n{SECOND.decode()}")
    assert lines == [b"* 2 EXISTS\r\n", b"a OK [APPENDUID %d 1:2] APPEND completed\r\n" % uidvalidity(store, "INBOX")]


def test_issue_9_multiappend_is_all_or_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data")
    store.add_account("bob@example.test", "unused")
    store.start()
    try:
        c = client(store)  # APPENDLIMIT 100000 in the harness
        # The second message is over the limit: the command fails and the first is not stored either.
        assert c.command(f"a APPEND INBOX {{{len(FIRST)}+}}\r\n{FIRST.decode()} {{200000}}") == [
            b"a NO [TOOBIG] Literal too large (100000 octets allowed)\r\n"
        ]
        # The messages together may take 4 x APPENDLIMIT (one spool file per command bounds the disk).
        small = b"x" * 90000
        out = c.send(b"b APPEND INBOX" + b" {90000+}\r\n" * 1 + small + b" {90000+}\r\n" + small + b"\r\n")
        assert out.startswith(b"b OK [APPENDUID")
        many = b"c APPEND INBOX" + (b" {90000+}\r\n" + small) * 16 + b" {90000}\r\n"
        assert c.send(many) == b"c NO [TOOBIG] Literal too large (100000 octets allowed)\r\n"  # 17 x 90000
        assert store.mailbox_status(1).messages == 2
    finally:
        store.close()


def test_issue_9_multiappend_spools_each_large_message_to_one_file() -> None:
    """Past 1 MiB in memory, an APPEND's messages leave the core in AppendData pieces, back to back in the
    adapter's one spool file; the command says how large each spooled message is."""
    conn = ImapConnection(replace(SETTINGS, append_limit=5_000_000), is_loopback=True)
    conn.start()
    conn.receive_data(b"l LOGIN bob@example.test pw\r\n")
    assert isinstance(conn.next_event(), LoginRequested)
    conn.login_result("l", "bob@example.test")
    big, small, middle = b"a" * 1_500_000, b"b" * 600_000, b"c" * 700_000
    conn.receive_data(b"x APPEND INBOX {1500000+}\r\n" + big + b" {600000+}\r\n" + small)
    conn.receive_data(b" (\\Seen) {700000+}\r\n" + middle + b"\r\n")
    pieces: list[AppendData] = []
    while isinstance(event := conn.next_event(), AppendData):
        pieces.append(event)
    assert isinstance(event, CommandReady)
    assert [m.spooled for m in event.command.messages] == [1_500_000, 0, 700_000]  # type: ignore[union-attr]
    assert event.command.messages[1].data == small  # type: ignore[union-attr]
    assert b"".join(p.data for p in pieces) == big + middle
    assert [p.is_first for p in pieces].count(True) == 1 and pieces[0].is_first
    assert max(len(p.data) for p in pieces) <= APPEND_PIECE

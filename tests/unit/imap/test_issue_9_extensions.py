"""Issue 9, extensions: SAVEDATE (RFC 8514), OBJECTID (RFC 8474), PREVIEW (RFC 8970), in the shape of their
RFCs' examples, over a real store."""

from __future__ import annotations

import itertools
import re
import sqlite3
import time
from pathlib import Path

import pytest

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client, play

WHEN = 1795687200  # 26-Nov-2026 10:00:00 UTC: the internal date of delivered mail
DEC_28 = 1514459065  # 28-Dec-2017 11:04:25 UTC
DEC_29 = DEC_28 + 86400


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


def clock(monkeypatch: pytest.MonkeyPatch, now: int) -> None:
    monkeypatch.setattr(time, "time", lambda: float(now))


MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nHello there.\r\n"


# -- SAVEDATE (RFC 8514) -------------------------------------------------------------------------------------


def test_issue_9_savedate_is_when_a_message_came_into_its_mailbox(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock(monkeypatch, DEC_28)
    deliver(store, MESSAGE, MESSAGE)
    c = client(store)
    assert "SAVEDATE" in c.command("c CAPABILITY")[0].decode()
    # RFC 8514 §3's example, with our dates: the save date, not the internal date.
    assert c.command("A101 FETCH 1 (SAVEDATE)") == [
        b'* 1 FETCH (SAVEDATE "28-Dec-2017 11:04:25 +0000")\r\n',
        b"A101 OK FETCH completed\r\n",
    ]
    clock(monkeypatch, DEC_29)
    assert c.command("m1 COPY 2 Archive")[-1].startswith(b"m1 OK [COPYUID ")
    assert c.command('a1 APPEND INBOX "01-Jan-2001 00:00:00 +0000" {5}\r\nhello')[-1].startswith(b"a1 OK")
    c.command("n NOOP")
    assert c.command("A102 SEARCH SAVEDON 28-Dec-2017") == [b"* SEARCH 1 2\r\n", b"A102 OK SEARCH completed\r\n"]
    assert c.command("A103 SEARCH SAVEDSINCE 29-Dec-2017")[0] == b"* SEARCH 3\r\n"
    assert c.command("A104 SEARCH SAVEDBEFORE 29-Dec-2017")[0] == b"* SEARCH 1 2\r\n"
    assert c.command("A105 SEARCH SAVEDATESUPPORTED")[0] == b"* SEARCH 1 2 3\r\n"
    assert c.command('A106 SEARCH OR SAVEDON 29-Dec-2017 BODY "no such text"')[0] == b"* SEARCH 3\r\n"
    assert c.command("A107 FETCH 3 (INTERNALDATE SAVEDATE)")[0] == (
        b'* 3 FETCH (INTERNALDATE "01-Jan-2001 00:00:00 +0000" SAVEDATE "29-Dec-2017 11:04:25 +0000")\r\n'
    )
    c.command("x EXAMINE Archive")
    assert c.command("A108 FETCH 1 (SAVEDATE)")[0] == b'* 1 FETCH (SAVEDATE "29-Dec-2017 11:04:25 +0000")\r\n'


def test_issue_9_messages_stored_before_savedate_have_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database from before gets the column; its messages answer NIL and are searched by internal date."""
    store = SQLiteStore(tmp_path / "data")
    store.accounts.add_account("bob@example.test", "unused")
    store.start()
    deliver(store, MESSAGE)
    store.close()
    db = sqlite3.connect(tmp_path / "data" / "kartero.db")
    db.execute("ALTER TABLE messages DROP COLUMN saved_at")
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path / "data")
    store.start()
    try:
        clock(monkeypatch, DEC_28)
        deliver(store, MESSAGE)
        c = client(store)
        assert c.command("f FETCH 1:2 (SAVEDATE)")[:2] == [
            b"* 1 FETCH (SAVEDATE NIL)\r\n",
            b'* 2 FETCH (SAVEDATE "28-Dec-2017 11:04:25 +0000")\r\n',
        ]
        assert c.command("s SEARCH SAVEDON 26-Nov-2026")[0] == b"* SEARCH 1\r\n"
    finally:
        store.close()


# -- OBJECTID (RFC 8474) -------------------------------------------------------------------------------------

def objectid(line: bytes, kind: bytes = b"MAILBOXID") -> bytes:
    found = re.search(kind + rb" \(([A-Za-z0-9_-]+)\)", line)
    assert found is not None, line
    return found.group(1)


def test_issue_9_mailboxid_is_stable_across_rename_and_unique(store: SQLiteStore) -> None:
    c = Client(store=store)
    c.login()
    assert "OBJECTID" in c.command("c CAPABILITY")[0].decode()
    # RFC 8474 §4.1's example: CREATE answers the new MAILBOXID, STATUS reports it, RENAME keeps it.
    created = c.command("3 create foo")
    assert re.fullmatch(rb"3 OK \[MAILBOXID \(F[0-9a-f]{24}\)\] CREATE completed\r\n", created[0])
    foo, bar = objectid(created[0]), objectid(c.command("4 create bar")[0])
    assert foo != bar
    assert c.command("5 create foo") == [b"5 NO [ALREADYEXISTS] Mailbox exists\r\n"]
    assert c.command("7 status foo (MAILBOXID)") == [
        b'* STATUS "foo" (MAILBOXID (%s))\r\n' % foo,
        b"7 OK STATUS completed\r\n",
    ]
    assert c.command("8 rename foo renamed")[-1] == b"8 OK RENAME completed\r\n"
    assert c.command("9 status renamed (MAILBOXID)")[0] == b'* STATUS "renamed" (MAILBOXID (%s))\r\n' % foo
    assert c.command("10 status bar (MAILBOXID MESSAGES)")[0] == (
        b'* STATUS "bar" (MAILBOXID (%s) MESSAGES 0)\r\n' % bar
    )
    assert b"* OK [MAILBOXID (%s)] Ok\r\n" % foo in c.command("11 select renamed")
    assert b"* OK [MAILBOXID (%s)] Ok\r\n" % foo in c.command("12 examine renamed")
    listed = c.command('13 list "" "*" return (status (mailboxid))')
    assert b'* STATUS "renamed" (MAILBOXID (%s))\r\n' % foo in listed
    ids = [objectid(line) for line in listed if line.startswith(b"* STATUS")]
    assert len(ids) == len(set(ids)) == 8  # the 6 every account gets, and the 2 made here


def test_issue_9_emailid_follows_the_message_and_threadid_is_nil(store: SQLiteStore) -> None:
    deliver(store, MESSAGE, b"Subject: second\r\n\r\nbody\r\n")
    c = client(store)
    # RFC 8474 §5.1's example: EMAILID and THREADID, then a MOVE keeps the EMAILID.
    fetched = c.command("12 fetch 1:2 (emailid threadid)")
    assert all(re.fullmatch(rb"\* \d FETCH \(EMAILID \(M[0-9a-f]{24}\) THREADID NIL\)\r\n", f) for f in fetched[:2])
    first, second = objectid(fetched[0], b"EMAILID"), objectid(fetched[1], b"EMAILID")
    assert first != second
    assert c.command("13 move 2 Archive")[-1].startswith(b"13 OK")
    c.command("14 select Archive")
    assert c.command("15 fetch 1 (emailid threadid)")[0] == b"* 1 FETCH (EMAILID (%s) THREADID NIL)\r\n" % second
    assert c.command("16 copy 1 INBOX")[-1].startswith(b"16 OK")
    c.command("17 select INBOX")
    assert c.command(f"18 search emailid {second.decode()}")[0] == b"* SEARCH 2\r\n"  # the copy, same EMAILID
    assert c.command(f"19 search emailid {first.decode()}")[0] == b"* SEARCH 1\r\n"
    assert c.command("20 search emailid Mnothere")[0] == b"* SEARCH\r\n"
    assert c.command(f'21 search or emailid {first.decode()} body "no such text"')[0] == b"* SEARCH 1\r\n"
    assert c.command("22 search threadid T64b478a75b7ea9")[0] == b"* SEARCH\r\n"
    assert c.command("23 search emailid")[0] == b"23 BAD SEARCH: missing object id\r\n"


def test_issue_9_mailboxes_made_before_objectid_get_one_that_stays(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data")
    store.accounts.add_account("bob@example.test", "unused")
    store.close()
    db = sqlite3.connect(tmp_path / "data" / "kartero.db")
    db.execute("DROP INDEX mailboxes_objectid")
    db.execute("ALTER TABLE mailboxes DROP COLUMN objectid")
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path / "data")
    ids = {m.name: m.objectid for m in store.mail.list_mailboxes(1)}
    store.close()
    assert len(set(ids.values())) == 6 and all(re.fullmatch(r"F[0-9a-f]{24}", i) for i in ids.values())
    store = SQLiteStore(tmp_path / "data")
    assert {m.name: m.objectid for m in store.mail.list_mailboxes(1)} == ids
    store.close()


# -- PREVIEW (RFC 8970) --------------------------------------------------------------------------------------

LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Curabitur aliquam turpis et ante dictum, et "
    "pulvinar dui congue. Maecenas hendrerit, lorem in porta vehicula, elit nulla scelerisque nunc, vel placerat "
    "nisl risus id lectus. Vestibulum ante ipsum primis in faucibus orci luctus et ultrices posuere cubilia."
)
LONG = b"Subject: long\r\n\r\n" + LOREM.encode() + b"\r\n"
SHORT = b"Subject: short\r\n\r\nShort message.\r\n"
EMPTY = b"Subject: no text\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
HTML = (
    b"Subject: html\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment\r\n\r\n%PDF\r\n"
    b"--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"<html><head><title>T</title><style>p {color: red}</style></head><body><p>Gr=C3=BC=C3=9Fe &amp; "
    b"welcome,</p><!-- hidden --><p>see<br>you</p></body></html>\r\n--b--\r\n"
)


def test_issue_9_preview_as_in_the_rfc_examples(store: SQLiteStore) -> None:
    deliver(store, LONG, SHORT, EMPTY, HTML)
    c = client(store)
    assert "PREVIEW" in c.command("A1 CAPABILITY")[0].decode()
    # RFC 8970 §5: a preview of at most 256 characters; an empty one for a message without text.
    assert c.command("A2 FETCH 1 (RFC822.SIZE PREVIEW)") == [
        b'* 1 FETCH (RFC822.SIZE %d PREVIEW "%s")\r\n' % (len(LONG), LOREM[:256].rstrip().encode()),
        b"A2 OK FETCH completed\r\n",
    ]
    assert c.command("A3 FETCH 2:4 (PREVIEW)") == [
        b'* 2 FETCH (PREVIEW "Short message.")\r\n',
        b'* 3 FETCH (PREVIEW "")\r\n',
        b"* 4 FETCH (PREVIEW {26}\r\n",  # 24 characters, in UTF-8
        "Grüße & welcome, see you".encode() + b")\r\n",
        b"A3 OK FETCH completed\r\n",
    ]
    assert c.command("A4 FETCH 2 (PREVIEW (LAZY))")[0] == b'* 2 FETCH (PREVIEW "Short message.")\r\n'
    assert c.command("A5 fetch 2 (uid preview (lazy) flags)")[0] == (
        b'* 2 FETCH (UID 2 PREVIEW "Short message." FLAGS (\\Recent))\r\n'  # a rev1 session
    )
    assert c.command("A6 FETCH 2 (PREVIEW (FUZZY))") == [b"A6 BAD unknown PREVIEW modifier\r\n"]
    # RFC 8970 §4: a lone PREVIEW takes its modifiers too; any other list after it is the FETCH modifiers.
    assert c.command("A7 FETCH 2 PREVIEW (LAZY)")[0] == b'* 2 FETCH (PREVIEW "Short message.")\r\n'
    assert c.command("A8 FETCH 2 PREVIEW (CHANGEDSINCE 1)")[1] == b'* 2 FETCH (PREVIEW "Short message." MODSEQ (3))\r\n'


def test_issue_9_preview_of_older_mail_is_made_on_its_first_fetch(tmp_path: Path) -> None:
    """A database from before previews: LAZY answers NIL (RFC 8970 §3.1), a plain PREVIEW makes it once."""
    store = SQLiteStore(tmp_path / "data")
    store.accounts.add_account("bob@example.test", "unused")
    store.start()
    deliver(store, SHORT, LONG)
    store.close()
    db = sqlite3.connect(tmp_path / "data" / "kartero.db")
    db.execute("ALTER TABLE blobs DROP COLUMN preview")
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path / "data")
    store.start()
    try:
        c = client(store)
        assert c.command("A4 FETCH 1:2 (PREVIEW (LAZY))")[:2] == [
            b"* 1 FETCH (PREVIEW NIL)\r\n",
            b"* 2 FETCH (PREVIEW NIL)\r\n",
        ]
        assert c.command("A5 FETCH 1 (PREVIEW)")[0] == b'* 1 FETCH (PREVIEW "Short message.")\r\n'
        assert c.command("A6 FETCH 1:2 (PREVIEW (LAZY))") == [
            b'* 1 FETCH (PREVIEW "Short message.")\r\n',
            b"* 2 FETCH (PREVIEW NIL)\r\n",
            b"A6 OK FETCH completed\r\n",
        ]
        assert c.command("A7 FETCH 1:2 (PREVIEW)")[1].startswith(b'* 2 FETCH (PREVIEW "Lorem ipsum')
        assert c.command("A8 FETCH 2 (PREVIEW (LAZY))")[0].startswith(b'* 2 FETCH (PREVIEW "Lorem ipsum')
    finally:
        store.close()


def test_issue_9_preview_transcript_whole_and_byte_by_byte(tmp_path: Path) -> None:
    """RFC 8970 §5 shapes, played as a transcript whole and again one byte at a time (a fresh store each)."""
    numbers = itertools.count()
    stores: list[SQLiteStore] = []

    def make() -> Client:
        store = SQLiteStore(tmp_path / str(next(numbers)))
        store.accounts.add_account("bob@example.test", "unused")
        store.start()
        stores.append(store)
        deliver(store, SHORT, EMPTY, HTML)
        return Client(store=store)

    try:
        play(make, """
            S~ \\* OK \\[CAPABILITY .*\\] imap.example.test Kartero IMAP4rev2 ready
            C: a LOGIN bob@example.test pw
            S~ a OK \\[CAPABILITY .* PREVIEW .*\\] Logged in
            C: b EXAMINE INBOX
            S~ \\* .*
            S~ \\* .*
            S~ \\* .*
            S~ \\* .*
            S~ \\* .*
            S~ \\* .*
            S~ \\* .*
            S~ \\* .*
            S~ \\* .*
            S: b OK [READ-ONLY] EXAMINE completed
            C: c FETCH 1:2 (PREVIEW)
            S: * 1 FETCH (PREVIEW "Short message.")
            S: * 2 FETCH (PREVIEW "")
            S: c OK FETCH completed
            C: d UID FETCH 3 (PREVIEW (LAZY))
            S: * 3 FETCH (UID 3 PREVIEW {26}
            S: Grüße & welcome, see you)
            S: d OK UID FETCH completed
        """)  # fmt: skip
    finally:
        for store in stores:
            store.close()

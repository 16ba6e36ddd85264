"""Issue 9, extensions: SAVEDATE (RFC 8514), OBJECTID (RFC 8474), PREVIEW (RFC 8970), in the shape of their
RFCs' examples, over a real store."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client

WHEN = 1795687200  # 26-Nov-2026 10:00:00 UTC: the internal date of delivered mail
DEC_28 = 1514459065  # 28-Dec-2017 11:04:25 UTC
DEC_29 = DEC_28 + 86400


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
        b'* 3 FETCH (INTERNALDATE " 1-Jan-2001 00:00:00 +0000" SAVEDATE "29-Dec-2017 11:04:25 +0000")\r\n'
    )
    c.command("x EXAMINE Archive")
    assert c.command("A108 FETCH 1 (SAVEDATE)")[0] == b'* 1 FETCH (SAVEDATE "29-Dec-2017 11:04:25 +0000")\r\n'


def test_issue_9_messages_stored_before_savedate_have_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database from before gets the column; its messages answer NIL and are searched by internal date."""
    store = SQLiteStore(tmp_path / "data")
    store.add_account("bob@example.test", "unused")
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

"""Issue 9: what sessions on one mailbox are told and when (EXISTS after APPEND/COPY/MOVE, CONDSTORE's
HIGHESTMODSEQ, new keywords announced in FLAGS, expunge races, \\Recent for IMAP4rev1), over a real store;
two Clients on one store are two sessions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client
from tests.unit.mime import corpus

WHEN = 1795687200  # 2026-11-26 10:00:00 UTC


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.add_account("bob@example.test", "unused")
    s.start()
    yield s
    s.close()


def deliver(store: SQLiteStore, data: bytes = corpus.PLAIN, mailbox: str = "INBOX",
            flags: frozenset[str] = frozenset()) -> None:  # fmt: skip
    target = DeliveryTarget(1, mailbox, flags)
    store.deliver(Delivery(new_message_id(), data, (target,), WHEN)).result(10)


def client(store: SQLiteStore, *, rev2: bool = False) -> Client:
    c = Client(store=store)
    c.login()
    if rev2:
        assert c.command("e0 ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2\r\n"
    return c


def uidvalidity(store: SQLiteStore, name: str) -> int:
    mailbox = store.get_mailbox(1, name)
    assert mailbox is not None
    return mailbox.uidvalidity


# -- APPEND / COPY / MOVE into the selected mailbox ------------------------------------------------------


def test_issue_9_append_into_selected_mailbox_reports_exists_before_ok(store: SQLiteStore) -> None:
    deliver(store)
    c = client(store, rev2=True)
    c.select()
    message = b"Subject: hi\r\n\r\nbody\r\n"
    lines = c.command(f"a APPEND INBOX {{{len(message)}+}}\r\n{message.decode()}")
    assert lines == [b"* 2 EXISTS\r\n", b"a OK [APPENDUID %d 2] APPEND completed\r\n" % uidvalidity(store, "INBOX")]
    assert c.command("b FETCH 2 UID") == [b"* 2 FETCH (UID 2)\r\n", b"b OK FETCH completed\r\n"]


def test_issue_9_copy_and_move_into_selected_mailbox_report_exists_before_ok(store: SQLiteStore) -> None:
    deliver(store)
    c = client(store, rev2=True)
    c.select()
    v = uidvalidity(store, "INBOX")
    assert c.command("a COPY 1 INBOX") == [b"* 2 EXISTS\r\n", b"a OK [COPYUID %d 1 2] COPY completed\r\n" % v]
    assert c.command("b COPY 2 INBOX") == [b"* 3 EXISTS\r\n", b"b OK [COPYUID %d 2 3] COPY completed\r\n" % v]
    assert c.command("c MOVE 3 INBOX") == [
        b"* OK [COPYUID %d 3 4] Moved\r\n" % v,
        b"* 3 EXPUNGE\r\n",
        b"* 3 EXISTS\r\n",
        b"c OK MOVE completed\r\n",
    ]
    assert c.command("d FETCH 3 UID") == [b"* 3 FETCH (UID 4)\r\n", b"d OK FETCH completed\r\n"]
    assert c.command("e UID MOVE 4 INBOX")[:3] == [
        b"* OK [COPYUID %d 4 5] Moved\r\n" % v,
        b"* 3 EXPUNGE\r\n",
        b"* 3 EXISTS\r\n",
    ]

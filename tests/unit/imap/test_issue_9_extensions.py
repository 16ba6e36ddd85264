"""Issue 9: the session extensions UNAUTHENTICATE (RFC 8437), MULTIAPPEND (RFC 3502) and NOTIFY (RFC 5465),
as transcripts after their RFCs' examples, over a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client, play
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

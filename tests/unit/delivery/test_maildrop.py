"""The server side of the maildrop: what `kartero sendmail` left is stored once, and a file that keeps
failing is set aside instead of being retried forever (issue 8, finding 3)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path

import pytest

from kartero.auth.accounts import DirectoryCache
from kartero.concurrency import Blocking
from kartero.delivery import maildrop
from kartero.delivery.local import DsnSender
from kartero.intake import Intake
from kartero.store.interface import Delivery, StoredMessage, StoreError
from kartero.store.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.start()
    yield s
    s.close()


def pickup(store: SQLiteStore) -> maildrop.Pickup:
    """A pickup as the server builds it (call inside a running loop: DSNs go through it)."""
    directory = DirectoryCache(store.accounts, ("example.test",))
    directory.prime()
    intake = Intake(store.mail, directory, hostname="mx.example.test", queue_lifetime_s=3600.0, blocking=Blocking())
    return maildrop.Pickup(store.root, intake, DsnSender(intake, asyncio.get_running_loop()), "mx.example.test")


def run_once(store: SQLiteStore, times: int = 1) -> list[int]:
    """What `times` passes of one pickup stored, each."""

    async def passes() -> list[int]:
        worker = pickup(store)
        return [await worker.run_once() for _ in range(times)]

    return asyncio.run(passes())


def drop(store: SQLiteStore, data: bytes, *recipients: str) -> Path:
    return maildrop.write(store.root, maildrop.Dropped("bob@example.test", recipients, data, "root", 1.0))


def test_issue_8_poison_header_through_sendmail_is_stored_once(store: SQLiteStore) -> None:
    bob = store.accounts.add_account("bob@example.test", "h")
    data = b"Subject: =?rot13?q?k?=\r\nFrom: bob@example.test\r\n\r\nhi\r\n"
    path = drop(store, data, "bob@example.test")
    assert run_once(store) == [1]
    assert not path.exists()
    inbox = store.mail.get_mailbox(bob.id, "INBOX")
    assert inbox is not None
    (row,) = store.mail.message_rows(inbox.id)
    assert store.mail.read_message(row.blob_id).endswith(data)


def test_issue_8_file_that_keeps_failing_goes_to_corrupt_after_five_tries(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store.accounts.add_account("bob@example.test", "h")

    def failing(deliveries: Sequence[Delivery]) -> Future[list[list[StoredMessage]]]:
        future: Future[list[list[StoredMessage]]] = Future()
        future.set_exception(StoreError("disk trouble"))
        return future

    real = store.mail.deliver_group
    monkeypatch.setattr(store.mail, "deliver_group", failing)
    path = drop(store, b"Subject: s\r\n\r\nhi\r\n", "bob@example.test")
    with caplog.at_level(logging.ERROR, "kartero.maildrop"):
        assert run_once(store, maildrop.MAX_ATTEMPTS) == [0] * maildrop.MAX_ATTEMPTS
    assert not path.exists()
    assert (path.parent / "corrupt" / path.name).exists()
    assert any("event=maildrop.corrupt" in r.getMessage() and "store failed 5 times" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    monkeypatch.setattr(store.mail, "deliver_group", real)
    second = drop(store, b"Subject: t\r\n\r\nhi\r\n", "bob@example.test")
    assert run_once(store) == [1] and not second.exists()


def test_issue_8_only_unknown_recipients_are_bounced_not_set_aside(store: SQLiteStore) -> None:
    """Nothing to store (every recipient unknown, e.g. deleted since `kartero sendmail`) is not a store
    failure: the sender gets its bounce and the file goes (found in review: it went to corrupt/)."""
    bob = store.accounts.add_account("bob@example.test", "h")
    path = drop(store, b"Subject: s\r\n\r\nhi\r\n", "gone@example.test")
    assert run_once(store) == [1] and not path.exists()
    assert not (path.parent / "corrupt").exists()
    inbox = store.mail.get_mailbox(bob.id, "INBOX")
    assert inbox is not None
    (bounce,) = store.mail.message_rows(inbox.id)
    assert b"gone@example.test" in store.mail.read_message(bounce.blob_id)


def test_issue_10_a_local_recipients_utf8_address_does_not_make_the_queued_copy_smtputf8(store: SQLiteStore) -> None:
    """SMTPUTF8 is what the next hop must offer for the queued copy: only the sender and the remote
    recipients count (found in review of issue 10: a local jörg@ made carol's copy need SMTPUTF8)."""
    store.accounts.add_account("bob@example.test", "h")
    store.accounts.add_account("j\u00f6rg@example.test", "h")
    drop(store, b"From: bob@example.test\r\nSubject: s\r\n\r\nhi\r\n", "j\u00f6rg@example.test", "carol@remote.example")
    assert run_once(store) == [1]
    (item,) = store.queue.due_recipients(2**40, 10)
    assert item.address == "carol@remote.example" and not item.smtputf8

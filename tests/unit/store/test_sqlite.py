"""The SQLite + files store: durability bookkeeping, UIDs, MODSEQ, shared bodies, orphans."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.mime.index import MessageIndex
from kartero.store import commit as commit_module
from kartero.store.ids import new_message_id as new_blob_id
from kartero.store.interface import (
    AccountExists,
    Content,
    Delivery,
    DeliveryTarget,
    FileSpan,
    Outbound,
    StoreError,
)
from kartero.store.spool import SpoolFile, spool_dir
from kartero.store.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.start()
    yield s
    s.close()


ENVELOPE = EnvelopeRecord(Origin.SMTP, "a@b", (EnvelopeRecipient("b@x.test", ("SUCCESS",), "rfc822;b@x.test"),),
                          received_at=1_700_000_000, helo="client.example", tls=True)  # fmt: skip


def deliver(store: SQLiteStore, data: bytes, *account_ids: int, mailbox: str = "INBOX") -> str:
    blob_id = new_blob_id()
    targets = tuple(DeliveryTarget(a, mailbox) for a in account_ids)
    store.mail.deliver(Delivery(blob_id, data, targets, 1_700_000_000, ENVELOPE)).result(10)
    return blob_id


def test_account_gets_special_use_mailboxes(store: SQLiteStore) -> None:
    account = store.accounts.add_account("bob@example.test", "hash")
    boxes = store.mail.list_mailboxes(account.id)
    assert [(b.name, b.special_use) for b in boxes] == [
        ("INBOX", None), ("Sent", "\\Sent"), ("Drafts", "\\Drafts"),
        ("Trash", "\\Trash"), ("Junk", "\\Junk"), ("Archive", "\\Archive"),
    ]  # fmt: skip
    assert len({b.uidvalidity for b in boxes}) == len(boxes)  # never reused, even within one second
    assert all(b.uidnext == 1 and b.highestmodseq == 1 for b in boxes)
    with pytest.raises(AccountExists):
        store.accounts.add_account("bob@example.test", "hash")


def test_uids_modseq_and_one_body_for_several_recipients(store: SQLiteStore) -> None:
    bob = store.accounts.add_account("bob@example.test", "h")
    carol = store.accounts.add_account("carol@example.test", "h")
    first = deliver(store, b"one\r\n", bob.id, carol.id)
    deliver(store, b"two\r\n", bob.id)
    inbox = store.mail.get_mailbox(bob.id, "INBOX")
    assert inbox is not None and inbox.uidnext == 3 and inbox.highestmodseq == 3
    messages = store.mail.message_rows(inbox.id)
    assert [(m.uid, m.modseq, m.size) for m in messages] == [(1, 2, 5), (2, 3, 5)]
    carol_inbox = store.mail.get_mailbox(carol.id, "INBOX")
    assert carol_inbox is not None
    (carols,) = store.mail.message_rows(carol_inbox.id)
    assert carols.blob_id == first == messages[0].blob_id
    assert store.mail.read_message(first) == b"one\r\n"
    assert store.mail.read_envelope(first) == ENVELOPE
    assert store.segments.size(store.segments.numbers()[-1]) == len(b"one\r\ntwo\r\n")  # stored once


def test_delivery_to_other_mailbox(store: SQLiteStore) -> None:
    bob = store.accounts.add_account("bob@example.test", "h")
    deliver(store, b"spam\r\n", bob.id, mailbox="Junk")
    junk = store.mail.get_mailbox(bob.id, "Junk")
    assert junk is not None and len(store.mail.message_rows(junk.id)) == 1


def test_delivery_to_vanished_account_fails_and_leaves_no_file(store: SQLiteStore) -> None:
    bob = store.accounts.add_account("bob@example.test", "h")
    store.accounts.delete_account("bob@example.test")
    with pytest.raises(StoreError, match="no recipient mailbox"):
        blob_id = new_blob_id()
        store.mail.deliver(Delivery(blob_id, b"x\r\n", (DeliveryTarget(bob.id),), 0)).result(10)
    with pytest.raises(StoreError, match="no message"):
        store.mail.read_message(blob_id)


def test_deleting_an_account_keeps_bodies_others_still_use(store: SQLiteStore) -> None:
    bob = store.accounts.add_account("bob@example.test", "h")
    carol = store.accounts.add_account("carol@example.test", "h")
    shared = deliver(store, b"shared\r\n", bob.id, carol.id)
    own = deliver(store, b"own\r\n", bob.id)
    assert store.accounts.delete_account("bob@example.test")
    assert store.mail.read_message(shared) == b"shared\r\n"
    with pytest.raises(StoreError, match="no message"):
        store.mail.read_message(own)


def test_compaction_reclaims_space_of_deleted_messages(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data")
    store.segments.max_bytes = 1000  # seal segments early
    bob = store.accounts.add_account("bob@example.test", "h")
    carol = store.accounts.add_account("carol@example.test", "h")
    store.start()
    kept = [deliver(store, f"keep {i}\r\n".encode() + b"k" * 100, carol.id) for i in range(3)]
    for i in range(20):
        deliver(store, f"drop {i}\r\n".encode() + b"d" * 100, bob.id)
    kept.append(deliver(store, b"last\r\n", carol.id))
    before = sum(store.segments.size(n) for n in store.segments.numbers())
    store.accounts.delete_account("bob@example.test")  # asks the committer to compact
    store.close()  # the committer finishes its queue (the compaction included) before stopping
    reopened = SQLiteStore(tmp_path / "data")
    try:
        after = sum(reopened.segments.size(n) for n in reopened.segments.numbers())
        assert after < before / 2
        expected = [f"keep {i}\r\n".encode() + b"k" * 100 for i in range(3)] + [b"last\r\n"]
        assert [reopened.mail.read_message(b) for b in kept] == expected
    finally:
        reopened.close()


def test_concurrent_deliveries_get_distinct_consecutive_uids(store: SQLiteStore) -> None:
    bob = store.accounts.add_account("bob@example.test", "h")
    with ThreadPoolExecutor(16) as pool:
        futures = [
            store.mail.deliver(Delivery(new_blob_id(), f"m{i}\r\n".encode(), (DeliveryTarget(bob.id),), 0))
            for i in range(300)
        ]
        results = [f.result(30) for f in futures]
    del pool
    uids = sorted(r[0].uid for r in results)
    assert uids == list(range(1, 301))
    inbox = store.mail.get_mailbox(bob.id, "INBOX")
    assert inbox is not None
    bodies = sorted(store.mail.read_message(m.blob_id) for m in store.mail.message_rows(inbox.id))
    assert bodies == sorted(f"m{i}\r\n".encode() for i in range(300))


def test_recovery_cuts_bytes_of_an_interrupted_batch(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data")
    bob = store.accounts.add_account("bob@example.test", "h")
    store.start()
    kept = deliver(store, b"kept\r\n", bob.id)
    store.segments.append([b"appended, never committed\r\n"])  # what a crash mid-batch leaves
    store.close()
    reopened = SQLiteStore(tmp_path / "data")
    try:
        assert reopened.recover() == len(b"appended, never committed\r\n")
        reopened.start()
        second = deliver(reopened, b"next\r\n", bob.id)  # appended right after the last committed body
        assert reopened.mail.read_message(kept) == b"kept\r\n"
        assert reopened.mail.read_message(second) == b"next\r\n"
        (number,) = reopened.segments.numbers()
        assert reopened.segments.size(number) == len(b"kept\r\nnext\r\n")
    finally:
        reopened.close()


def test_directory_version_changes_with_every_admin_change(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data")
    try:
        seen = {store.accounts.directory_version()}
        store.accounts.add_account("bob@example.test", "h")
        seen.add(store.accounts.directory_version())
        store.accounts.add_alias("info@example.test", "bob@example.test")
        seen.add(store.accounts.directory_version())
        store.accounts.delete_alias("info@example.test")
        seen.add(store.accounts.directory_version())
        assert len(seen) == 4
        accounts, aliases, first = store.accounts.load_directory()
        assert accounts == {"bob@example.test": first} and aliases == {}
    finally:
        store.close()


def test_issue_10_directory_version_is_a_counter_other_processes_raise(tmp_path: Path) -> None:
    """The version is a row the store raises in the transaction of each change (no file beside the
    database): a second store on the same folder (the CLI's) is seen by the first, and a refused change
    raises nothing."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "directory.version").write_text("left by an older version\n")
    server, cli = SQLiteStore(tmp_path / "data"), SQLiteStore(tmp_path / "data")
    try:
        assert not (tmp_path / "data" / "directory.version").exists()
        before = server.accounts.directory_version()
        cli.accounts.add_account("carol@example.test", "h")
        assert server.accounts.directory_version() == before + 1
        with pytest.raises(AccountExists):
            cli.accounts.add_account("carol@example.test", "h")
        assert server.accounts.directory_version() == before + 1
        cli.accounts.add_alias("info@example.test", "carol@example.test")
        cli.accounts.delete_account("carol@example.test")
        assert server.accounts.directory_version() == before + 3
        assert server.accounts.load_directory()[0] == {}
    finally:
        server.close()
        cli.close()


def test_deliver_refused_before_start_and_after_close(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data")
    with pytest.raises(StoreError):
        store.mail.deliver(Delivery(new_blob_id(), b"x", (DeliveryTarget(1),), 0))
    store.close()


def test_blob_ids_are_unique_and_safe() -> None:
    ids = {new_blob_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(i.isalnum() and len(i) == 24 for i in ids)
    with pytest.raises(ValueError):
        Delivery("../etc/passwd", b"x", (DeliveryTarget(1),), 0)


# -- issue 8: nothing slow in the committer, one failure fails only itself --------------------------------


def _message(subject: str) -> bytes:
    return f"From: a@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def test_issue_8_message_the_parser_chokes_on_is_stored_with_a_minimal_index(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = commit_module.index_message

    def index(data: bytes) -> MessageIndex:
        if b"POISON" in data:
            raise LookupError("unknown encoding: rot13")
        return real(data)

    monkeypatch.setattr(commit_module, "index_message", index)
    bob = store.accounts.add_account("bob@example.test", "h")
    poison = deliver(store, _message("POISON"), bob.id)
    fine = deliver(store, _message("fine"), bob.id)
    inbox = store.mail.get_mailbox(bob.id, "INBOX")
    assert inbox is not None
    rows = store.mail.message_rows(inbox.id, with_index=True)
    assert [r.blob_id for r in rows] == [poison, fine]
    assert store.mail.read_message(poison) == _message("POISON")
    size = len(_message("POISON"))
    assert rows[0].bodystructure == f'("application" "octet-stream" NIL NIL NIL "7bit" {size} NIL NIL NIL NIL)'.encode()
    assert rows[1].envelope is not None and b'"fine"' in rows[1].envelope


def test_issue_8_index_text_sqlite_refuses_is_stored_with_the_minimal_index(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = commit_module.index_message

    def index(data: bytes) -> MessageIndex:  # a lone surrogate cannot be encoded for SQLite
        return dataclasses.replace(real(data), subject="\udcff")

    monkeypatch.setattr(commit_module, "index_message", index)
    bob = store.accounts.add_account("bob@example.test", "h")
    blob = deliver(store, _message("x"), bob.id)
    assert store.mail.read_message(blob) == _message("x")


def test_issue_8_slow_parse_does_not_hold_other_deliveries(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = commit_module.index_message
    release = threading.Event()

    def index(data: bytes) -> MessageIndex:
        if b"SLOW" in data:
            release.wait(10)
        return real(data)

    monkeypatch.setattr(commit_module, "index_message", index)
    bob = store.accounts.add_account("bob@example.test", "h")
    slow = store.mail.deliver(Delivery(new_blob_id(), _message("SLOW"), (DeliveryTarget(bob.id),), 0))
    try:
        for n in range(5):
            deliver(store, _message(f"fast {n}"), bob.id)  # each waits for its own commit
        assert not slow.done()
    finally:
        release.set()
    assert slow.result(10)[0].uid == 6


def test_issue_8_failing_group_fails_alone_and_leaves_nothing(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob = store.accounts.add_account("bob@example.test", "h")
    carol = store.accounts.add_account("carol@example.test", "h")
    store.accounts.delete_account("carol@example.test")
    # Hold the committer in its segment write so that both groups below land in one batch.
    entered, release = threading.Event(), threading.Event()
    real_append = store.segments.append

    def append(bodies: list[bytes]) -> list[tuple[int, int]]:
        entered.set()
        release.wait(10)
        return real_append(bodies)

    monkeypatch.setattr(store.segments, "append", append)
    first = store.mail.deliver(Delivery(new_blob_id(), _message("first"), (DeliveryTarget(bob.id),), 0))
    assert entered.wait(10)
    queued = Outbound("bob@example.test", (EnvelopeRecipient("dave@remote.test"),), 2_000_000_000)
    doomed_queue_id = new_blob_id()
    doomed = store.mail.deliver_group([
        Delivery(new_blob_id(), _message("local"), (DeliveryTarget(carol.id),), 0),  # account gone
        Delivery(doomed_queue_id, _message("remote"), (), 0, None, queued),
    ])  # fmt: skip
    fine = store.mail.deliver_group([Delivery(new_blob_id(), _message("other"), (DeliveryTarget(bob.id),), 0)])
    while store.committer._commit_queue.qsize() < 2:  # both prepared and waiting for the committer
        time.sleep(0.01)
    release.set()
    assert first.result(10)[0].uid == 1
    with pytest.raises(StoreError, match="no recipient mailbox"):
        doomed.result(10)
    assert [[m.uid for m in stored] for stored in fine.result(10)] == [[2]]
    assert store.queue.queue_entries() == []  # the queue half of the failed group was rolled back too
    with pytest.raises(StoreError):
        store.mail.read_message(doomed_queue_id)


def test_issue_8_group_with_local_and_queued_copies_commits_both(store: SQLiteStore) -> None:
    bob = store.accounts.add_account("bob@example.test", "h")
    queued = Outbound("bob@example.test", (EnvelopeRecipient("dave@remote.test"),), 2_000_000_000)
    queue_id = new_blob_id()
    result = store.mail.deliver_group([
        Delivery(new_blob_id(), _message("local"), (DeliveryTarget(bob.id),), 0),
        Delivery(queue_id, _message("remote"), (), 0, None, queued),
    ]).result(10)  # fmt: skip
    assert [[m.uid for m in stored] for stored in result] == [[1], []]
    assert [e.id for e in store.queue.queue_entries()] == [queue_id]


def test_issue_8_large_message_from_a_spool_file_is_stored_and_indexed(store: SQLiteStore, tmp_path: Path) -> None:
    bob = store.accounts.add_account("bob@example.test", "h")
    body = b"".join(b"line %07d of a large body\r\n" % i for i in range(100_000))
    received = b"Subject: big one\r\nFrom: a@example.org\r\nContent-Type: text/plain\r\n\r\n" + body
    spool_file = SpoolFile(tmp_path / "incoming")
    spool_file.write(b"junk before" + received)
    spool_file.close()
    span = FileSpan(spool_file.path, len(b"junk before"), len(received))
    queued = Outbound("a@example.org", (EnvelopeRecipient("dave@remote.test"),), 2_000_000_000)
    local_id, queue_id = new_blob_id(), new_blob_id()
    store.mail.deliver_group([
        Delivery(local_id, Content(b"Return-Path: <a@example.org>\r\n", span), (DeliveryTarget(bob.id),), 0),
        Delivery(queue_id, Content(b"", span), (), 0, None, queued),
    ]).result(30)  # fmt: skip
    assert store.mail.read_message(local_id) == b"Return-Path: <a@example.org>\r\n" + received
    assert store.mail.read_message(queue_id) == received
    inbox = store.mail.get_mailbox(bob.id, "INBOX")
    assert inbox is not None
    (row,) = store.mail.message_rows(inbox.id, with_index=True)
    assert row.size == len(received) + len(b"Return-Path: <a@example.org>\r\n")
    assert row.envelope is not None and b'"big one"' in row.envelope
    assert row.bodystructure is not None and b'"text" "plain"' in row.bodystructure and b" 100000 " in row.bodystructure
    assert list(spool_dir(store.root).iterdir()) == []  # the store's own copies are gone
    assert spool_file.path.exists()  # the caller's file is the caller's


def test_issue_8_spool_file_gone_fails_the_group_cleanly(store: SQLiteStore, tmp_path: Path) -> None:
    bob = store.accounts.add_account("bob@example.test", "h")
    span = FileSpan(tmp_path / "missing.spool", 0, 100)
    with pytest.raises(StoreError, match="could not prepare"):
        store.mail.deliver(Delivery(new_blob_id(), Content(b"", span), (DeliveryTarget(bob.id),), 0)).result(10)
    assert list(spool_dir(store.root).iterdir()) == []
    deliver(store, _message("after"), bob.id)  # the store goes on

"""Issue 9, latency under 50 IMAP sessions: writers of one process queue on the store's write lock instead
of polling SQLite's busy handler, and flag/expunge commits are not fsynced while deliveries are."""

from __future__ import annotations

import threading

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget, FlagOp
from kartero.store.sqlite import SQLiteStore

SYNCHRONOUS_NORMAL, SYNCHRONOUS_FULL = 1, 2


def deliver(store: SQLiteStore, count: int) -> None:
    futures = [
        store.mail.deliver(Delivery(new_message_id(), b"Subject: x\r\n\r\nbody\r\n", (DeliveryTarget(1),), 1795687200))
        for _ in range(count)
    ]
    for future in futures:
        future.result(10)


def test_issue_9_concurrent_writers_never_meet_sqlite_busy(sqlite_store: SQLiteStore) -> None:
    """Eight threads store flags while deliveries commit, with SQLite's busy handler off: every write
    must get in through the lock (before, the second writer at once failed with "database is locked",
    or with the handler on slept 1 to 100 ms per try)."""
    store = sqlite_store
    deliver(store, 8)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(uid: int) -> None:
        store.database.db().execute("PRAGMA busy_timeout=0")
        start.wait()
        try:
            for i in range(40):
                store.mail.update_flags(1, [uid], FlagOp.ADD if i % 2 else FlagOp.REMOVE, frozenset({"$X"}), None)
                store.mail.claim_recent(1, uid)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(uid,)) for uid in range(1, 9)]
    for thread in threads:
        thread.start()
    deliver(store, 20)
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.mail.mailbox_status(1).messages == 28


def test_issue_9_flag_commits_skip_the_fsync_deliveries_keep_it(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    deliver(store, 1)
    db = store.database.db()
    store.mail.update_flags(1, [1], FlagOp.ADD, frozenset({"\\Seen"}), None)
    assert db.execute("PRAGMA synchronous").fetchone()[0] == SYNCHRONOUS_NORMAL
    store.accounts.add_alias("postmaster@example.test", "bob@example.test")  # any other write: fsynced again
    assert db.execute("PRAGMA synchronous").fetchone()[0] == SYNCHRONOUS_FULL
    store.mail.update_flags(1, [1], FlagOp.ADD, frozenset({"\\Deleted"}), None)
    assert store.mail.expunge(1, [1]) == [1]
    assert db.execute("PRAGMA synchronous").fetchone()[0] == SYNCHRONOUS_NORMAL
    store.mail.copy_messages(1, [], 2, move=False)  # COPY and MOVE are fsynced (nothing to copy here)
    assert db.execute("PRAGMA synchronous").fetchone()[0] == SYNCHRONOUS_FULL

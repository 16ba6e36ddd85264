"""Issue 9: tombstones keep an expunged message's bytes for the sessions that have not seen the expunge
(RFC 2180 §4.1.1), and the schema that holds them is added to an older database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget, FlagOp
from kartero.store.sqlite import SCHEMA_VERSION, SQLiteStore


def deliver(store: SQLiteStore, mailbox: str = "INBOX") -> int:
    (stored,) = store.mail.deliver(
        Delivery(new_message_id(), b"Subject: x\r\n\r\nbody\r\n", (DeliveryTarget(1, mailbox),), 1795687200)
    ).result(10)
    return stored.modseq


def expunge(store: SQLiteStore, uid: int) -> int:
    store.mail.update_flags(1, [uid], FlagOp.ADD, frozenset({"\\Deleted"}), None)
    assert store.mail.expunge(1, [uid]) == [uid]
    return store.mail.mailbox_status(1).highestmodseq


def held(store: SQLiteStore) -> list[int]:
    deliver(store, "Archive")  # the committer has done what was queued before (releases run there)
    return [row.uid for row in store.mail.message_rows(1, [1, 2, 3], expunged=True)]


def test_issue_9_a_hold_keeps_what_was_expunged_after_its_modseq(store: SQLiteStore) -> None:
    for _ in range(3):
        modseq = deliver(store)
    early = store.mail.hold_expunged(1, modseq)
    expunge(store, 1)
    late = store.mail.hold_expunged(1, store.mail.mailbox_status(1).highestmodseq)
    second = expunge(store, 2)
    assert held(store) == [1, 2, 3]
    (row,) = store.mail.message_rows(1, [1], expunged=True, with_index=True)
    assert (row.flags, row.size, row.envelope is not None) == (frozenset({"\\Deleted"}), 20, True)
    assert store.mail.open_message(row.blob_id).read(0, 10) == b"Subject: x"
    early.advance(second - 1)  # has seen the first expunge, not the second
    assert held(store) == [2, 3]
    early.release()
    assert held(store) == [2, 3]  # `late` was taken before the second expunge
    late.advance(second)
    assert held(store) == [3]
    assert store.mail.message_rows(1, [1, 2, 3]) == store.mail.message_rows(1, [3])


def test_issue_9_a_database_of_schema_1_gets_the_tombstone_columns(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "data").close()
    db = sqlite3.connect(tmp_path / "data" / "kartero.db")
    db.execute("DROP INDEX expunged_blob")
    for column in ("blob_id", "size", "internal_date", "flags", "message_modseq"):
        db.execute(f"ALTER TABLE expunged DROP COLUMN {column}")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path / "data")
    try:
        columns = {row[1] for row in store.database.db().execute("PRAGMA table_info(expunged)")}
        assert {"blob_id", "size", "internal_date", "flags", "message_modseq"} <= columns
        version = store.database.db().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        assert version == str(SCHEMA_VERSION)
    finally:
        store.close()

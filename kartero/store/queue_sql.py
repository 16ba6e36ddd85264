"""The outbound queue in the SQLite store (kartero.store.interface.QueueStore): a queued message is a blob plus a
`queue` row and one `queue_recipients` row per remote recipient with its state.

Entries are written by the committer in the same transaction as the message bytes (so `250` means
queued durably); attempts are recorded before the next one starts, so a delivered recipient is not tried
again after a crash. An entry whose recipients are all delivered or failed is removed with its bytes
(unless a mailbox still holds them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from kartero.mail.trace import TraceEvent
from kartero.store.interface import (
    Delivery,
    FailedRecipient,
    QueueEntry,
    QueueItem,
    QueueRecipientInfo,
    QueueState,
    QueueStats,
    RecipientUpdate,
    Unreported,
)
from kartero.store.sql import SqlConnection, SqlDatabase
from kartero.store.sqlite_db import drop_unreferenced_blobs
from kartero.store.trace_sql import deleted_rows, insert_rows, trace_rows

OPEN_STATES = (QueueState.PENDING.value, QueueState.DEFERRED.value)


def insert_outbound(db: SqlConnection, delivery: Delivery) -> None:
    """Queue the remote recipients of a delivery (inside the committer's transaction)."""
    out = delivery.outbound
    if out is None or not out.recipients:
        return
    now = delivery.internal_date
    db.execute(
        "INSERT INTO queue (id, sender, ret, envid, smtputf8, body_8bit, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (delivery.blob_id, out.sender, out.ret, out.envid, int(out.smtputf8), int(out.body_8bit), now,
         out.expires_at),
    )  # fmt: skip
    db.executemany(
        "INSERT INTO queue_recipients (queue_id, address, domain, notify, orcpt, state, next_attempt_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
        [
            (delivery.blob_id, r.address, r.address.rpartition("@")[2].lower(), ",".join(r.notify), r.orcpt, now, now)
            for r in out.recipients
        ],
    )


class SQLiteQueue:
    """QueueStore over the shared Database (its entries are written by the committer: see insert_outbound)."""

    def __init__(self, database: SqlDatabase) -> None:
        self._database = database
        self._db = database.db
        self._write = database.write

    def add_queue_listener(self, listener: Callable[[], None]) -> None:
        self._database.listeners.queue.append(listener)

    def due_recipients(self, now: int, limit: int, exclude: frozenset[int] = frozenset()) -> list[QueueItem]:
        items = [
            item
            for item in self._items(
                "r.state IN (?, ?) AND r.next_attempt_at <= ? ORDER BY r.next_attempt_at, r.id LIMIT ?",
                (*OPEN_STATES, now, limit + len(exclude)),
            )
            if item.recipient_id not in exclude
        ]
        return items[:limit]

    def renew_leases(self, recipient_ids: Sequence[int]) -> None:
        """One process delivers from the embedded store: nothing to renew."""

    def _items(self, where: str, params: Sequence[Any]) -> list[QueueItem]:
        rows = self._db().execute(
            "SELECT r.id, r.queue_id, r.address, r.domain, r.notify, r.orcpt, r.attempts, q.sender, q.ret, q.envid,"
            " q.smtputf8, q.body_8bit, q.created_at, q.expires_at, q.delay_notified, b.size"
            " FROM queue_recipients r JOIN queue q ON q.id = r.queue_id JOIN blobs b ON b.id = q.id"
            f" WHERE {where}",
            params,
        )
        return [
            QueueItem(
                r[0],
                r[1],
                r[2],
                r[3],
                tuple(n for n in r[4].split(",") if n),
                r[5],
                r[6],
                r[7],
                r[8],
                r[9],
                bool(r[10]),
                bool(r[11]),
                r[12],
                r[13],
                bool(r[14]),
                r[15],
            )
            for r in rows
        ]

    def update_recipients(self, updates: Sequence[RecipientUpdate], trace: Sequence[TraceEvent] = ()) -> None:
        if not updates:
            return
        now = int(time.time())
        events, addresses = trace_rows(trace)  # made before the write lock is taken
        with self._write() as db:
            insert_rows(db, events, addresses)
            db.executemany(
                "UPDATE queue_recipients SET state = ?, attempts = ?, next_attempt_at = ?, last_reply = ?,"
                " updated_at = ?, status = ?, remote_mta = ?, reported = ? WHERE id = ?",
                [(u.state.value, u.attempts, u.next_attempt_at, u.reply.to_line(), now, u.status, u.remote_mta,
                  int(not u.needs_report), u.recipient_id) for u in updates],
            )  # fmt: skip
            self._remove_finished(db, [u.recipient_id for u in updates])

    def _remove_finished(self, db: SqlConnection, recipient_ids: list[int]) -> None:
        """Remove the entries of these recipients that have nothing left to try or to report."""
        marks = ",".join("?" * len(recipient_ids))
        entries = [r[0] for r in db.execute(f"SELECT DISTINCT queue_id FROM queue_recipients WHERE id IN ({marks})",
                                            recipient_ids)]  # fmt: skip
        finished = [
            e
            for e in entries
            if db.execute(
                "SELECT 1 FROM queue_recipients WHERE queue_id = ? AND (state IN (?, ?) OR reported = 0) LIMIT 1",
                (e, *OPEN_STATES),
            ).fetchone()
            is None
        ]
        self._remove_entries(db, finished)

    def unreported_failures(self, queue_id: str) -> Unreported | None:
        db = self._db()
        head = db.execute(
            "SELECT sender, ret, envid, smtputf8, created_at FROM queue WHERE id = ?", (queue_id,)
        ).fetchone()
        if head is None:
            return None
        rows = db.execute(
            "SELECT id, address, orcpt, status, last_reply, remote_mta, updated_at FROM queue_recipients"
            " WHERE queue_id = ? AND state = ? AND reported = 0 ORDER BY id",
            (queue_id, QueueState.FAILED.value),
        ).fetchall()
        if not rows:
            return None
        return Unreported(
            queue_id, head[0], head[1], head[2], bool(head[3]), head[4],
            tuple(FailedRecipient(r[0], r[1], r[2], r[3] or "5.0.0", r[4] or "", r[5], r[6]) for r in rows),
        )  # fmt: skip

    def mark_reported(self, recipient_ids: Sequence[int]) -> None:
        if not recipient_ids:
            return
        with self._write() as db:
            db.executemany("UPDATE queue_recipients SET reported = 1 WHERE id = ?", [(i,) for i in recipient_ids])
            self._remove_finished(db, list(recipient_ids))

    def entries_with_unreported_failures(self) -> list[str]:
        return [
            r[0]
            for r in self._db().execute(
                "SELECT DISTINCT queue_id FROM queue_recipients WHERE state = ? AND reported = 0",
                (QueueState.FAILED.value,),
            )
        ]

    def _remove_entries(self, db: SqlConnection, entries: list[str]) -> None:
        if not entries:
            return
        db.executemany("DELETE FROM queue WHERE id = ?", [(e,) for e in entries])
        drop_unreferenced_blobs(db, entries)

    def mark_delay_notified(self, queue_id: str) -> bool:
        with self._write() as db:
            changed = db.execute("UPDATE queue SET delay_notified = 1 WHERE id = ? AND delay_notified = 0", (queue_id,))
            return bool(changed.rowcount > 0)

    def next_due(self) -> int | None:
        row = (
            self._db()
            .execute("SELECT MIN(next_attempt_at) FROM queue_recipients WHERE state IN (?, ?)", OPEN_STATES)
            .fetchone()
        )
        return None if row is None or row[0] is None else int(row[0])

    def queue_entries(self) -> list[QueueEntry]:
        db = self._db()
        recipients: dict[str, list[QueueRecipientInfo]] = {}
        for r in db.execute(
            "SELECT queue_id, address, state, attempts, next_attempt_at, last_reply FROM queue_recipients ORDER BY id"
        ):
            recipients.setdefault(r[0], []).append(QueueRecipientInfo(r[1], QueueState(r[2]), r[3], r[4], r[5]))
        rows: list[Any] = list(
            db.execute(
                "SELECT q.id, q.sender, b.size, q.created_at, q.expires_at FROM queue q JOIN blobs b ON b.id = q.id"
                " ORDER BY q.created_at, q.id"
            )
        )
        return [QueueEntry(r[0], r[1], r[2], r[3], r[4], tuple(recipients.get(r[0], ()))) for r in rows]

    def queue_stats(self) -> QueueStats:
        db = self._db()
        row = db.execute("SELECT COUNT(*), MIN(created_at) FROM queue").fetchone()
        waiting = db.execute("SELECT COUNT(*) FROM queue_recipients WHERE state IN (?, ?)", OPEN_STATES).fetchone()
        return QueueStats(int(row[0]), None if row[1] is None else int(row[1]), int(waiting[0]))

    def queue_delete(self, queue_id: str) -> bool:
        with self._write() as db:
            if db.execute("SELECT 1 FROM queue WHERE id = ?", (queue_id,)).fetchone() is None:
                return False
            insert_rows(db, deleted_rows(db, queue_id, OPEN_STATES, time.time()), ())
            self._remove_entries(db, [queue_id])
        return True

    def queue_flush(self, queue_id: str | None = None) -> int:
        with self._write() as db:
            if queue_id is None:
                flushed = db.execute("UPDATE queue_recipients SET next_attempt_at = 0 WHERE state IN (?, ?)",
                                     OPEN_STATES)  # fmt: skip
            else:
                flushed = db.execute("UPDATE queue_recipients SET next_attempt_at = 0 WHERE queue_id = ?"
                                     " AND state IN (?, ?)", (queue_id, *OPEN_STATES))  # fmt: skip
            return int(flushed.rowcount)

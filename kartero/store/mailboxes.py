"""Mailboxes and messages in the SQLite store (kartero.store.interface.MailStore): what IMAP and POP3 need.

Every change bumps the mailbox's HIGHESTMODSEQ in the same transaction and stamps the changed messages
with it (RFC 7162); an expunge leaves a tombstone (uid, modseq) so that QRESYNC can report VANISHED UIDs
and other sessions can learn what disappeared. Listeners hear about every committed change.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from kartero.mail.envelope import EnvelopeRecord
from kartero.mail.trace import TraceEvent
from kartero.store import criteria as c
from kartero.store.commit import Committer
from kartero.store.holds import Hold
from kartero.store.ids import new_mailbox_objectid
from kartero.store.interface import (
    INBOX,
    Changes,
    Copied,
    Delivery,
    FlagOp,
    FlagUpdate,
    Mailbox,
    MailboxExists,
    MailboxStatus,
    MessageRow,
    MetadataChange,
    NoSuchMailbox,
    QuotaUsage,
    SelectSummary,
    StoredMessage,
    StoreError,
    apply_flag_op,
)
from kartero.store.search import Candidate, SearchFields, has_flag, matching, sorted_uids
from kartero.store.search import thread_fields as threads_of
from kartero.store.spool import FileBuffer
from kartero.store.sql import SqlConnection, SqlDatabase
from kartero.store.sqlite_db import (
    drop_unreferenced_blobs,
    format_flags,
    next_uidvalidity,
    parse_flags,
)
from kartero.store.sqlite_search import split_criterion

# SQLite limits bound parameters per statement; query large UID lists in chunks of this size.
_CHUNK = 500
_ROW_COLUMNS = "m.uid, m.flags, m.modseq, m.size, m.internal_date, m.blob_id, m.saved_at"
_INDEX_COLUMNS = ", b.imap_envelope, b.imap_body, b.imap_bodystructure, b.parts, b.preview"


class _TooManyEntries(Exception):
    """Raised inside a write transaction to undo a SETMETADATA that would pass the entry limit."""


def _row(r: Sequence[Any]) -> MessageRow:
    if len(r) > 7:
        return MessageRow(r[0], parse_flags(r[1]), r[2], r[3], r[4], r[5], envelope=r[7], body=r[8],
                          bodystructure=r[9], parts=r[10], saved_at=r[6], preview=r[11])  # fmt: skip
    return MessageRow(r[0], parse_flags(r[1]), r[2], r[3], r[4], r[5], saved_at=r[6])


def _mailbox(row: Sequence[Any]) -> Mailbox:
    return Mailbox(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8])


class SQLiteMail:
    """MailStore over the shared Database: mailboxes, messages, flags, MODSEQs, METADATA, the bodies in
    segments; deliveries go through the committer (kartero.store.commit)."""

    _MAILBOX_SELECT = (
        "SELECT m.id, m.account_id, m.name, m.special_use, m.uidvalidity, m.uidnext, m.highestmodseq,"
        " s.name IS NOT NULL, m.objectid FROM mailboxes m"
        " LEFT JOIN subscriptions s ON s.account_id = m.account_id AND s.name = m.name"
    )

    def __init__(self, database: SqlDatabase, committer: Committer) -> None:
        self._db = database.db
        self._integrity_error = database.IntegrityError
        self._write = database.write
        self._listeners = database.listeners
        self._committer = committer

    # -- deliveries and bodies -------------------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> Future[list[StoredMessage]]:
        return self._committer.deliver(delivery)

    def deliver_group(
        self, deliveries: Sequence[Delivery], trace: Sequence[TraceEvent] = ()
    ) -> Future[list[list[StoredMessage]]]:
        return self._committer.deliver_group(deliveries, trace)

    def read_message(self, blob_id: str) -> bytes:
        for attempt in (1, 2):
            row = self._db().execute("SELECT segment, offset, size FROM blobs WHERE id = ?", (blob_id,)).fetchone()
            if row is None:
                raise StoreError(f"no message {blob_id}")
            try:
                return self._committer.segments.read(*row)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                # compaction moved the body between the lookup and the read; look again
        raise AssertionError("unreachable")

    def read_envelope(self, blob_id: str) -> EnvelopeRecord:
        row = self._db().execute("SELECT envelope FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        if row is None:
            raise StoreError(f"no message {blob_id}")
        return EnvelopeRecord.from_json(row[0])

    def open_message(self, blob_id: str) -> SegmentReader:
        for attempt in (1, 2):
            row = self._db().execute("SELECT segment, offset, size FROM blobs WHERE id = ?", (blob_id,)).fetchone()
            if row is None:
                raise StoreError(f"no message {blob_id}")
            try:
                # A file of its own: compaction may unlink the segment, the open file keeps its bytes.
                fd = os.open(self._committer.segments.path(row[0]), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                continue  # compaction moved the body between the lookup and the open; look again
            return SegmentReader(fd, row[1], row[2])
        raise AssertionError("unreachable")

    def hold_expunged(self, mailbox_id: int, modseq: int) -> Hold:
        return self._committer.holds.hold(mailbox_id, modseq)

    def add_listener(self, listener: Callable[[frozenset[int]], None]) -> None:
        self._listeners.mailboxes.append(listener)

    def add_account_listener(self, listener: Callable[[int], None]) -> None:
        self._listeners.accounts.append(listener)

    def add_metadata_listener(self, listener: Callable[[MetadataChange], None]) -> None:
        self._listeners.metadata.append(listener)

    # -- mailboxes -------------------------------------------------------------------------------------

    def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        rows = self._db().execute(f"{self._MAILBOX_SELECT} WHERE m.account_id = ? ORDER BY m.id", (account_id,))
        return [_mailbox(r) for r in rows]

    def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        row = self._db().execute(f"{self._MAILBOX_SELECT} WHERE m.account_id = ? AND m.name = ?", (account_id, name))
        found = row.fetchone()
        return _mailbox(found) if found else None

    def create_mailbox(self, account_id: int, name: str, special_use: str | None = None) -> Mailbox:
        with self._write() as db:
            try:
                db.execute(
                    "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity, objectid)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (account_id, name, special_use, next_uidvalidity(db), new_mailbox_objectid()),
                )
            except self._integrity_error:
                raise MailboxExists(f"mailbox {name} exists") from None
        self._listeners.account_changed(account_id)
        mailbox = self.get_mailbox(account_id, name)
        assert mailbox is not None
        return mailbox

    def _mailbox_id(self, db: SqlConnection, account_id: int, name: str) -> int:
        row = db.execute("SELECT id FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, name)).fetchone()
        if row is None:
            raise NoSuchMailbox(f"no mailbox {name}")
        return int(row[0])

    def delete_mailbox(self, account_id: int, name: str) -> int:
        with self._write() as db:
            mailbox_id = self._mailbox_id(db, account_id, name)
            blobs = [
                r[0]
                for r in db.execute(
                    "SELECT blob_id FROM messages WHERE mailbox_id = ? UNION"
                    " SELECT blob_id FROM expunged WHERE mailbox_id = ? AND blob_id IS NOT NULL",
                    (mailbox_id, mailbox_id),
                )
            ]
            db.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))
            drop_unreferenced_blobs(db, blobs)
        self._listeners.mailboxes_changed(frozenset({mailbox_id}))
        self._listeners.account_changed(account_id)
        self._committer.compact()
        return mailbox_id

    def rename_mailbox(self, account_id: int, old: str, new: str, separator: str) -> dict[int, str]:
        if old == INBOX:
            return self._rename_inbox(account_id, new)
        with self._write() as db:
            self._mailbox_id(db, account_id, old)
            prefix = old + separator
            found = db.execute(
                "SELECT id, name FROM mailboxes WHERE account_id = ? AND (name = ? OR substr(name, 1, ?) = ?)",
                (account_id, old, len(prefix), prefix),
            ).fetchall()
            renamed = {mailbox_id: new + name[len(old) :] for mailbox_id, name in found}
            renames = [(name, new + name[len(old) :]) for _, name in found]
            for _, target in renames:
                if db.execute(
                    "SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, target)
                ).fetchone():
                    raise MailboxExists(f"mailbox {target} exists")
            for source, target in renames:
                db.execute(
                    "UPDATE mailboxes SET name = ? WHERE account_id = ? AND name = ?", (target, account_id, source)
                )
                # The subscription follows the mailbox, replacing one the new name already had.
                db.execute("DELETE FROM subscriptions WHERE account_id = ? AND name = ?"
                           " AND EXISTS (SELECT 1 FROM subscriptions WHERE account_id = ? AND name = ?)",
                           (account_id, target, account_id, source))  # fmt: skip
                db.execute(
                    "UPDATE subscriptions SET name = ? WHERE account_id = ? AND name = ?",
                    (target, account_id, source),
                )
        self._listeners.account_changed(account_id)
        return renamed

    def _rename_inbox(self, account_id: int, new: str) -> dict[int, str]:
        """RFC 9051 §6.3.6: renaming INBOX moves its messages to a new mailbox; INBOX stays, empty."""
        target = self.create_mailbox(account_id, new)
        with self._write() as db:
            inbox = self._mailbox_id(db, account_id, INBOX)
            uids = [r[0] for r in db.execute("SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", (inbox,))]
        if uids:
            self.copy_messages(inbox, uids, target.id, move=True)
        return {target.id: target.name}

    def subscriptions(self, account_id: int) -> set[str]:
        return {r[0] for r in self._db().execute("SELECT name FROM subscriptions WHERE account_id = ?", (account_id,))}

    def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        with self._write() as db:
            if subscribed:
                db.execute("INSERT INTO subscriptions (account_id, name) VALUES (?, ?) ON CONFLICT DO NOTHING",
                           (account_id, name))  # fmt: skip
            else:
                db.execute("DELETE FROM subscriptions WHERE account_id = ? AND name = ?", (account_id, name))
        self._listeners.account_changed(account_id)

    def quota_usage(
        self, account_ids: Sequence[int] | None = None, *, of_mailboxes: Sequence[int] = ()
    ) -> dict[int, QuotaUsage]:
        select = (
            "SELECT a.id, a.quota_bytes, CAST(COALESCE(SUM(m.used_bytes), 0) AS BIGINT),"
            " CAST(COALESCE(SUM(m.used_messages), 0) AS BIGINT), a.quota_warned, a.address"
            " FROM accounts a LEFT JOIN mailboxes m ON m.account_id = a.id"
        )
        group = " GROUP BY a.id, a.quota_bytes, a.quota_warned, a.address"
        db = self._db()
        if account_ids is None and not of_mailboxes:
            rows = db.execute(select + group).fetchall()
        else:
            owners = set(account_ids or ())
            boxes = sorted(set(of_mailboxes))
            for i in range(0, len(boxes), _CHUNK):
                chunk = boxes[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                found = db.execute(f"SELECT account_id FROM mailboxes WHERE id IN ({marks})", chunk)
                owners.update(int(r[0]) for r in found)
            wanted = sorted(owners)
            rows = []
            for i in range(0, len(wanted), _CHUNK):
                chunk = wanted[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows += db.execute(f"{select} WHERE a.id IN ({marks}){group}", chunk).fetchall()
        return {int(r[0]): QuotaUsage(int(r[0]), r[1], int(r[2]), int(r[3]), bool(r[4]), r[5]) for r in rows}

    def mark_quota_warned(self, account_id: int, warned: bool) -> bool:
        with self._write() as db:
            cur = db.execute("UPDATE accounts SET quota_warned = ? WHERE id = ? AND quota_warned <> ?",
                             (int(warned), account_id, int(warned)))  # fmt: skip
        return bool(cur.rowcount == 1)

    def mailbox_status(self, mailbox_id: int) -> MailboxStatus:
        db = self._db()
        db.execute("BEGIN")
        try:
            box = db.execute(
                "SELECT uidnext, uidvalidity, highestmodseq, first_recent_uid FROM mailboxes WHERE id = ?",
                (mailbox_id,),
            ).fetchone()
            if box is None:
                raise NoSuchMailbox(f"no mailbox {mailbox_id}")
            count, unseen, deleted, size, recent, deleted_size = db.execute(
                "SELECT COUNT(*), COUNT(CASE WHEN instr(' ' || lower(flags) || ' ', ' \\seen ') = 0 THEN 1 END),"
                " COUNT(CASE WHEN instr(' ' || lower(flags) || ' ', ' \\deleted ') > 0 THEN 1 END),"
                " CAST(COALESCE(SUM(size), 0) AS BIGINT), COUNT(CASE WHEN uid >= ? THEN 1 END),"
                " CAST(COALESCE(SUM(CASE WHEN instr(' ' || lower(flags) || ' ', ' \\deleted ') > 0 THEN size END), 0)"
                " AS BIGINT) FROM messages WHERE mailbox_id = ?",
                (box[3], mailbox_id),
            ).fetchone()
        finally:
            db.execute("COMMIT")
        return MailboxStatus(count, unseen, deleted, size, box[0], box[1], box[2], recent, deleted_size)

    def select_summary(self, mailbox_id: int) -> SelectSummary:
        db = self._db()
        db.execute("BEGIN")
        try:
            box = db.execute(
                "SELECT uidnext, uidvalidity, highestmodseq, first_recent_uid FROM mailboxes WHERE id = ?",
                (mailbox_id,),
            ).fetchone()
            if box is None:
                raise NoSuchMailbox(f"no mailbox {mailbox_id}")
            uids = array("I", (r[0] for r in db.execute(
                "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", (mailbox_id,))))  # fmt: skip
            keywords = {
                flag
                for (flags,) in db.execute(
                    "SELECT DISTINCT flags FROM messages WHERE mailbox_id = ? AND flags != ''", (mailbox_id,)
                )
                for flag in flags.split()
                if not flag.startswith("\\")
            }
            unseen = db.execute(
                "SELECT MIN(uid) FROM messages"
                " WHERE mailbox_id = ? AND instr(' ' || lower(flags) || ' ', ' \\seen ') = 0",
                (mailbox_id,),
            ).fetchone()[0]
        finally:
            db.execute("COMMIT")
        first_unseen = bisect.bisect_left(uids, unseen) + 1 if unseen is not None else None
        return SelectSummary(uids, frozenset(keywords), first_unseen, box[0], box[1], box[2], box[3])

    def claim_recent(self, mailbox_id: int, uid_end: int) -> int:
        with self._write(durable=False) as db:  # \Recent may be lost with the machine, never mail
            row = db.execute("SELECT first_recent_uid FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
            if row is None:
                raise NoSuchMailbox(f"no mailbox {mailbox_id}")
            if row[0] < uid_end:
                db.execute("UPDATE mailboxes SET first_recent_uid = ? WHERE id = ?", (uid_end, mailbox_id))
        return int(row[0])

    # -- messages --------------------------------------------------------------------------------------

    def message_rows(
        self, mailbox_id: int, uids: Sequence[int] | None = None, *, with_index: bool = False,
        expunged: bool = False,
    ) -> list[MessageRow]:  # fmt: skip
        db = self._db()
        if not expunged or uids is None:
            return self._rows(db, mailbox_id, uids, with_index=with_index)
        db.execute("BEGIN")  # one snapshot: a message is either still there or a tombstone
        try:
            rows = self._rows(db, mailbox_id, uids, with_index=with_index)
            if len(rows) < len(set(uids)):
                found = {row.uid for row in rows}
                rows += self._held_rows(db, mailbox_id, [u for u in uids if u not in found], with_index=with_index)
                rows.sort(key=lambda row: row.uid)
        finally:
            db.execute("COMMIT")
        return rows

    def _held_rows(
        self, db: SqlConnection, mailbox_id: int, uids: Sequence[int], *, with_index: bool
    ) -> list[MessageRow]:
        """Expunged messages of `uids` whose bodies a hold keeps, as they were when expunged."""
        columns = "e.uid, e.flags, e.message_modseq, e.size, e.internal_date, e.blob_id, e.saved_at"
        columns += _INDEX_COLUMNS if with_index else ""
        join = " JOIN blobs b ON b.id = e.blob_id" if with_index else ""
        result: list[MessageRow] = []
        wanted = sorted(set(uids))
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT {columns} FROM expunged e{join} WHERE e.mailbox_id = ? AND e.blob_id IS NOT NULL"
                f" AND e.uid IN ({marks})",
                (mailbox_id, *chunk),
            )
            result.extend(_row(r) for r in rows)
        return result

    def _rows(
        self, db: SqlConnection, mailbox_id: int, uids: Sequence[int] | None, *, with_index: bool = False
    ) -> list[MessageRow]:
        columns = _ROW_COLUMNS + (_INDEX_COLUMNS if with_index else "")
        join = " JOIN blobs b ON b.id = m.blob_id" if with_index else ""
        base = f"SELECT {columns} FROM messages m{join} WHERE m.mailbox_id = ?"
        if uids is None:
            return [_row(r) for r in db.execute(base + " ORDER BY m.uid", (mailbox_id,))]
        wanted = sorted(set(uids))
        if wanted and wanted[-1] - wanted[0] + 1 == len(wanted):  # one contiguous range: no IN list
            rows = db.execute(base + " AND m.uid BETWEEN ? AND ? ORDER BY m.uid", (mailbox_id, wanted[0], wanted[-1]))
            return [_row(r) for r in rows]
        result: list[MessageRow] = []
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(base + f" AND m.uid IN ({marks}) ORDER BY m.uid", (mailbox_id, *chunk))
            result.extend(_row(r) for r in rows)
        return result

    def keep_previews(self, previews: Mapping[str, str]) -> None:
        with self._write() as db:
            db.executemany("UPDATE blobs SET preview = ? WHERE id = ?", [(p, b) for b, p in previews.items()])

    def sieve_recalls(self, account_id: int, key: str, now: int) -> bool:
        row = self._db().execute(
            "SELECT 1 FROM sieve_memory WHERE account_id = ? AND key = ? AND expires_at > ?", (account_id, key, now)
        ).fetchone()
        return row is not None

    def sieve_remember(self, account_id: int, key: str, expires_at: int, now: int, *, only_if_new: bool) -> bool:
        with self._write() as db:
            db.execute("DELETE FROM sieve_memory WHERE account_id = ? AND expires_at <= ?", (account_id, now))
            if only_if_new and db.execute(
                "SELECT 1 FROM sieve_memory WHERE account_id = ? AND key = ?", (account_id, key)
            ).fetchone():
                return False
            if not db.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone():
                return False  # deleted meanwhile
            db.execute(
                "INSERT INTO sieve_memory (account_id, key, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (account_id, key) DO UPDATE SET expires_at = excluded.expires_at",
                (account_id, key, expires_at),
            )
        return True

    def metadata(self, account_id: int, mailbox_id: int | None) -> dict[str, bytes]:
        rows = self._db().execute(
            "SELECT name, value FROM metadata WHERE account_id = ? AND COALESCE(mailbox_id, 0) = ? ORDER BY name",
            (account_id, mailbox_id or 0),
        )
        return {name: bytes(value) for name, value in rows}

    def set_metadata(
        self, account_id: int, mailbox_id: int | None, changes: Sequence[tuple[str, bytes | None]], max_entries: int,
        origin: object = None,
    ) -> bool:
        key = (account_id, mailbox_id or 0)
        where = "account_id = ? AND COALESCE(mailbox_id, 0) = ?"
        try:
            with self._write() as db:
                if mailbox_id is not None and not db.execute(
                    "SELECT 1 FROM mailboxes WHERE id = ?", (mailbox_id,)
                ).fetchone():
                    raise NoSuchMailbox(f"mailbox {mailbox_id} is gone")
                for name, value in changes:
                    db.execute(f"DELETE FROM metadata WHERE {where} AND name = ?", (*key, name))
                    if value is not None:
                        db.execute("INSERT INTO metadata (account_id, mailbox_id, name, value) VALUES (?, ?, ?, ?)",
                                   (account_id, mailbox_id, name, value))  # fmt: skip
                (count,) = db.execute(f"SELECT COUNT(*) FROM metadata WHERE {where}", key).fetchone()
                if count > max_entries:
                    raise _TooManyEntries  # rolls the whole command back
        except _TooManyEntries:
            return False
        names = tuple(dict.fromkeys(name for name, _ in changes))
        self._listeners.metadata_changed(MetadataChange(account_id, mailbox_id, names, origin))
        return True

    def changes_since(self, mailbox_id: int, modseq: int) -> Changes:
        db = self._db()
        db.execute("BEGIN")
        try:
            highest = db.execute(
                "SELECT highestmodseq, first_recent_uid FROM mailboxes WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if highest is None:
                raise NoSuchMailbox(f"no mailbox {mailbox_id}")
            changed = [
                _row(r)
                for r in db.execute(
                    f"SELECT {_ROW_COLUMNS} FROM messages m WHERE m.mailbox_id = ? AND m.modseq > ? ORDER BY m.uid",
                    (mailbox_id, modseq),
                )
            ]
            vanished = [
                r[0]
                for r in db.execute(
                    "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY uid", (mailbox_id, modseq)
                )
            ]
        finally:
            db.execute("COMMIT")
        return Changes(tuple(changed), tuple(vanished), highest[0], highest[1])

    def vanished_since(self, mailbox_id: int, modseq: int, uids: Sequence[int] | None = None) -> list[int]:
        rows = self._db().execute(
            "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY uid", (mailbox_id, modseq)
        )
        found = [r[0] for r in rows]
        if uids is None:
            return found
        wanted = set(uids)
        return [u for u in found if u in wanted]

    @staticmethod
    def _bump(db: SqlConnection, mailbox_id: int) -> int:
        row = db.execute(
            "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ? RETURNING highestmodseq",
            (mailbox_id,),
        ).fetchone()
        if row is None:
            raise NoSuchMailbox(f"no mailbox {mailbox_id}")
        return int(row[0])

    def update_flags(
        self, mailbox_id: int, uids: Sequence[int], op: FlagOp, flags: frozenset[str], unchanged_since: int | None
    ) -> FlagUpdate:
        changed: list[MessageRow] = []
        refused: list[int] = []
        before: dict[int, int] = {}
        # Not fsynced at commit (see sqlite_db.Transaction): a flag change lost with the machine loses no mail.
        with self._write(durable=False) as db:
            rows = self._rows(db, mailbox_id, uids)
            found = {row.uid for row in rows}
            updates: list[tuple[MessageRow, frozenset[str]]] = []
            for row in rows:
                if unchanged_since is not None and row.modseq > unchanged_since:
                    refused.append(row.uid)
                    continue
                new_flags = apply_flag_op(row.flags, op, flags)
                if new_flags != row.flags:
                    updates.append((row, new_flags))
            if updates:
                modseq = self._bump(db, mailbox_id)
                db.executemany(
                    "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
                    [(format_flags(f), modseq, mailbox_id, row.uid) for row, f in updates],
                )
                changed = [dataclasses.replace(row, flags=f, modseq=modseq) for row, f in updates]
                before = {row.uid: row.modseq for row, _ in updates}
        if changed:
            self._listeners.mailboxes_changed(frozenset({mailbox_id}))
        return FlagUpdate(tuple(changed), tuple(refused), before, tuple(sorted(set(uids) - found)))

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        # Not fsynced at commit: lost with the machine, the expunge is undone, which loses no mail.
        with self._write(durable=False) as db:
            rows = self._rows(db, mailbox_id, uids)
            gone = [row for row in rows if has_flag(row.flags, "\\Deleted")]
            if not gone:
                return []
            self._remove(db, mailbox_id, gone)
        self._listeners.mailboxes_changed(frozenset({mailbox_id}))
        self._committer.request_release(mailbox_id)
        return [row.uid for row in gone]

    def _remove(self, db: SqlConnection, mailbox_id: int, rows: list[MessageRow]) -> None:
        """Expunge `rows`. Each tombstone keeps the message (body, size, date, flags, MODSEQ) for sessions
        that have not seen the expunge yet (RFC 2180 §4.1.1); `_request_release` after the commit lets
        the bodies go as soon as no hold needs them."""
        modseq = self._bump(db, mailbox_id)
        db.executemany("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", [(mailbox_id, r.uid) for r in rows])
        db.execute("UPDATE mailboxes SET used_bytes = used_bytes - ?, used_messages = used_messages - ? WHERE id = ?",
                   (sum(r.size for r in rows), len(rows), mailbox_id))  # fmt: skip
        db.executemany(
            "INSERT INTO expunged (mailbox_id, uid, modseq, blob_id, size, internal_date, flags, message_modseq,"
            " saved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (mailbox_id, uid) DO UPDATE SET"
            " modseq = excluded.modseq, blob_id = excluded.blob_id, size = excluded.size,"
            " internal_date = excluded.internal_date, flags = excluded.flags,"
            " message_modseq = excluded.message_modseq, saved_at = excluded.saved_at",
            [(mailbox_id, r.uid, modseq, r.blob_id, r.size, r.internal_date, format_flags(r.flags), r.modseq,
              r.saved_at) for r in rows],
        )  # fmt: skip
        self._committer.holds.expunged(mailbox_id)

    def copy_messages(
        self, source_id: int, uids: Sequence[int], target_id: int, *, move: bool, all_or_none: bool = False
    ) -> Copied:
        pairs: list[tuple[int, int]] = []
        with self._write() as db:
            rows = self._rows(db, source_id, uids)
            if not rows or (all_or_none and len(rows) < len(set(uids))):
                return Copied((), 0)
            first = db.execute(
                "UPDATE mailboxes SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1,"
                " used_bytes = used_bytes + ?, used_messages = used_messages + ? WHERE id = ?"
                " RETURNING uidnext - ?, highestmodseq",
                (len(rows), sum(row.size for row in rows), len(rows), target_id, len(rows)),
            ).fetchone()
            if first is None:
                raise NoSuchMailbox(f"no mailbox {target_id}")
            next_uid, modseq = first
            saved_at = int(time.time())  # RFC 8514: a copy's (and a moved message's) save date is now
            inserts = []
            for offset, row in enumerate(rows):
                new_uid = next_uid + offset
                pairs.append((row.uid, new_uid))
                inserts.append((target_id, new_uid, row.blob_id, row.size, row.internal_date, format_flags(row.flags),
                                modseq, saved_at))  # fmt: skip
            db.executemany(
                "INSERT INTO messages (mailbox_id, uid, blob_id, size, internal_date, flags, modseq, saved_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                inserts,
            )
            if move:
                self._remove(db, source_id, rows)
        self._listeners.mailboxes_changed(frozenset({source_id, target_id}))
        if move:
            self._committer.request_release(source_id)
        return Copied(tuple(pairs), modseq)

    # -- search and sort (SQL prefilter here, the rest in kartero.store.search) ----------------------------

    def search(self, mailbox_id: int, criterion: c.Criterion) -> list[MessageRow]:
        where, params, rest = split_criterion(criterion)
        if rest is None:  # everything evaluated by SQLite: no per-message Python
            rows = self._db().execute(
                f"SELECT {_ROW_COLUMNS} FROM messages m JOIN blobs b ON b.id = m.blob_id"
                f" WHERE m.mailbox_id = ? AND ({where}) ORDER BY m.uid",
                (mailbox_id, *params),
            )
            return [_row(r) for r in rows]
        return [candidate.row for candidate in matching(self._candidates(mailbox_id, where, params), rest)]

    def sort(self, mailbox_id: int, keys: Sequence[c.Sort], criterion: c.Criterion) -> list[int]:
        where, params, rest = split_criterion(criterion)
        return sorted_uids(self._candidates(mailbox_id, where, params), keys, rest)

    def thread_fields(self, mailbox_id: int, criterion: c.Criterion) -> list[c.ThreadFields]:
        where, params, rest = split_criterion(criterion)
        return threads_of(self._candidates(mailbox_id, where, params), rest)

    def _candidates(self, mailbox_id: int, where: str = "1", params: Sequence[Any] = ()) -> list[Candidate]:
        """The messages the SQL prefilter selects, in UID order, with the index fields Python reads."""
        rows = self._db().execute(
            f"SELECT {_ROW_COLUMNS}, b.sent_date, b.sent_day, b.subject, b.from_text, b.to_text, b.cc_text,"
            " b.bcc_text, b.sort_subject, b.sort_from, b.sort_to, b.sort_cc, b.parts"
            f" FROM messages m JOIN blobs b ON b.id = m.blob_id WHERE m.mailbox_id = ? AND ({where}) ORDER BY m.uid",
            (mailbox_id, *params),
        )
        opener = self.open_message
        return [Candidate(_row(r[:7]), SearchFields(*r[7:]), opener) for r in rows]


class SegmentReader:
    """One message in a segment, through a file descriptor of its own (see Store.open_message)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd = fd
        self._offset = offset
        self.size = size

    def read(self, start: int, length: int) -> bytes:
        start = max(0, min(start, self.size))
        length = max(0, min(length, self.size - start))
        data = os.pread(self._fd, length, self._offset + start)
        while len(data) < length:
            more = os.pread(self._fd, length - len(data), self._offset + start + len(data))
            if not more:
                raise OSError(f"segment ends inside a message at {self._offset + start + len(data)}")
            data += more
        return data

    def view(self) -> FileBuffer:
        """The message as a MessageData for the MIME code: read in bounded windows, never whole."""
        return FileBuffer(self._fd, self._offset, self.size)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

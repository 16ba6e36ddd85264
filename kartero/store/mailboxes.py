"""Mailbox and message operations of the SQLite store (mixed into SQLiteStore): what IMAP and POP3 need.

Every change bumps the mailbox's HIGHESTMODSEQ in the same transaction and stamps the changed messages
with it (RFC 7162); an expunge leaves a tombstone (uid, modseq) so that QRESYNC can report VANISHED UIDs
and other sessions can learn what disappeared. Listeners hear about every committed change.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import json
import sqlite3
import time
import unicodedata
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from kartero.mime.addresses import parse_address_list
from kartero.mime.headers import MessageData, decode_words, find_body_start, iter_body_text, parse_header_block
from kartero.mime.imapform import MAX_LIST_ADDRESSES
from kartero.mime.structure import parse_content_type
from kartero.store import criteria as c
from kartero.store.ids import new_mailbox_objectid
from kartero.store.interface import (
    INBOX,
    Changes,
    Copied,
    FlagOp,
    FlagUpdate,
    Mailbox,
    MailboxExists,
    MailboxStatus,
    MessageInfo,
    MessageRow,
    MetadataChange,
    NoSuchMailbox,
    SelectSummary,
    apply_flag_op,
)

# SQLite limits bound parameters per statement; query large UID lists in chunks of this size.
_CHUNK = 500
_ROW_COLUMNS = "m.uid, m.flags, m.modseq, m.size, m.internal_date, m.blob_id, m.saved_at"
_INDEX_COLUMNS = ", b.imap_envelope, b.imap_body, b.imap_bodystructure, b.parts, b.preview"


class _TooManyEntries(Exception):
    """Raised inside a write transaction to undo a SETMETADATA that would pass the entry limit."""


def format_flags(flags: Iterable[str]) -> str:
    return " ".join(sorted(set(flags), key=str.lower))


def parse_flags(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _has_flag(flags: frozenset[str], name: str) -> bool:
    lowered = name.lower()
    return any(f.lower() == lowered for f in flags)


def _row(r: Sequence[Any]) -> MessageRow:
    if len(r) > 7:
        return MessageRow(r[0], parse_flags(r[1]), r[2], r[3], r[4], r[5], envelope=r[7], body=r[8],
                          bodystructure=r[9], parts=r[10], saved_at=r[6], preview=r[11])  # fmt: skip
    return MessageRow(r[0], parse_flags(r[1]), r[2], r[3], r[4], r[5], saved_at=r[6])


def _mailbox(row: Sequence[Any]) -> Mailbox:
    return Mailbox(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8])


# Of a message's header block, SEARCH reads at most this much (a header with no end is the whole message).
SEARCH_HEADER_BYTES = 1 << 20


class _Opened(Protocol):
    def view(self) -> MessageData: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class _SearchRow:
    """One candidate of a search, with lazy access to its bytes (read in bounded windows, never whole)
    and to what is made from them, each made at most once however many keys ask (a search may hold up to
    a thousand keys). `release()` lets the bytes go once the candidate is decided."""

    row: MessageRow
    sent_date: int | None
    sent_day: int | None
    decoded: dict[str, str]
    parts: str
    opener: Callable[[str], _Opened]
    body_needles: frozenset[str] = frozenset()  # every BODY/TEXT string of the search, case-folded
    _opened: _Opened | None = None
    _data: MessageData | None = None
    _fields: list[tuple[str, str]] | None = None
    _header_text: str | None = None
    _body_found: frozenset[str] | None = None

    @property
    def data(self) -> MessageData:
        if self._data is None:
            self._opened = self.opener(self.row.blob_id)
            self._data = self._opened.view()
        return self._data

    def release(self) -> None:
        if self._opened is not None:
            self._opened.close()
        self._opened = self._data = None
        self._fields = self._header_text = self._body_found = None

    @property
    def fields(self) -> list[tuple[str, str]]:
        """The header fields: lower-case name, case-folded decoded value."""
        if self._fields is None:
            block = parse_header_block(_header_block(self))
            self._fields = [(k, decode_words(v).casefold()) for k, v in block.fields]
        return self._fields

    @property
    def header_text(self) -> str:
        """The decoded header block, case-folded."""
        if self._header_text is None:
            self._header_text = decode_words(_header_block(self)).casefold()
        return self._header_text

    def body_contains(self, needle: str) -> bool:
        """Whether the decoded text parts hold `needle` (case-folded, one of body_needles). The text is
        never held whole: one pass over it, in pieces, finds every needle of the search at once."""
        if needle not in self.body_needles:  # a caller that did not say in advance: one more pass
            self.body_needles |= {needle}
            self._body_found = None
        if self._body_found is None:
            self._body_found = _find_in_body(self, self.body_needles)
        return needle in self._body_found


class MailboxOps:
    """Needs `_db`, `_write`, `_notify`, `_next_uidvalidity`, `compact` and `read_message` from its host."""

    _MAILBOX_SELECT = (
        "SELECT m.id, m.account_id, m.name, m.special_use, m.uidvalidity, m.uidnext, m.highestmodseq,"
        " s.name IS NOT NULL, m.objectid FROM mailboxes m"
        " LEFT JOIN subscriptions s ON s.account_id = m.account_id AND s.name = m.name"
    )

    def _db(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _write(self, *, durable: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _notify(self, mailbox_ids: frozenset[int]) -> None:
        raise NotImplementedError

    @staticmethod
    def _next_uidvalidity(db: sqlite3.Connection) -> int:
        raise NotImplementedError

    def compact(self) -> None:
        raise NotImplementedError

    def read_message(self, blob_id: str) -> bytes:
        raise NotImplementedError

    def open_message(self, blob_id: str) -> _Opened:
        raise NotImplementedError

    def _drop_unreferenced_blobs(self, db: sqlite3.Connection, blob_ids: list[str]) -> None:
        raise NotImplementedError

    def _request_release(self, mailbox_id: int) -> None:
        raise NotImplementedError

    def _notify_account(self, account_id: int) -> None:
        raise NotImplementedError

    def _notify_metadata(self, change: MetadataChange) -> None:
        raise NotImplementedError

    def _tombstones_written(self, mailbox_id: int) -> None:
        raise NotImplementedError

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
                    (account_id, name, special_use, self._next_uidvalidity(db), new_mailbox_objectid()),
                )
            except sqlite3.IntegrityError:
                raise MailboxExists(f"mailbox {name} exists") from None
        self._notify_account(account_id)
        mailbox = self.get_mailbox(account_id, name)
        assert mailbox is not None
        return mailbox

    def _mailbox_id(self, db: sqlite3.Connection, account_id: int, name: str) -> int:
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
            self._drop_unreferenced_blobs(db, blobs)
        self._notify(frozenset({mailbox_id}))
        self._notify_account(account_id)
        self.compact()
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
                db.execute(
                    "UPDATE OR REPLACE subscriptions SET name = ? WHERE account_id = ? AND name = ?",
                    (target, account_id, source),
                )
        self._notify_account(account_id)
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
                db.execute("INSERT OR IGNORE INTO subscriptions (account_id, name) VALUES (?, ?)", (account_id, name))
            else:
                db.execute("DELETE FROM subscriptions WHERE account_id = ? AND name = ?", (account_id, name))
        self._notify_account(account_id)

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
            count, unseen, deleted, size, recent = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(instr(' ' || lower(flags) || ' ', ' \\seen ') = 0), 0),"
                " COALESCE(SUM(instr(' ' || lower(flags) || ' ', ' \\deleted ') > 0), 0), COALESCE(SUM(size), 0),"
                " COALESCE(SUM(uid >= ?), 0) FROM messages WHERE mailbox_id = ?",
                (box[3], mailbox_id),
            ).fetchone()
        finally:
            db.execute("COMMIT")
        return MailboxStatus(count, unseen, deleted, size, box[0], box[1], box[2], recent)

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

    def list_messages(self, mailbox_id: int) -> list[MessageInfo]:
        rows = self._db().execute(
            "SELECT mailbox_id, uid, blob_id, size, internal_date, flags, modseq FROM messages"
            " WHERE mailbox_id = ? ORDER BY uid",
            (mailbox_id,),
        )
        return [MessageInfo(r[0], r[1], r[2], r[3], r[4], parse_flags(r[5]), r[6]) for r in rows]

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
        self, db: sqlite3.Connection, mailbox_id: int, uids: Sequence[int], *, with_index: bool
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
        self, db: sqlite3.Connection, mailbox_id: int, uids: Sequence[int] | None, *, with_index: bool = False
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

    def metadata(self, account_id: int, mailbox_id: int | None) -> dict[str, bytes]:
        rows = self._db().execute(
            "SELECT name, value FROM metadata WHERE account_id = ? AND IFNULL(mailbox_id, 0) = ? ORDER BY name",
            (account_id, mailbox_id or 0),
        )
        return {name: bytes(value) for name, value in rows}

    def set_metadata(
        self, account_id: int, mailbox_id: int | None, changes: Sequence[tuple[str, bytes | None]], max_entries: int,
        origin: object = None,
    ) -> bool:
        key = (account_id, mailbox_id or 0)
        where = "account_id = ? AND IFNULL(mailbox_id, 0) = ?"
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
        self._notify_metadata(MetadataChange(account_id, mailbox_id, names, origin))
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
    def _bump(db: sqlite3.Connection, mailbox_id: int) -> int:
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
        # Not fsynced at commit (see sqlite._Transaction): a flag change lost with the machine loses no mail.
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
            self._notify(frozenset({mailbox_id}))
        return FlagUpdate(tuple(changed), tuple(refused), before, tuple(sorted(set(uids) - found)))

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        # Not fsynced at commit: lost with the machine, the expunge is undone, which loses no mail.
        with self._write(durable=False) as db:
            rows = self._rows(db, mailbox_id, uids)
            gone = [row for row in rows if _has_flag(row.flags, "\\Deleted")]
            if not gone:
                return []
            self._remove(db, mailbox_id, gone)
        self._notify(frozenset({mailbox_id}))
        self._request_release(mailbox_id)
        return [row.uid for row in gone]

    def _remove(self, db: sqlite3.Connection, mailbox_id: int, rows: list[MessageRow]) -> None:
        """Expunge `rows`. Each tombstone keeps the message (body, size, date, flags, MODSEQ) for sessions
        that have not seen the expunge yet (RFC 2180 §4.1.1); `_request_release` after the commit lets
        the bodies go as soon as no hold needs them."""
        modseq = self._bump(db, mailbox_id)
        db.executemany("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", [(mailbox_id, r.uid) for r in rows])
        db.executemany(
            "INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq, blob_id, size, internal_date, flags,"
            " message_modseq, saved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(mailbox_id, r.uid, modseq, r.blob_id, r.size, r.internal_date, format_flags(r.flags), r.modseq,
              r.saved_at) for r in rows],
        )  # fmt: skip
        self._tombstones_written(mailbox_id)

    def copy_messages(
        self, source_id: int, uids: Sequence[int], target_id: int, *, move: bool, all_or_none: bool = False
    ) -> Copied:
        pairs: list[tuple[int, int]] = []
        with self._write() as db:
            rows = self._rows(db, source_id, uids)
            if not rows or (all_or_none and len(rows) < len(set(uids))):
                return Copied((), 0)
            first = db.execute(
                "UPDATE mailboxes SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1 WHERE id = ?"
                " RETURNING uidnext - ?, highestmodseq",
                (len(rows), target_id, len(rows)),
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
        self._notify(frozenset({source_id, target_id}))
        if move:
            self._request_release(source_id)
        return Copied(tuple(pairs), modseq)

    # -- search and sort -------------------------------------------------------------------------------

    def search(self, mailbox_id: int, criterion: c.Criterion) -> list[MessageRow]:
        where, params, rest = _split_criterion(criterion)
        if rest is None:  # everything evaluated by SQLite: no per-message Python
            rows = self._db().execute(
                f"SELECT {_ROW_COLUMNS} FROM messages m JOIN blobs b ON b.id = m.blob_id"
                f" WHERE m.mailbox_id = ? AND ({where}) ORDER BY m.uid",
                (mailbox_id, *params),
            )
            return [_row(r) for r in rows]
        return [cand.row for cand in self._matching(mailbox_id, where, params, rest)]

    def sort(self, mailbox_id: int, keys: Sequence[c.Sort], criterion: c.Criterion) -> list[int]:
        where, params, rest = _split_criterion(criterion)
        display = [field for key, field in _DISPLAY_FIELDS.items() if any(k.key is key for k in keys)]
        matching: list[_SearchRow] = []
        for candidate in self._matching(mailbox_id, where, params, rest):
            if display:  # read from the header while the candidate's bytes are open
                header = parse_header_block(_header_block(candidate))
                for field in display:
                    candidate.decoded[f"display_{field}"] = _display_name(header.get(field))
            matching.append(candidate)
        for key in reversed(keys):  # stable sorts, last key first
            matching.sort(key=_sort_key(key.key), reverse=key.reverse)
        return [cand.row.uid for cand in matching]

    def thread_fields(self, mailbox_id: int, criterion: c.Criterion) -> list[c.ThreadFields]:
        where, params, rest = _split_criterion(criterion)
        found: list[c.ThreadFields] = []
        for candidate in self._matching(mailbox_id, where, params, rest):
            header = parse_header_block(_header_block(candidate))
            message_id, in_reply_to, references = ((header.get(n) or b"").decode("latin-1") for n in _THREAD_FIELDS)
            row, decoded = candidate.row, candidate.decoded
            sent_date = row.internal_date if candidate.sent_date is None else candidate.sent_date
            found.append(c.ThreadFields(row.uid, sent_date, decoded["subject"], decoded["sort_subject"], message_id,
                                        in_reply_to, references))  # fmt: skip
        return found

    def _matching(
        self, mailbox_id: int, where: str, params: Sequence[Any], rest: c.Criterion | None
    ) -> Iterator[_SearchRow]:
        """The candidates that meet `rest` too; each lets its bytes go once decided, so a search holds
        one message's worth of windows at a time, not the mailbox."""
        needles = _body_needles(rest) if rest is not None else frozenset()
        for candidate in self._candidates(mailbox_id, where, params):
            candidate.body_needles = needles
            try:
                if rest is None or _matches(rest, candidate):
                    yield candidate
            finally:
                candidate.release()

    def _candidates(self, mailbox_id: int, where: str = "1", params: Sequence[Any] = ()) -> list[_SearchRow]:
        rows = self._db().execute(
            f"SELECT {_ROW_COLUMNS}, b.sent_date, b.subject, b.from_text, b.to_text, b.cc_text, b.bcc_text, b.parts,"
            " b.sort_subject, b.sort_from, b.sort_to, b.sort_cc, b.sent_day"
            f" FROM messages m JOIN blobs b ON b.id = m.blob_id WHERE m.mailbox_id = ? AND ({where}) ORDER BY m.uid",
            (mailbox_id, *params),
        )
        opener = self.open_message
        return [
            _SearchRow(
                _row(r[:7]),
                r[7],
                r[18],
                {
                    "subject": r[8],
                    "from": r[9],
                    "to": r[10],
                    "cc": r[11],
                    "bcc": r[12],
                    "sort_subject": r[14],
                    "sort_from": r[15],
                    "sort_to": r[16],
                    "sort_cc": r[17],
                },
                r[13],
                opener,
            )
            for r in rows
        ]


_HEADER_COLUMNS = {"subject": "b.subject", "from": "b.from_text", "to": "b.to_text", "cc": "b.cc_text",
                   "bcc": "b.bcc_text"}  # fmt: skip
_MAX_SQL_RANGES = 200
# SQLite refuses a statement past any of: expressions 1000 deep (SQLITE_MAX_EXPR_DEPTH), a parser stack of
# 100 entries (YYSTACKDEPTH: 25 to 45 nested parentheses, depending on the operators), 999 parameters
# (SQLITE_MAX_VARIABLE_NUMBER before 3.32). SQL made from criteria stays well inside these budgets; a part
# that would not is checked in Python instead.
_MAX_SQL_NESTING = 10
_MAX_SQL_DEPTH = 400
_MAX_SQL_PARAMS = 900
_SQL_GROUP = 32  # terms joined flat by one AND/OR, before the next level of parentheses


@dataclass(frozen=True, slots=True)
class _Sql:
    """A boolean SQL expression with its parameters, and how deep it is: `nesting` counts parentheses,
    `depth` the levels of SQLite's expression tree."""

    text: str
    params: tuple[Any, ...]
    nesting: int = 2  # leaves hold at most two levels of function-call parentheses
    depth: int = 6

    def fits(self) -> bool:
        return (
            self.nesting <= _MAX_SQL_NESTING and self.depth <= _MAX_SQL_DEPTH and len(self.params) <= _MAX_SQL_PARAMS
        )


def _sql_join(op: str, parts: Sequence[_Sql]) -> _Sql:
    """`parts` joined by AND or OR in groups of _SQL_GROUP: SQLite nests a flat `a AND b AND c ...` one level
    per term, and each group adds one level of parentheses, so n terms cost log32(n) parentheses."""
    layer = list(parts)
    while len(layer) > 1:
        groups = [layer[i : i + _SQL_GROUP] for i in range(0, len(layer), _SQL_GROUP)]
        layer = [
            _Sql(
                f" {op} ".join(f"({p.text})" for p in group),
                tuple(v for p in group for v in p.params),
                max(p.nesting for p in group) + 1,
                max(p.depth for p in group) + len(group),
            )
            for group in groups
        ]
    return layer[0]


def _operands(criterion: c.Or | c.And) -> list[c.Criterion]:
    """The operands of a chain of ORs (or of ANDs), flattened: `(a OR b) OR c` is `a OR b OR c`."""
    kind = type(criterion)
    found: list[c.Criterion] = []
    pending: list[c.Criterion] = [criterion]
    while pending:
        node = pending.pop()
        if isinstance(node, c.Or) and kind is c.Or:
            pending += (node.right, node.left)
        elif isinstance(node, c.And) and kind is c.And:
            pending += reversed(node.criteria)
        else:
            found.append(node)
    return found


def _day_start(date: datetime.date) -> int:
    return int(datetime.datetime(date.year, date.month, date.day, tzinfo=datetime.UTC).timestamp())


# SENT* compare the day written in Date: (sent_day, 00:00 UTC of it); rows stored before that column existed
# fall back to the UTC day of the Date header's instant, messages without a usable Date to the internal date.
_SENT_DAY = "COALESCE(b.sent_day, b.sent_date, m.internal_date)"


def _date_sql(column: str, op: c.DateOp, date: datetime.date) -> _Sql:
    start = _day_start(date)
    if op is c.DateOp.BEFORE:
        return _Sql(f"{column} < ?", (start,))
    if op is c.DateOp.ON:
        return _Sql(f"({column} >= ? AND {column} < ?)", (start, start + 86400), 3)
    return _Sql(f"{column} >= ?", (start,))


def _to_sql(criterion: c.Criterion) -> _Sql | None:
    """SQL for criteria SQLite can decide from the stored columns, within the budgets above; None for the
    rest (bodies, other header fields, what is too big), which is checked in Python. The decoded header
    columns are stored case-folded. Recursion is bounded by c.MAX_DEPTH."""
    match criterion:
        case c.All():
            return _Sql("1", ())
        case c.Flag(name=name, present=present):
            return _Sql(f"instr(' ' || lower(m.flags) || ' ', ?) {'>' if present else '='} 0", (f" {name.lower()} ",))
        case c.Header(field=field, text=text) if field in _HEADER_COLUMNS and text:
            return _Sql(f"instr({_HEADER_COLUMNS[field]}, ?) > 0", (text.casefold(),))
        case c.Size(larger_than=larger, smaller_than=smaller):
            parts: list[str] = []
            params: list[int] = []
            if larger is not None:
                parts.append("m.size > ?")
                params.append(larger)
            if smaller is not None:
                parts.append("m.size < ?")
                params.append(smaller)
            return _Sql(" AND ".join(parts) or "1", tuple(params))
        case c.InternalDate(op=op, date=date):
            return _date_sql("m.internal_date", op, date)
        case c.SentDate(op=op, date=date):
            return _date_sql(_SENT_DAY, op, date)
        case c.SavedDate(op=op, date=date):
            return _date_sql("COALESCE(m.saved_at, m.internal_date)", op, date)
        case c.Blob(blob_id=blob_id):
            return _Sql("m.blob_id = ?", (blob_id,))
        case c.Uids(ranges=ranges) if len(ranges) <= _MAX_SQL_RANGES:
            if not ranges:
                return _Sql("0", ())
            return _sql_join("OR", [_Sql("m.uid BETWEEN ? AND ?", r) for r in ranges])
        case c.ModSeq(at_least=at_least):
            return _Sql("m.modseq >= ?", (at_least,))
        case c.Not(criterion=inner):
            sql = _to_sql(inner)
            if sql is None:
                return None
            negated = _Sql(f"NOT ({sql.text})", sql.params, sql.nesting + 1, sql.depth + 1)
            return negated if negated.fits() else None
        case c.Or() | c.And():
            operands = []
            for operand in _operands(criterion):
                sql = _to_sql(operand)
                if sql is None:
                    return None
                operands.append(sql)
            if not operands:
                return _Sql("1", ())
            joined = _sql_join("OR" if isinstance(criterion, c.Or) else "AND", operands)
            return joined if joined.fits() else None
    return None


def _split_criterion(criterion: c.Criterion) -> tuple[str, list[Any], c.Criterion | None]:
    """(SQL WHERE, its parameters, what is left for Python or None): the top-level conjuncts that fit in
    SQL go there, up to the parameter budget; the others are checked in Python on what SQL selected."""
    items = _operands(criterion) if isinstance(criterion, c.And) else [criterion]
    where: list[_Sql] = []
    rest: list[c.Criterion] = []
    param_count = 0
    for item in items:
        sql = _to_sql(item)
        if sql is None or param_count + len(sql.params) > _MAX_SQL_PARAMS:
            rest.append(item)
        else:
            where.append(sql)
            param_count += len(sql.params)
    joined = _sql_join("AND", where) if where else _Sql("1", ())
    left = None if not rest else rest[0] if len(rest) == 1 else c.And(tuple(rest))
    return joined.text, list(joined.params), left


# -- criteria evaluation -------------------------------------------------------------------------------


def _utc_date(seconds: int) -> datetime.date:
    try:
        return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date()
    except (OverflowError, OSError, ValueError):  # beyond datetime's years 1 to 9999
        return datetime.date.min if seconds < 0 else datetime.date.max


def _compare_date(value: datetime.date, op: c.DateOp, date: datetime.date) -> bool:
    if op is c.DateOp.BEFORE:
        return value < date
    if op is c.DateOp.ON:
        return value == date
    return value >= date


def _header_block(candidate: _SearchRow) -> bytes:
    body_start = json.loads(candidate.parts)[1]
    return candidate.data[: min(body_start, SEARCH_HEADER_BYTES)]


def _header_matches(candidate: _SearchRow, field: str, text: str) -> bool:
    if field in ("subject", "from", "to", "cc", "bcc"):
        value = candidate.decoded[field]
        if text:
            return text.casefold() in value.casefold()
        return bool(value) or any(k == field for k, _ in candidate.fields)
    values = [v for k, v in candidate.fields if not field or k == field]
    if not text:
        return bool(values)
    needle = text.casefold()
    return any(needle in v for v in values)


def _text_pieces(candidate: _SearchRow) -> Iterator[str]:
    """The decoded text parts of a message (and the headers of embedded messages), in bounded pieces."""
    data = candidate.data
    root = json.loads(candidate.parts)
    pending: list[list[Any]] = [root]  # depth-first, in order, without recursion
    while pending:
        header_start, body_start, end, encoding, children, embedded = pending.pop()
        if children:
            pending += reversed(children)
            continue
        if embedded is not None:
            header_end, _ = find_body_start(data, embedded[0], embedded[2])
            yield decode_words(data[embedded[0] : min(header_end, embedded[0] + SEARCH_HEADER_BYTES)])
            yield "\n"
            pending.append(embedded)
            continue
        header_end = min(body_start, header_start + SEARCH_HEADER_BYTES)
        content_type = parse_content_type(parse_header_block(data[header_start:header_end]).get("content-type"))
        if content_type.type.lower() in (b"text", b"message"):
            charset = (content_type.param(b"charset") or b"us-ascii").decode("latin-1")
            yield from iter_body_text(data, encoding, charset, body_start, end)
            yield "\n"


def _find_in_body(candidate: _SearchRow, needles: frozenset[str]) -> frozenset[str]:
    """Which of `needles` (case-folded) the text parts hold, in one pass; a needle may span two pieces."""
    found: set[str] = set()
    left = set(needles)
    keep = max((len(n) for n in needles), default=1) - 1
    tail = ""
    for piece in _text_pieces(candidate):
        window = tail + piece.casefold()
        for needle in list(left):
            if needle in window:
                found.add(needle)
                left.discard(needle)
        if not left:
            break
        tail = window[-keep:] if keep else ""
    return frozenset(found)


def _body_needles(criterion: c.Criterion) -> frozenset[str]:
    """The case-folded strings of every BODY and TEXT key (a criterion is at most c.MAX_DEPTH deep)."""
    needles: set[str] = set()
    pending = [criterion]
    while pending:
        match pending.pop():
            case c.Body(text=text) | c.Text(text=text):
                needles.add(text.casefold())
            case c.Not(criterion=inner):
                pending.append(inner)
            case c.Or(left=left, right=right):
                pending += [left, right]
            case c.And(criteria=items):
                pending += items
    return frozenset(needles)


def _matches(criterion: c.Criterion, candidate: _SearchRow) -> bool:
    """Whether the candidate meets the criterion; recursion is bounded by c.MAX_DEPTH."""
    row = candidate.row
    match criterion:
        case c.All():
            return True
        case c.Flag(name=name, present=present):
            return _has_flag(row.flags, name) == present
        case c.Header(field=field, text=text):
            return _header_matches(candidate, field, text)
        case c.Body(text=text):
            return candidate.body_contains(text.casefold())
        case c.Text(text=text):
            needle = text.casefold()
            return needle in candidate.header_text or candidate.body_contains(needle)
        case c.Size(larger_than=larger, smaller_than=smaller):
            return (larger is None or row.size > larger) and (smaller is None or row.size < smaller)
        case c.InternalDate(op=op, date=date):
            return _compare_date(_utc_date(row.internal_date), op, date)
        case c.SentDate(op=op, date=date):  # as _SENT_DAY
            sent = next(d for d in (candidate.sent_day, candidate.sent_date, row.internal_date) if d is not None)
            return _compare_date(_utc_date(sent), op, date)
        case c.SavedDate(op=op, date=date):
            saved = row.saved_at if row.saved_at is not None else row.internal_date
            return _compare_date(_utc_date(saved), op, date)
        case c.Blob(blob_id=blob_id):
            return row.blob_id == blob_id
        case c.Uids():
            return row.uid in criterion
        case c.ModSeq(at_least=at_least):
            return row.modseq >= at_least
        case c.Not(criterion=inner):
            return not _matches(inner, candidate)
        case c.Or(left=left, right=right):
            return _matches(left, candidate) or _matches(right, candidate)
        case c.And(criteria=items):
            return all(_matches(item, candidate) for item in items)
    raise TypeError(f"unknown criterion {criterion!r}")


def _sort_key(key: c.SortKey) -> Callable[[_SearchRow], Any]:
    match key:
        case c.SortKey.ARRIVAL:
            return lambda s: s.row.internal_date
        case c.SortKey.DATE:
            return lambda s: s.sent_date if s.sent_date is not None else s.row.internal_date
        case c.SortKey.SIZE:
            return lambda s: s.row.size
        case c.SortKey.SUBJECT:
            return lambda s: s.decoded["sort_subject"]
        case c.SortKey.FROM:
            return lambda s: s.decoded["sort_from"]
        case c.SortKey.TO:
            return lambda s: s.decoded["sort_to"]
        case c.SortKey.CC:
            return lambda s: s.decoded["sort_cc"]
        case c.SortKey.DISPLAYFROM:
            return lambda s: s.decoded["display_from"]
        case c.SortKey.DISPLAYTO:
            return lambda s: s.decoded["display_to"]
    raise TypeError(f"unknown sort key {key!r}")


_DISPLAY_FIELDS = {c.SortKey.DISPLAYFROM: "from", c.SortKey.DISPLAYTO: "to"}
_THREAD_FIELDS = ("message-id", "in-reply-to", "references")


def _display_name(value: bytes | None) -> str:
    """RFC 5957 §2: the display name of the first mailbox of an address list, RFC 2047-decoded, or its
    addr-spec when it has none; "" without a mailbox. As the i;unicode-casemap collation compares it
    (RFC 5051 §2: titlecase, then NFKD; upper case stands for titlecase)."""
    if value is None:
        return ""
    for address in parse_address_list(value, MAX_LIST_ADDRESSES):
        if address.host is None or address.mailbox is None:
            continue  # the start or end of a group
        name = " ".join(decode_words(address.name).split()) if address.name else ""
        if not name:
            name = decode_words(address.mailbox + (b"@" + address.host if address.host else b""))
        return unicodedata.normalize("NFKD", name.upper())
    return ""

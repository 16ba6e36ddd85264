"""The embedded store: SQLite in WAL mode for metadata, message bodies in append-only segments.

Write path of a delivery (group commit):
0. in a small pool of index threads (never in the committer): parse the message once for IMAP
   (`index_message`); a message the parser chokes on gets a minimal fallback index and is stored anyway;
1. in the committer thread: take every group of deliveries that is waiting (up to MAX_BATCH);
2. append their bodies to the active segment with one write and one fdatasync;
3. insert them all (blobs, messages, UIDs, MODSEQs) in one transaction, each group under its own
   savepoint, and commit (synchronous=FULL: the WAL is fsynced); a group that fails is rolled back to
   its savepoint and fails alone, the rest of the batch commits;
4. resolve the callers' Futures; only then does SMTP answer 250.
So two fsyncs serve a whole batch. A crash before 3 leaves bytes past the last committed body of a
segment; `recover()` cuts them off at the next start. Metadata never points at bytes not on disk.

Accounts and aliases live in the same database. Each change to them raises the `directory_version`
counter (a row of `meta`) in the same transaction, so a running server sees a change made by the CLI in
another process with one read of that row.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kartero.mime.index import MessageIndex, index_message
from kartero.mime.parttree import PartNode, encode_parts
from kartero.store.ids import new_mailbox_objectid
from kartero.store.interface import (
    SPECIAL_MAILBOXES,
    Account,
    AccountExists,
    Content,
    Delivery,
    FileSpan,
    MetadataChange,
    StoredMessage,
    StoreError,
)
from kartero.store.mailboxes import MailboxOps, format_flags
from kartero.store.queue_sql import QUEUE_SCHEMA, QueueOps, insert_outbound, migrate_queue
from kartero.store.segments import Segments
from kartero.store.spool import FileBuffer, SpoolBody, clear_spool, materialize, spool_dir

log = logging.getLogger("kartero.store")

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    address TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    scram TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS aliases (
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    PRIMARY KEY (source, destination)
);
CREATE TABLE IF NOT EXISTS mailboxes (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    special_use TEXT,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL DEFAULT 1,
    highestmodseq INTEGER NOT NULL DEFAULT 1,
    first_recent_uid INTEGER NOT NULL DEFAULT 1,  -- UIDs from here on are recent to the next session (RFC 3501)
    objectid TEXT,                       -- RFC 8474 MAILBOXID (ids.new_mailbox_objectid), set at creation
    UNIQUE (account_id, name)
);
CREATE TABLE IF NOT EXISTS subscriptions (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
);
CREATE TABLE IF NOT EXISTS blobs (
    id TEXT PRIMARY KEY,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    envelope TEXT NOT NULL,              -- the SMTP envelope (JSON)
    created_at INTEGER NOT NULL,
    imap_envelope BLOB NOT NULL,         -- IMAP forms computed once at delivery (kartero.mime.index)
    imap_body BLOB NOT NULL,
    imap_bodystructure BLOB NOT NULL,
    parts TEXT NOT NULL,
    subject TEXT NOT NULL,
    from_text TEXT NOT NULL,
    to_text TEXT NOT NULL,
    cc_text TEXT NOT NULL,
    bcc_text TEXT NOT NULL,
    message_id TEXT NOT NULL,
    sent_date INTEGER,
    sent_day INTEGER,                    -- the day written in Date: (00:00 UTC); NULL: stored before it existed
    sort_subject TEXT NOT NULL,
    sort_from TEXT NOT NULL,
    sort_to TEXT NOT NULL,
    sort_cc TEXT NOT NULL,
    preview TEXT                         -- RFC 8970 (kartero.mime.preview); NULL: made on its first FETCH
);
CREATE INDEX IF NOT EXISTS blobs_segment ON blobs (segment, offset);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    blob_id TEXT NOT NULL REFERENCES blobs(id),
    size INTEGER NOT NULL,
    internal_date INTEGER NOT NULL,
    flags TEXT NOT NULL DEFAULT '',
    modseq INTEGER NOT NULL,
    saved_at INTEGER,                    -- when it came into this mailbox (RFC 8514); NULL: stored before
    UNIQUE (mailbox_id, uid)
);
CREATE INDEX IF NOT EXISTS messages_blob ON messages (blob_id);
CREATE INDEX IF NOT EXISTS messages_modseq ON messages (mailbox_id, modseq);
CREATE TABLE IF NOT EXISTS expunged (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);
CREATE INDEX IF NOT EXISTS expunged_modseq ON expunged (mailbox_id, modseq);
"""
# Columns added after the first schema (version 2): what a session that has not yet seen an expunge may
# still FETCH (the message's body, size, date, flags and MODSEQ, kept until every hold has moved past
# the expunge; see MailboxOps.hold_expunged). Version 3: MAILBOXID (RFC 8474), PREVIEW (RFC 8970) and
# the metadata table (RFC 5464).
# Columns of blobs and messages added since: NULL means "not known for this row", which was stored before
# the column existed (sent_day: the day written in Date:; saved_at: when it came into its mailbox;
# preview: made on its first FETCH PREVIEW). Every mailbox gets its objectid in _migrate.
_ADDED_COLUMNS = {
    "mailboxes": {"first_recent_uid": "INTEGER NOT NULL DEFAULT 1", "objectid": "TEXT"},
    "expunged": {"blob_id": "TEXT", "size": "INTEGER", "internal_date": "INTEGER", "flags": "TEXT",
                 "message_modseq": "INTEGER", "saved_at": "INTEGER"},
    "blobs": {"sent_day": "INTEGER", "preview": "TEXT"},
    "messages": {"saved_at": "INTEGER"},
}  # fmt: skip
_ADDED_INDEXES = """
CREATE INDEX IF NOT EXISTS expunged_blob ON expunged (blob_id) WHERE blob_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS mailboxes_objectid ON mailboxes (objectid);
"""
# Tables added since, made by _migrate for a database of an earlier version (and for a new one).
_ADDED_TABLES = """
CREATE TABLE IF NOT EXISTS metadata (    -- METADATA entries (RFC 5464), by lower-case entry name
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    mailbox_id INTEGER REFERENCES mailboxes(id) ON DELETE CASCADE,  -- NULL: the server's, for this account
    name TEXT NOT NULL,
    value BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS metadata_entry ON metadata (account_id, IFNULL(mailbox_id, 0), name);
"""

# Groups of deliveries committed together at most; bounded so one transaction stays short.
MAX_BATCH = 256
# Threads that parse messages before the commit: one slow message occupies one of them, never the
# committer (finding 2 of issue 8: a hostile Subject held every delivery while it was parsed).
INDEX_THREADS = 4
# Compaction rewrites a sealed segment once less than this share of its bytes is still referenced.
COMPACT_BELOW = 0.5
_STOP = object()
_COMPACT = object()
_RELEASE = object()


class SQLiteStore(MailboxOps, QueueOps):
    """Store on SQLite + segments under `root` (`root/kartero.db`, `root/messages/*.seg`).

    Opening it is safe while a server runs (the CLI does); `recover()` and `start()` are for the one
    process that delivers.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.db_path = root / "kartero.db"
        self.segments = Segments(root / "messages")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # Every write transaction of this process runs under this lock (see _Transaction).
        self._write_lock = threading.Lock()
        self._db().executescript(SCHEMA + QUEUE_SCHEMA)  # idempotent; executescript commits by itself
        migrate_queue(self._db())
        with self._write() as db:
            _migrate(db)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('directory_version', '1')")
        # Up to issue 10 the directory version was this file's identity; the counter in `meta` replaced it.
        (root / "directory.version").unlink(missing_ok=True)
        self._commit_queue: queue.Queue[Any] = queue.Queue()
        self._committer: threading.Thread | None = None
        self._indexer: ThreadPoolExecutor | None = None
        self._closed = False
        self._listeners: list[Callable[[frozenset[int]], None]] = []
        self._queue_listeners: list[Callable[[], None]] = []
        self._account_listeners: list[Callable[[int], None]] = []
        self._metadata_listeners: list[Callable[[MetadataChange], None]] = []
        self._holds = ExpungeHolds(self._request_release)

    # -- connections -------------------------------------------------------------------------------

    def _connect(self) -> _Connection:
        db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=10.0,
                             factory=_Connection)  # fmt: skip
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: in WAL mode, NORMAL would not fsync at commit, and a 250 must survive power loss.
        # (_Transaction relaxes it for the commits that may be lost with the machine: see there.)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=10000")
        with self._connections_lock:
            self._connections.append(db)
        return db

    def _db(self) -> _Connection:
        db: _Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    def _write(self, *, durable: bool = True) -> _Transaction:
        return _Transaction(self._db(), self._write_lock, durable)

    # -- delivery (group commit) -------------------------------------------------------------------

    def recover(self) -> int:
        """Cut off bytes no committed message points to (left by a crash mid-batch), remove segments
        nothing points to and empty the spool folder; returns the number of bytes dropped. Call before
        `start()`, in the delivering process only."""
        clear_spool(self.root)
        with self._write() as db:  # no session of an earlier run holds anything
            self._release_tombstones(db, None)
        ends = dict(self._db().execute("SELECT segment, MAX(offset + size) FROM blobs GROUP BY segment"))
        dropped = 0
        numbers = self.segments.numbers()
        for number in numbers:
            size = self.segments.size(number)
            end = ends.get(number)
            if end is None:
                dropped += size
                self.segments.remove(number)
            elif size > end:
                dropped += size - end
                self.segments.truncate(number, end)
        remaining = self.segments.numbers()
        if remaining and self.segments.size(remaining[-1]) < self.segments.max_bytes:
            self.segments.resume(remaining[-1])
        return dropped

    def start(self) -> None:
        """Start the committer thread; until then `deliver` is unavailable (CLI use needs none)."""
        if self._committer is not None:
            return
        self._indexer = ThreadPoolExecutor(INDEX_THREADS, thread_name_prefix="kartero-index")
        self._committer = threading.Thread(target=self._commit_loop, name="kartero-commit", daemon=True)
        self._committer.start()

    def deliver(self, delivery: Delivery) -> Future[list[StoredMessage]]:
        single: Future[list[StoredMessage]] = Future()

        def done(group: Future[list[list[StoredMessage]]]) -> None:
            error = group.exception()
            if error is not None:
                single.set_exception(error)
            else:
                single.set_result(group.result()[0])

        self.deliver_group((delivery,)).add_done_callback(done)
        return single

    def deliver_group(self, deliveries: Sequence[Delivery]) -> Future[list[list[StoredMessage]]]:
        if self._indexer is None or self._closed:
            raise StoreError("store is not accepting deliveries")
        if not deliveries:
            raise ValueError("an empty delivery group")
        future: Future[list[list[StoredMessage]]] = Future()
        try:
            self._indexer.submit(self._prepare, tuple(deliveries), future)
        except RuntimeError:  # close() shut the pool down meanwhile
            raise StoreError("store is not accepting deliveries") from None
        return future

    def _prepare(self, deliveries: tuple[Delivery, ...], future: Future[list[list[StoredMessage]]]) -> None:
        """Index thread: bring each message into one piece (bytes, or for a large one a file of its own
        in the spool folder), parse it, then hand the group to the committer."""
        bodies: list[bytes | SpoolBody] = []
        try:
            for delivery in deliveries:
                bodies.append(self._body(delivery.data))
            indexes = tuple(_index(d, b) for d, b in zip(deliveries, bodies, strict=True))
            group = _Group(deliveries, tuple(bodies), indexes, future)
        except BaseException as exc:  # a full disk, a vanished spool file, MemoryError, or a bug
            log.exception("event=store.prepare_failed")
            _discard(bodies)
            future.set_exception(StoreError(f"could not prepare the message: {exc}"))
            return
        self._commit_queue.put(group)

    def _body(self, data: bytes | Content) -> bytes | SpoolBody:
        if isinstance(data, bytes):
            return data
        if not isinstance(data.tail, FileSpan):
            return data.head + data.tail
        return materialize(spool_dir(self.root), data.head, data.tail)

    def compact(self) -> None:
        """Ask the committer to reclaim the space of deleted messages (runs between batches)."""
        if self._committer is not None and not self._closed:
            self._commit_queue.put(_COMPACT)

    def _commit_loop(self) -> None:
        db = self._connect()
        stop = False
        while not stop:
            first = self._commit_queue.get()
            if first is _STOP:
                break
            if first is _COMPACT:
                self._compact(db)
                continue
            if first is _RELEASE:
                self._release_pending(db)
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._commit_queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                if item is _COMPACT or item is _RELEASE:
                    self._commit_queue.put(item)
                    break
                batch.append(item)
            self._commit_batch(db, batch)

    def _commit_batch(self, db: _Connection, batch: list[_Group]) -> None:
        live = [g for g in batch if g.future.set_running_or_notify_cancel()]
        if not live:
            return
        results: list[list[list[StoredMessage]] | StoreError] = []
        try:
            locations = iter(self.segments.append([body for g in live for body in g.bodies]))
            with _Transaction(db, self._write_lock, durable=True):
                for group in live:
                    places = [next(locations) for _ in group.deliveries]
                    results.append(self._insert_group(db, group, places))
        except Exception as exc:
            log.exception("event=store.commit_failed groups=%d", len(live))
            for group in live:
                group.future.set_exception(StoreError(f"commit failed: {exc}"))
            return
        finally:
            for group in batch:
                _discard(group.bodies)
        committed = [(g, r) for g, r in zip(live, results, strict=True) if not isinstance(r, StoreError)]
        for group, result in zip(live, results, strict=True):
            if isinstance(result, StoreError):
                group.future.set_exception(result)
            else:
                group.future.set_result(result)
        self._notify(frozenset(m.mailbox_id for _, result in committed for stored in result for m in stored))
        if any(d.outbound is not None for group, _ in committed for d in group.deliveries):
            for listener in self._queue_listeners:
                listener()

    def _insert_group(
        self, db: sqlite3.Connection, group: _Group, places: list[tuple[int, int]]
    ) -> list[list[StoredMessage]] | StoreError:
        """Insert every delivery of the group under one savepoint: all of them, or none and an error.

        Mail content must never make a delivery fail: when the insert fails for a reason other than
        vanished mailboxes, it is retried once with the minimal index (whose fields hold nothing taken
        from the message)."""
        error = StoreError("could not store the message")
        for indexes in (group.indexes, tuple(_minimal_index(d) for d in group.deliveries)):
            db.execute("SAVEPOINT grp")
            try:
                results: list[list[StoredMessage]] = []
                for delivery, index, place in zip(group.deliveries, indexes, places, strict=True):
                    stored = self._insert_delivery(db, delivery, index, place)
                    if isinstance(stored, StoreError):
                        db.execute("ROLLBACK TO grp")
                        db.execute("RELEASE grp")
                        return stored
                    results.append(stored)
            except (sqlite3.Error, ValueError) as exc:  # ValueError: e.g. text SQLite cannot take
                db.execute("ROLLBACK TO grp")
                db.execute("RELEASE grp")
                log.exception("event=store.insert_failed id=%s", group.deliveries[0].blob_id)
                error = StoreError(f"could not store the message: {exc}")
                continue
            db.execute("RELEASE grp")
            return results
        return error

    def _insert_delivery(
        self, db: sqlite3.Connection, d: Delivery, ix: MessageIndex, location: tuple[int, int]
    ) -> list[StoredMessage] | StoreError:
        stored: list[StoredMessage] = []
        now = int(time.time())  # the save date (RFC 8514): delivery and APPEND alike
        db.execute(
            "INSERT INTO blobs (id, segment, offset, size, envelope, created_at, imap_envelope, imap_body,"
            " imap_bodystructure, parts, subject, from_text, to_text, cc_text, bcc_text, message_id, sent_date,"
            " sent_day, sort_subject, sort_from, sort_to, sort_cc, preview) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                d.blob_id, location[0], location[1], len(d.data), json.dumps(dict(d.envelope)), d.internal_date,
                ix.envelope, ix.body, ix.bodystructure, encode_parts(ix.parts), ix.subject, ix.from_, ix.to, ix.cc,
                ix.bcc, ix.message_id, ix.sent_date, ix.sent_day, ix.sort_subject, ix.sort_from, ix.sort_to, ix.sort_cc,
                ix.preview,
            ),
        )  # fmt: skip
        for target in d.targets:
            row = db.execute(
                "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
                " WHERE account_id = ? AND name = ? RETURNING id, uidnext - 1, highestmodseq",
                (target.account_id, target.mailbox),
            ).fetchone()
            if row is None:
                continue  # account or mailbox deleted since RCPT; the other targets still get it
            mailbox_id, uid, modseq = row
            db.execute(
                "INSERT INTO messages (mailbox_id, uid, blob_id, size, internal_date, flags, modseq, saved_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (mailbox_id, uid, d.blob_id, len(d.data), d.internal_date, format_flags(target.flags), modseq, now),
            )
            stored.append(StoredMessage(target.account_id, mailbox_id, uid, modseq))
        if not stored and d.targets and (d.outbound is None or not d.outbound.recipients):
            return StoreError("no recipient mailbox exists any more")
        insert_outbound(db, d)
        return stored

    def _compact(self, db: _Connection) -> None:
        """Copy the live bodies of mostly dead sealed segments to the active one, then drop them.

        Crash-safe in every order: the copies are fdatasynced before the pointers move (in one
        transaction), and the old segment is removed only after that commit.
        """
        for number in self.segments.numbers():
            if number == self.segments.active:
                continue
            rows = db.execute(
                "SELECT id, offset, size FROM blobs WHERE segment = ? ORDER BY offset", (number,)
            ).fetchall()
            total = self.segments.size(number)
            if rows and sum(r[2] for r in rows) >= total * COMPACT_BELOW:
                continue
            try:
                if rows:
                    bodies = [self.segments.read(number, offset, size) for _, offset, size in rows]
                    locations = self.segments.append(bodies)
                    with _Transaction(db, self._write_lock, durable=True):
                        db.executemany(
                            "UPDATE blobs SET segment = ?, offset = ? WHERE id = ?",
                            [(seg, off, row[0]) for (seg, off), row in zip(locations, rows, strict=True)],
                        )
                self.segments.remove(number)
                log.info("event=store.compacted segment=%d live=%d bytes=%d", number, len(rows), total)
            except Exception:
                log.exception("event=store.compaction_failed segment=%d", number)
                return

    # -- accounts and aliases ----------------------------------------------------------------------

    def add_account(self, address: str, password_hash: str, scram: str = "") -> Account:
        now = int(time.time())
        with self._write() as db:
            try:
                cur = db.execute(
                    "INSERT INTO accounts (address, password_hash, created_at, scram) VALUES (?, ?, ?, ?)",
                    (address, password_hash, now, scram),
                )
            except sqlite3.IntegrityError:
                raise AccountExists(f"account {address} already exists") from None
            account_id = cur.lastrowid
            assert account_id is not None
            for name, special_use in SPECIAL_MAILBOXES:
                db.execute(
                    "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity, objectid)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (account_id, name, special_use, self._next_uidvalidity(db), new_mailbox_objectid()),
                )
                db.execute("INSERT INTO subscriptions (account_id, name) VALUES (?, ?)", (account_id, name))
            _bump_directory_version(db)
        return Account(account_id, address, password_hash, now, scram)

    @staticmethod
    def _next_uidvalidity(db: sqlite3.Connection) -> int:
        # RFC 9051 §2.3.1.1: a re-created mailbox must not reuse an old UIDVALIDITY; a counter that is
        # at least the clock guarantees that even for two creations in one second.
        row = db.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        value = max(int(time.time()), int(row[0]) + 1 if row else 0)
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('uidvalidity', ?)", (str(value),))
        return value

    def _account(self, where: str, arg: object) -> Account | None:
        row = (
            self._db()
            .execute(f"SELECT id, address, password_hash, created_at, scram FROM accounts WHERE {where}", (arg,))
            .fetchone()
        )
        return Account(*row) if row else None

    def get_account(self, address: str) -> Account | None:
        return self._account("address = ?", address)

    def get_account_by_id(self, account_id: int) -> Account | None:
        return self._account("id = ?", account_id)

    def first_account(self) -> Account | None:
        row = (
            self._db()
            .execute("SELECT id, address, password_hash, created_at, scram FROM accounts ORDER BY id LIMIT 1")
            .fetchone()
        )
        return Account(*row) if row else None

    def list_accounts(self) -> list[Account]:
        rows = self._db().execute("SELECT id, address, password_hash, created_at, scram FROM accounts ORDER BY address")
        return [Account(*row) for row in rows]

    def set_password(self, address: str, password_hash: str, scram: str = "") -> bool:
        with self._write() as db:
            cur = db.execute(
                "UPDATE accounts SET password_hash = ?, scram = ? WHERE address = ?", (password_hash, scram, address)
            )
            _bump_directory_version(db)
        return cur.rowcount == 1

    def set_scram(self, address: str, scram: str) -> None:
        with self._write() as db:
            db.execute("UPDATE accounts SET scram = ? WHERE address = ?", (scram, address))

    def delete_account(self, address: str) -> bool:
        with self._write() as db:
            row = db.execute("SELECT id FROM accounts WHERE address = ?", (address,)).fetchone()
            if row is None:
                return False
            blob_ids = [
                r[0]
                for r in db.execute(
                    "SELECT blob_id FROM messages JOIN mailboxes ON mailboxes.id = messages.mailbox_id"
                    " WHERE mailboxes.account_id = ? UNION SELECT blob_id FROM expunged"
                    " JOIN mailboxes ON mailboxes.id = expunged.mailbox_id"
                    " WHERE mailboxes.account_id = ? AND blob_id IS NOT NULL",
                    (row[0], row[0]),
                )
            ]
            db.execute("DELETE FROM accounts WHERE id = ?", (row[0],))
            # Bodies nothing else shares become dead space in their segments; compaction (at the next
            # server start, or `compact()`) reclaims it.
            self._drop_unreferenced_blobs(db, blob_ids)
            _bump_directory_version(db)
        self.compact()
        return True

    def add_alias(self, source: str, destination: str) -> bool:
        with self._write() as db:
            cur = db.execute("INSERT OR IGNORE INTO aliases (source, destination) VALUES (?, ?)", (source, destination))
            _bump_directory_version(db)
        return cur.rowcount == 1

    def delete_alias(self, source: str) -> int:
        with self._write() as db:
            count = db.execute("DELETE FROM aliases WHERE source = ?", (source,)).rowcount
            _bump_directory_version(db)
        return count

    def list_aliases(self) -> list[tuple[str, str]]:
        return [
            (r[0], r[1])
            for r in self._db().execute("SELECT source, destination FROM aliases ORDER BY source, destination")
        ]

    def alias_destinations(self, source: str) -> list[str]:
        rows = self._db().execute("SELECT destination FROM aliases WHERE source = ? ORDER BY destination", (source,))
        return [r[0] for r in rows]

    def load_directory(self) -> tuple[dict[str, int], dict[str, tuple[str, ...]], int | None]:
        db = self._db()
        db.execute("BEGIN")  # one consistent snapshot of both tables
        try:
            accounts = dict(db.execute("SELECT address, id FROM accounts"))
            aliases: dict[str, list[str]] = {}
            for source, destination in db.execute(
                "SELECT source, destination FROM aliases ORDER BY source, destination"
            ):
                aliases.setdefault(source, []).append(destination)
            first = db.execute("SELECT MIN(id) FROM accounts").fetchone()[0]
        finally:
            db.execute("COMMIT")
        return accounts, {k: tuple(v) for k, v in aliases.items()}, first

    def directory_version(self) -> int:
        """The counter every account and alias change raises in its own transaction: one read of one row
        (a few µs, about twice a `stat`), so the server sees the CLI's changes at the next RCPT."""
        row = self._db().execute("SELECT value FROM meta WHERE key = 'directory_version'").fetchone()
        return int(row[0]) if row else 0

    def read_message(self, blob_id: str) -> bytes:
        for attempt in (1, 2):
            row = self._db().execute("SELECT segment, offset, size FROM blobs WHERE id = ?", (blob_id,)).fetchone()
            if row is None:
                raise StoreError(f"no message {blob_id}")
            try:
                return self.segments.read(*row)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                # compaction moved the body between the lookup and the read; look again
        raise AssertionError("unreachable")

    def read_envelope(self, blob_id: str) -> Mapping[str, Any]:
        row = self._db().execute("SELECT envelope FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        if row is None:
            raise StoreError(f"no message {blob_id}")
        result: Mapping[str, Any] = json.loads(row[0])
        return result

    def _tombstones_written(self, mailbox_id: int) -> None:
        self._holds.expunged(mailbox_id)

    def hold_expunged(self, mailbox_id: int, modseq: int) -> Hold:
        return self._holds.hold(mailbox_id, modseq)

    def open_message(self, blob_id: str) -> SegmentReader:
        for attempt in (1, 2):
            row = self._db().execute("SELECT segment, offset, size FROM blobs WHERE id = ?", (blob_id,)).fetchone()
            if row is None:
                raise StoreError(f"no message {blob_id}")
            try:
                # A file of its own: compaction may unlink the segment, the open file keeps its bytes.
                fd = os.open(self.segments.path(row[0]), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                continue  # compaction moved the body between the lookup and the open; look again
            return SegmentReader(fd, row[1], row[2])
        raise AssertionError("unreachable")

    def read_range(self, blob_id: str, start: int, length: int) -> bytes:
        """Bytes [start, start+length) of a message (clipped to its end), without reading the rest."""
        for attempt in (1, 2):
            row = self._db().execute("SELECT segment, offset, size FROM blobs WHERE id = ?", (blob_id,)).fetchone()
            if row is None:
                raise StoreError(f"no message {blob_id}")
            segment, offset, size = row
            start = max(0, min(start, size))
            length = max(0, min(length, size - start))
            try:
                return self.segments.read(segment, offset + start, length) if length else b""
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # -- change notification -------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[frozenset[int]], None]) -> None:
        self._listeners.append(listener)

    def add_queue_listener(self, listener: Callable[[], None]) -> None:
        self._queue_listeners.append(listener)

    def add_account_listener(self, listener: Callable[[int], None]) -> None:
        self._account_listeners.append(listener)

    def add_metadata_listener(self, listener: Callable[[MetadataChange], None]) -> None:
        self._metadata_listeners.append(listener)

    def _notify_metadata(self, change: MetadataChange) -> None:
        for listener in self._metadata_listeners:
            try:
                listener(change)
            except Exception:
                log.exception("event=store.listener_failed")

    def _notify_account(self, account_id: int) -> None:
        for listener in self._account_listeners:
            try:
                listener(account_id)
            except Exception:
                log.exception("event=store.listener_failed")

    @staticmethod
    def _drop_unreferenced_blobs(db: sqlite3.Connection, blob_ids: list[str]) -> None:
        """Forget bodies no mailbox, no held tombstone and no queue entry points to any more."""
        db.executemany(
            "DELETE FROM blobs WHERE id = ? AND NOT EXISTS (SELECT 1 FROM messages WHERE blob_id = ?)"
            " AND NOT EXISTS (SELECT 1 FROM expunged WHERE blob_id = ?)"
            " AND NOT EXISTS (SELECT 1 FROM queue WHERE id = ?)",
            [(b, b, b, b) for b in blob_ids],
        )

    # -- expunged messages held for sessions (RFC 2180 §4.1.1) ------------------------------------------

    def _request_release(self, mailbox_id: int) -> None:
        """Tombstones of `mailbox_id` may no longer be held: let their bodies go, in the committer
        (between batches, never in a session's command) when it runs, else at once."""
        if self._committer is not None and not self._closed:
            if self._holds.want_release(mailbox_id):
                self._commit_queue.put(_RELEASE)
            return
        with self._write() as db:
            self._release_tombstones(db, frozenset({mailbox_id}))

    def _release_pending(self, db: _Connection) -> None:
        try:
            with _Transaction(db, self._write_lock, durable=True):
                self._release_tombstones(db, self._holds.take_released())
        except Exception:
            log.exception("event=store.release_failed")

    def _release_tombstones(self, db: sqlite3.Connection, mailbox_ids: frozenset[int] | None) -> None:
        """Inside a write transaction: forget the bodies of tombstones (of these mailboxes, or all) that no
        hold keeps. The holds are read here, under SQLite's write lock: a session that takes a hold later
        reads its message list after this commits, so it never lists a message whose body goes here."""
        if mailbox_ids is None:
            rows = db.execute("SELECT mailbox_id, uid, blob_id FROM expunged WHERE blob_id IS NOT NULL").fetchall()
        else:
            rows = []
            for mailbox_id in mailbox_ids:
                lowest = self._holds.lowest(mailbox_id)
                found = db.execute(
                    "SELECT mailbox_id, uid, blob_id, modseq FROM expunged"
                    " WHERE mailbox_id = ? AND blob_id IS NOT NULL",
                    (mailbox_id,),
                ).fetchall()
                going = [r[:3] for r in found if lowest is None or r[3] <= lowest]
                if len(going) == len(found):
                    self._holds.none_kept(mailbox_id)
                rows += going
        if not rows:
            return
        db.executemany(
            "UPDATE expunged SET blob_id = NULL WHERE mailbox_id = ? AND uid = ?", [(r[0], r[1]) for r in rows]
        )
        self._drop_unreferenced_blobs(db, list({r[2] for r in rows}))

    def _notify(self, mailbox_ids: frozenset[int]) -> None:
        if not mailbox_ids:
            return
        for listener in self._listeners:
            try:
                listener(mailbox_ids)
            except Exception:
                log.exception("event=store.listener_failed")

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish every delivery already accepted, then stop the writers and close the database."""
        if self._closed:
            return
        self._closed = True
        if self._indexer is not None:
            self._indexer.shutdown(wait=True)  # what is being indexed still reaches the committer
        if self._committer is not None:
            self._commit_queue.put(_STOP)
            self._committer.join()
        self.segments.close()
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()


MAX_MODSEQ = 2**63 - 1


def _bump_directory_version(db: sqlite3.Connection) -> None:
    """Inside the write transaction of an account or alias change: a running server's next directory
    check sees a new version and reloads its snapshot (auth.accounts.DirectoryCache)."""
    db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'directory_version'")


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a database of an earlier schema version up to this one (inside a write transaction)."""
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column, kind in columns.items():
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                if column == "first_recent_uid":  # an upgrade makes no message that was there \Recent
                    db.execute("UPDATE mailboxes SET first_recent_uid = uidnext")
    # Mailboxes made before OBJECTID get their MAILBOXID now: it must exist for every mailbox.
    missing = [row[0] for row in db.execute("SELECT id FROM mailboxes WHERE objectid IS NULL")]
    db.executemany("UPDATE mailboxes SET objectid = ? WHERE id = ?", [(new_mailbox_objectid(), i) for i in missing])
    for statement in (_ADDED_TABLES + _ADDED_INDEXES).split(";"):
        if statement.strip():
            db.execute(statement)


class ExpungeHolds:
    """In memory: for each mailbox, the MODSEQ each session holding it has reported up to. A tombstone
    whose MODSEQ is above the lowest of them may still be fetched by that session; the rest may go."""

    def __init__(self, on_release: Callable[[int], None]) -> None:
        self._on_release = on_release
        self._lock = threading.Lock()
        self._holds: dict[int, dict[int, int]] = {}  # mailbox id -> hold id -> modseq
        self._next_id = 0
        self._pending: set[int] = set()  # mailboxes whose tombstones the committer should look at
        self._tombstoned: set[int] = set()  # mailboxes that may have tombstones keeping a body

    def hold(self, mailbox_id: int, modseq: int) -> Hold:
        with self._lock:
            self._next_id += 1
            self._holds.setdefault(mailbox_id, {})[self._next_id] = modseq
            return Hold(self, mailbox_id, self._next_id)

    def lowest(self, mailbox_id: int) -> int | None:
        with self._lock:
            holds = self._holds.get(mailbox_id)
            return min(holds.values()) if holds else None

    def expunged(self, mailbox_id: int) -> None:
        """Tombstones keeping bodies were written for the mailbox (inside that write transaction)."""
        with self._lock:
            self._tombstoned.add(mailbox_id)

    def none_kept(self, mailbox_id: int) -> None:
        """No tombstone of the mailbox keeps a body (found inside a write transaction)."""
        with self._lock:
            self._tombstoned.discard(mailbox_id)

    def _set(self, mailbox_id: int, hold_id: int, modseq: int | None) -> None:
        with self._lock:
            holds = self._holds.get(mailbox_id, {})
            if hold_id not in holds or holds[hold_id] == modseq:
                return
            if modseq is None:
                del holds[hold_id]
                if not holds:
                    del self._holds[mailbox_id]
            else:
                holds[hold_id] = modseq
            if mailbox_id not in self._tombstoned:
                return  # the common case: nothing to let go, no work for the committer
        self._on_release(mailbox_id)

    def want_release(self, mailbox_id: int) -> bool:
        """Mark the mailbox for the committer; True when it was not marked yet (queue one request)."""
        with self._lock:
            if mailbox_id in self._pending:
                return False
            self._pending.add(mailbox_id)
            return True

    def take_released(self) -> frozenset[int]:
        with self._lock:
            taken, self._pending = frozenset(self._pending), set()
            return taken


class Hold:
    """One session's ExpungeHold (see kartero.store.interface)."""

    def __init__(self, holds: ExpungeHolds, mailbox_id: int, hold_id: int) -> None:
        self._holds = holds
        self._mailbox_id = mailbox_id
        self._id = hold_id

    def advance(self, modseq: int) -> None:
        self._holds._set(self._mailbox_id, self._id, modseq)

    def release(self) -> None:
        self._holds._set(self._mailbox_id, self._id, None)


class _Connection(sqlite3.Connection):
    """A connection that remembers its `PRAGMA synchronous` setting (FULL unless relaxed)."""

    durable = True


class _Transaction:
    """`with` block running BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on one connection, under the
    store's write lock.

    The lock: SQLite lets one writer in at a time and makes the others poll (its busy handler sleeps 1 to
    100 ms between tries), so 50 IMAP sessions storing flags beside the committer spent more time asleep
    than writing (issue 9: STORE 135-170 ms at 50 sessions). Queued on one lock in this process, each
    writer starts the moment the one before commits. Other processes (the CLI) still meet busy_timeout.

    `durable=False` commits with synchronous=NORMAL: the WAL is not fsynced at this commit, so the change
    survives a crash of the process but may be lost with the machine (never corrupted), until the next
    durable commit or checkpoint fsyncs the WAL with it. Only for changes a client can make again and that
    lose no mail: flags, expunges, \\Recent. Deliveries, APPEND, COPY/MOVE and the queue stay FULL.
    """

    def __init__(self, db: _Connection, lock: threading.Lock, durable: bool = True) -> None:
        self.db = db
        self.lock = lock
        self.durable = durable

    def __enter__(self) -> _Connection:
        self.lock.acquire()
        try:
            if self.db.durable != self.durable:
                self.db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
                self.db.durable = self.durable
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()


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


@dataclass(frozen=True, slots=True)
class _Group:
    """Deliveries committed together or not at all, with their bodies in one piece, their indexes and
    the caller's Future."""

    deliveries: tuple[Delivery, ...]
    bodies: tuple[bytes | SpoolBody, ...]
    indexes: tuple[MessageIndex, ...]
    future: Future[list[list[StoredMessage]]]


def _index(delivery: Delivery, body: bytes | SpoolBody) -> MessageIndex:
    """The message's index; a parser failure is logged and the message gets the minimal one."""
    try:
        if isinstance(body, bytes):
            return index_message(body)
        with body.buffer() as buffer:
            return index_message(buffer)  # a MessageData view in bounded windows (spool.FileBuffer)
    except Exception:
        log.exception("event=store.index_failed id=%s size=%d", delivery.blob_id, len(delivery.data))
        return _minimal_index(delivery)


def _discard(bodies: Sequence[bytes | SpoolBody]) -> None:
    for body in bodies:
        if isinstance(body, SpoolBody):
            body.discard()


def _minimal_index(delivery: Delivery) -> MessageIndex:
    """What IMAP can say of a message without parsing it: one opaque application/octet-stream part."""
    size = len(delivery.data)
    body = f'("application" "octet-stream" NIL NIL NIL "7bit" {size})'.encode()
    return MessageIndex(
        envelope=b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
        body=body,
        bodystructure=body[:-1] + b" NIL NIL NIL NIL)",
        parts=PartNode(0, 0, size, "7bit"),
        subject="", from_="", to="", cc="", bcc="", message_id="", sent_date=None, sent_day=None,
        sort_subject="", sort_from="", sort_to="", sort_cc="", preview="",
    )  # fmt: skip

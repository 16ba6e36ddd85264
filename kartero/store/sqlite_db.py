"""The SQLite database every part of the embedded store shares: schema, connections, the write lock.

`Database` is the connection provider the three store classes (accounts, mail, queue) are built over: one
connection per thread, one lock that every write transaction of the process takes (see `Transaction`),
and the listeners each part notifies after its commits.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kartero.store.ids import new_mailbox_objectid
from kartero.store.interface import MetadataChange

log = logging.getLogger("kartero.store")

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    address TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    scram TEXT NOT NULL DEFAULT '',
    quota_bytes INTEGER,                 -- storage limit: NULL = [limits] default_quota, 0 = none
    quota_warned INTEGER NOT NULL DEFAULT 0,  -- 1: the 90 % warning went out (until usage is below 90 %)
    admin INTEGER NOT NULL DEFAULT 0     -- 1: may use the web admin and the admin API
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
    used_bytes INTEGER NOT NULL DEFAULT 0,     -- SUM(messages.size), kept with every change (quotas)
    used_messages INTEGER NOT NULL DEFAULT 0,  -- COUNT(messages), likewise
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
# the expunge; see holds.ExpungeHolds). Version 3: MAILBOXID (RFC 8474), PREVIEW (RFC 8970) and
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
    # Quotas (issue 12): an account's usage is the sum of its mailboxes' counters; _migrate counts them
    # once for a database made before they existed.
    "accounts": {"quota_bytes": "INTEGER", "quota_warned": "INTEGER NOT NULL DEFAULT 0",
                 "admin": "INTEGER NOT NULL DEFAULT 0"},  # the web admin (issue 14)
}  # fmt: skip
_ADDED_USAGE_COLUMNS = {"used_bytes": "INTEGER NOT NULL DEFAULT 0", "used_messages": "INTEGER NOT NULL DEFAULT 0"}
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
CREATE TABLE IF NOT EXISTS sieve_scripts (  -- Sieve scripts (store/sieve_sql.py), ManageSieve's namespace
    id INTEGER PRIMARY KEY,
    account_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,  -- NULL: a global script (RFC 6609)
    name TEXT NOT NULL,
    script TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 0,    -- 1 for at most one script per account
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS sieve_scripts_name ON sieve_scripts (IFNULL(account_id, 0), name);
CREATE TABLE IF NOT EXISTS sieve_memory (  -- what Sieve remembers per account: vacation replies, duplicates
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    expires_at INTEGER NOT NULL,             -- unix seconds
    PRIMARY KEY (account_id, key)
);
CREATE INDEX IF NOT EXISTS sieve_memory_expiry ON sieve_memory (account_id, expires_at);
CREATE TABLE IF NOT EXISTS api_tokens (  -- bearer tokens of the JSON API, by the SHA-256 of the secret
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    account_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,  -- NULL: the whole admin API
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS web_sessions (  -- signed-in browsers, by the SHA-256 of the cookie
    session_hash TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS web_sessions_expiry ON web_sessions (expires_at);
CREATE TABLE IF NOT EXISTS trace_events (   -- the message trace (store/trace_sql.py), kept for [trace] keep
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,                 -- milliseconds since the epoch
    message_id TEXT NOT NULL,               -- Kartero's id of the message (time-ordered: store/ids.py)
    kind TEXT NOT NULL,                     -- kartero.mail.trace.TraceKind
    queue_id TEXT,
    header_id TEXT,                         -- the Message-ID field, without angle brackets
    detail TEXT NOT NULL                    -- the other fields, JSON
);
CREATE INDEX IF NOT EXISTS trace_events_message ON trace_events (message_id);
CREATE INDEX IF NOT EXISTS trace_events_queue ON trace_events (queue_id) WHERE queue_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS trace_events_header ON trace_events (header_id, message_id) WHERE header_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS trace_addresses (  -- the addresses each traced message names, for the search
    id INTEGER PRIMARY KEY,
    address TEXT NOT NULL,                  -- trace_sql.address_key()
    message_id TEXT NOT NULL                -- time-ordered (store/ids.py): a time range is a range of ids
);
CREATE INDEX IF NOT EXISTS trace_addresses_address ON trace_addresses (address, message_id);
CREATE TABLE IF NOT EXISTS import_ledger (  -- what `kartero import` stored (store/imports_sql.py)
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    source TEXT NOT NULL,                   -- the source's identity: "maildir:/abs/path", "imap://u@host:993"
    folder TEXT NOT NULL,                   -- the folder the message was in there
    digest TEXT NOT NULL,                   -- SHA-256 (hex) of the bytes stored
    occurrence INTEGER NOT NULL,            -- 1 for the first message of these bytes in the folder, 2, ...
    blob_id TEXT NOT NULL,                  -- the id it is (to be) stored under
    done INTEGER NOT NULL DEFAULT 0,        -- 1: stored, 0: claimed (stored only if blobs has blob_id)
    run TEXT NOT NULL,                      -- the import run that last met it
    PRIMARY KEY (account_id, source, folder, digest, occurrence)
);
"""


QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id TEXT PRIMARY KEY REFERENCES blobs(id),
    sender TEXT NOT NULL,
    ret TEXT,
    envid TEXT,
    smtputf8 INTEGER NOT NULL,
    body_8bit INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    delay_notified INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS queue_recipients (
    id INTEGER PRIMARY KEY,
    queue_id TEXT NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    notify TEXT NOT NULL,
    orcpt TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_reply TEXT,
    updated_at INTEGER NOT NULL,
    status TEXT,
    remote_mta TEXT,
    reported INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS queue_due ON queue_recipients (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS queue_recipients_entry ON queue_recipients (queue_id);
"""

_ADDED_QUEUE_COLUMNS = {"status": "TEXT", "remote_mta": "TEXT", "reported": "INTEGER NOT NULL DEFAULT 1"}


def migrate_queue(db: sqlite3.Connection) -> None:
    """Add the columns a queue table from an earlier version lacks."""
    have = {row[1] for row in db.execute("PRAGMA table_info(queue_recipients)")}
    for column, kind in _ADDED_QUEUE_COLUMNS.items():
        if column not in have:
            db.execute(f"ALTER TABLE queue_recipients ADD COLUMN {column} {kind}")


class Database:
    """`root/kartero.db` in WAL mode, created or brought up to SCHEMA_VERSION when opened. Thread-safe:
    each thread gets a connection of its own."""

    IntegrityError = sqlite3.IntegrityError

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "kartero.db"
        self.listeners = Listeners()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # Every write transaction of this process runs under this lock (see Transaction).
        self.write_lock = threading.Lock()
        self.db().executescript(SCHEMA + QUEUE_SCHEMA)  # idempotent; executescript commits by itself
        migrate_queue(self.db())
        with self.write() as db:
            _migrate(db)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('directory_version', '1')")

    def connect(self) -> Connection:
        """A new connection (the committer keeps one of its own)."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0,
                             factory=Connection)  # fmt: skip
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: in WAL mode, NORMAL would not fsync at commit, and a 250 must survive power loss.
        # (Transaction relaxes it for the commits that may be lost with the machine: see there.)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=10000")
        with self._connections_lock:
            self._connections.append(db)
        return db

    def db(self) -> Connection:
        """This thread's connection (for reads, and for writes inside `write()`)."""
        db: Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self.connect()
        return db

    def write(self, *, durable: bool = True, db: Connection | None = None) -> Transaction:
        """A write transaction on this thread's connection (or `db`), under the write lock."""
        return Transaction(db or self.db(), self.write_lock, durable)

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()


class Listeners:
    """Who hears of committed changes: calls come from whichever thread committed (a session's worker,
    the committer); a listener that raises is logged and the others still hear."""

    def __init__(self) -> None:
        self.mailboxes: list[Callable[[frozenset[int]], None]] = []
        self.queue: list[Callable[[], None]] = []
        self.accounts: list[Callable[[int], None]] = []
        self.metadata: list[Callable[[MetadataChange], None]] = []

    def mailboxes_changed(self, mailbox_ids: frozenset[int]) -> None:
        if mailbox_ids:
            _call(self.mailboxes, mailbox_ids)

    def queued(self) -> None:
        _call(self.queue)

    def account_changed(self, account_id: int) -> None:
        _call(self.accounts, account_id)

    def metadata_changed(self, change: MetadataChange) -> None:
        _call(self.metadata, change)


def _call(listeners: list[Callable[..., None]], *args: object) -> None:
    for listener in listeners:
        try:
            listener(*args)
        except Exception:
            log.exception("event=store.listener_failed")


def format_flags(flags: Iterable[str]) -> str:
    """Flags as the `flags` columns hold them: one space between, sorted (case-insensitively)."""
    return " ".join(sorted(set(flags), key=str.lower))


def parse_flags(text: str) -> frozenset[str]:
    return frozenset(text.split())


def next_uidvalidity(db: Any) -> int:
    """Inside a write transaction: the UIDVALIDITY of a new mailbox. RFC 9051 §2.3.1.1: a re-created
    mailbox must not reuse an old one; a counter that is at least the clock guarantees that even for two
    creations in one second."""
    row = db.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
    value = max(int(time.time()), int(row[0]) + 1 if row else 0)
    db.execute("INSERT INTO meta (key, value) VALUES ('uidvalidity', ?)"
               " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(value),))  # fmt: skip
    return value


def drop_unreferenced_blobs(db: Any, blob_ids: list[str]) -> None:
    """Inside a write transaction: forget bodies no mailbox, no held tombstone and no queue entry points to
    any more (their bytes become dead space in their segments until compaction)."""
    db.executemany(
        "DELETE FROM blobs WHERE id = ? AND NOT EXISTS (SELECT 1 FROM messages WHERE blob_id = ?)"
        " AND NOT EXISTS (SELECT 1 FROM expunged WHERE blob_id = ?)"
        " AND NOT EXISTS (SELECT 1 FROM queue WHERE id = ?)",
        [(b, b, b, b) for b in blob_ids],
    )


def count_usage(db: Any) -> None:
    """Inside a write transaction: set every mailbox's usage counters from its messages. Run once, when
    the counters are added to a database that has mail; from then on every change keeps them."""
    db.execute(
        "UPDATE mailboxes SET used_bytes = (SELECT COALESCE(SUM(size), 0) FROM messages"
        " WHERE mailbox_id = mailboxes.id), used_messages = (SELECT COUNT(*) FROM messages"
        " WHERE mailbox_id = mailboxes.id)"
    )


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a database of an earlier schema version up to this one (inside a write transaction)."""
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column, kind in columns.items():
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                if column == "first_recent_uid":  # an upgrade makes no message that was there \Recent
                    db.execute("UPDATE mailboxes SET first_recent_uid = uidnext")
    have = {row[1] for row in db.execute("PRAGMA table_info(mailboxes)")}
    if not set(_ADDED_USAGE_COLUMNS) <= have:
        for column, kind in _ADDED_USAGE_COLUMNS.items():
            if column not in have:
                db.execute(f"ALTER TABLE mailboxes ADD COLUMN {column} {kind}")
        count_usage(db)
    # Mailboxes made before OBJECTID get their MAILBOXID now: it must exist for every mailbox.
    missing = [row[0] for row in db.execute("SELECT id FROM mailboxes WHERE objectid IS NULL")]
    db.executemany("UPDATE mailboxes SET objectid = ? WHERE id = ?", [(new_mailbox_objectid(), i) for i in missing])
    for statement in (_ADDED_TABLES + _ADDED_INDEXES).split(";"):
        if statement.strip():
            db.execute(statement)


class Connection(sqlite3.Connection):
    """A connection that remembers its `PRAGMA synchronous` setting (FULL unless relaxed)."""

    durable = True


class Transaction:
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

    def __init__(self, db: Connection, lock: threading.Lock, durable: bool = True) -> None:
        self.db = db
        self.lock = lock
        self.durable = durable

    def __enter__(self) -> Connection:
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

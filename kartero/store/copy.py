"""`kartero db copy --from DATA_DIR`: an embedded store (SQLite + segments) into PostgreSQL.

Everything a client or the queue depends on keeps its identity: accounts keep their password hashes,
SCRAM keys and quotas, mailboxes their UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and MAILBOXID, messages their UIDs,
flags and MODSEQs, and expunged UIDs their tombstones, so IMAP clients (QRESYNC included) carry on with
what they cached instead of downloading everything again.

Resumable and idempotent without a journal of its own: everything is matched by a natural key (accounts
by address, mailboxes by account and name, blobs by id, messages and tombstones by mailbox and UID,
queue entries by id, import ledger rows by their key) and inserted only where the target lacks it, in
transactions of bounded size (an account's folders; a batch of messages, queue entries or ledger rows).
A run stopped anywhere leaves whole batches behind, and the next run copies what is missing. Bodies go
through the SQLite store's read path in CHUNK pieces, so neither a large message nor a large store is
ever held in memory.

Each transaction takes the cluster's write lock (pg_db.WRITE_LOCK), as every Kartero writer does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from kartero.store.interface import StoreError
from kartero.store.pg_db import PgConnection, PgTransaction
from kartero.store.postgres import CHUNK
from kartero.store.sqlite import SQLiteStore

__all__ = ["CopyConflict", "CopyCounts", "copy_store", "work_total"]

# One transaction holds at most this many messages or queue entries, and this many octets of new bodies
# (a single larger message gets a transaction of its own): what an interrupted run loses, and how long
# the cluster's write lock is held at a time.
BATCH_ROWS = 500
BATCH_BYTES = 32 << 20
# Chunk rows of small bodies are sent together (one executemany) up to this many octets.
FLUSH_BYTES = 8 << 20

_BLOB_COLUMNS = (
    "id, size, envelope, created_at, imap_envelope, imap_body, imap_bodystructure, parts, subject, from_text,"
    " to_text, cc_text, bcc_text, message_id, sent_date, sent_day, sort_subject, sort_from, sort_to, sort_cc,"
    " preview"
)
_RECIPIENT_COLUMNS = (
    "queue_id, address, domain, notify, orcpt, state, attempts, next_attempt_at, last_reply, updated_at, status,"
    " remote_mta, reported"
)


class CopyConflict(Exception):
    """The target holds something of the same name that is not the source's: copying would merge two
    different accounts or mailboxes (and make clients see another mailbox under a known UIDVALIDITY)."""


@dataclass
class CopyCounts:
    """What a run copied, and how many accounts, mailboxes, messages and queue entries were there already."""

    accounts: int = 0
    aliases: int = 0
    mailboxes: int = 0
    messages: int = 0
    bytes: int = 0
    queued: int = 0
    skipped: int = 0
    scripts: int = 0

    def summary(self) -> str:
        return (
            f"copied {self.accounts} accounts, {self.aliases} aliases, {self.mailboxes} mailboxes, "
            f"{self.messages} messages ({self.bytes / 1e6:.1f} MB), {self.queued} queued"
            + (f", {self.scripts} Sieve scripts; " if self.scripts else "; ")
            + f"skipped {self.skipped} already there"
        )


def work_total(source: SQLiteStore) -> int:
    """The steps `copy_store` reports to its progress callback: one per message and per queue entry."""
    db = source.database.db()
    messages = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    queued = db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]
    return int(messages) + int(queued)


def copy_store(source: SQLiteStore, url: str, progress: Callable[[int], None] = lambda n: None) -> CopyCounts:
    """Copy what the PostgreSQL database at `url` (at the current schema) lacks of `source`, which nothing
    may change meanwhile (its server stopped); `progress(n)` after every n messages or queue entries.
    Raises CopyConflict before writing anything when the target holds a different account or mailbox
    of the same name; psycopg.Error, OSError or StoreError when the database or the source fails midway
    (run it again to continue)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return _Copy(source, PgConnection(conn), progress).run()


class _Copy:
    """One run: the source read through its own connection, the target written through `target`."""

    def __init__(self, source: SQLiteStore, target: PgConnection, progress: Callable[[int], None]) -> None:
        self.source = source
        self.src = source.database.db()
        self.target = target
        self.progress = progress
        self.counts = CopyCounts()
        self._lock = threading.Lock()  # PgTransaction's process lock; this run is its only user
        self.mailboxes: dict[int, int] = {}  # source mailbox id -> target mailbox id

    def write(self) -> PgTransaction:
        return PgTransaction(self.target, self._lock)

    def run(self) -> CopyCounts:
        self.check_conflicts()
        for account in self.src.execute("SELECT id FROM accounts ORDER BY id").fetchall():
            self.copy_account(int(account[0]))
        self.copy_aliases()
        self.copy_sieve_scripts()
        self.copy_counters()
        for mailbox_id, target_id in sorted(self.mailboxes.items()):
            self.copy_messages(mailbox_id, target_id)
            self.copy_tombstones(mailbox_id, target_id)
        self.copy_queue()
        return self.counts

    # -- accounts, mailboxes, subscriptions, METADATA, aliases ------------------------------------------

    def check_conflicts(self) -> None:
        """Before anything is written: an account of the same address must be the same account (made at
        the same time), a mailbox of the same name the same mailbox (same UIDVALIDITY)."""
        for account_id, address, created_at in self.src.execute(
            "SELECT id, address, created_at FROM accounts ORDER BY id"
        ).fetchall():
            there = self.target.execute("SELECT id, created_at FROM accounts WHERE address = ?", (address,)).fetchone()
            if there is None:
                continue
            if int(there[1]) != int(created_at):
                raise CopyConflict(
                    f"the database already has a different account {address} (created at {_when(there[1])}, "
                    f"the embedded store's at {_when(created_at)}): delete one of them first"
                )
            for name, uidvalidity in self.src.execute(
                "SELECT name, uidvalidity FROM mailboxes WHERE account_id = ? ORDER BY id", (account_id,)
            ).fetchall():
                _check_mailbox(self.target, int(there[0]), address, name, int(uidvalidity))

    def copy_account(self, account_id: int) -> None:
        """One account with its mailboxes (their counters), subscriptions and METADATA, in one transaction."""
        address, password_hash, created_at, scram, quota, warned, admin = self.src.execute(
            "SELECT address, password_hash, created_at, scram, quota_bytes, quota_warned, admin FROM accounts"
            " WHERE id = ?",
            (account_id,),
        ).fetchone()
        mailboxes = self.src.execute(
            "SELECT id, name, special_use, uidvalidity, uidnext, highestmodseq, first_recent_uid, objectid"
            " FROM mailboxes WHERE account_id = ? ORDER BY id",
            (account_id,),
        ).fetchall()
        subscriptions = self.src.execute(
            "SELECT name FROM subscriptions WHERE account_id = ?", (account_id,)
        ).fetchall()
        metadata = self.src.execute(
            "SELECT mailbox_id, name, value FROM metadata WHERE account_id = ?", (account_id,)
        ).fetchall()
        with self.write() as db:
            row: Any = db.execute(
                "INSERT INTO accounts (address, password_hash, created_at, scram, quota_bytes, quota_warned, admin)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (address) DO NOTHING RETURNING id",
                (address, password_hash, created_at, scram, quota, warned, admin),
            ).fetchone()
            if row is None:
                row = db.execute("SELECT id, created_at FROM accounts WHERE address = ?", (address,)).fetchone()
                if int(row[1]) != int(created_at):  # made since check_conflicts looked
                    raise CopyConflict(f"the database already has a different account {address}")
                self.counts.skipped += 1
            else:
                self.counts.accounts += 1
            target_account = int(row[0])
            for mailbox_id, name, special_use, uidvalidity, uidnext, highestmodseq, first_recent, objectid in mailboxes:
                there = _check_mailbox(db, target_account, address, name, int(uidvalidity))
                if there is None:
                    inserted: Any = db.execute(
                        "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity, uidnext, highestmodseq,"
                        " first_recent_uid, objectid) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                        (target_account, name, special_use, uidvalidity, uidnext, highestmodseq, first_recent,
                         objectid),
                    ).fetchone()  # fmt: skip
                    there = int(inserted[0])
                    self.counts.mailboxes += 1
                else:
                    # The same mailbox from an earlier run: its counters never go back.
                    db.execute(
                        "UPDATE mailboxes SET uidnext = GREATEST(uidnext, ?), highestmodseq = GREATEST(highestmodseq,"
                        " ?), first_recent_uid = GREATEST(first_recent_uid, ?) WHERE id = ?",
                        (uidnext, highestmodseq, first_recent, there),
                    )
                    self.counts.skipped += 1
                self.mailboxes[int(mailbox_id)] = int(there)
            db.executemany(
                "INSERT INTO subscriptions (account_id, name) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(target_account, s[0]) for s in subscriptions],
            )
            db.executemany(
                "INSERT INTO metadata (account_id, mailbox_id, name, value) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(target_account, None if m[0] is None else self.mailboxes[int(m[0])], m[1], m[2]) for m in metadata],
            )
        self.copy_import_ledger(account_id, target_account)

    def copy_import_ledger(self, account_id: int, target_account: int) -> None:
        """What `kartero import` stored into the account (store/imports_sql.py), so that an import run
        again after the move still skips it; by key order, BATCH_ROWS rows a transaction."""
        last: tuple[str, str, str, int] = ("", "", "", 0)
        while rows := self.src.execute(
            "SELECT source, folder, digest, occurrence, blob_id, done, run FROM import_ledger WHERE account_id = ?"
            " AND (source, folder, digest, occurrence) > (?, ?, ?, ?) ORDER BY source, folder, digest, occurrence"
            " LIMIT ?",
            (account_id, *last, BATCH_ROWS),
        ).fetchall():
            with self.write() as db:
                db.executemany(
                    "INSERT INTO import_ledger (account_id, source, folder, digest, occurrence, blob_id, done, run)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [(target_account, *row) for row in rows],
                )
            last = (rows[-1][0], rows[-1][1], rows[-1][2], int(rows[-1][3]))

    def copy_aliases(self) -> None:
        last: tuple[str, str] = ("", "")
        while rows := self.src.execute(
            "SELECT source, destination FROM aliases WHERE (source, destination) > (?, ?)"
            " ORDER BY source, destination LIMIT ?",
            (*last, BATCH_ROWS),
        ).fetchall():
            with self.write() as db:
                for source, destination in rows:
                    cur = db.execute(
                        "INSERT INTO aliases (source, destination) VALUES (?, ?) ON CONFLICT DO NOTHING",
                        (source, destination),
                    )
                    self.counts.aliases += cur.rowcount
            last = (rows[-1][0], rows[-1][1])

    def copy_sieve_scripts(self) -> None:
        """Every Sieve script (the globals too) a script of that owner and name in the target lacks, with
        which one is active; one transaction (scripts are few and small: ManageSieve's limits)."""
        scripts = self.src.execute(
            "SELECT a.address, s.name, s.script, s.active, s.updated_at FROM sieve_scripts s"
            " LEFT JOIN accounts a ON a.id = s.account_id ORDER BY s.id"
        ).fetchall()
        if not scripts:
            return
        with self.write() as db:
            copied = 0
            for address, name, script, active, updated_at in scripts:
                account_id = None
                if address is not None:
                    row: Any = db.execute("SELECT id FROM accounts WHERE address = ?", (address,)).fetchone()
                    account_id = int(row[0])
                    # Never a second active script: one the target has already stays the active one.
                    if active and db.execute("SELECT 1 FROM sieve_scripts WHERE account_id = ? AND active = 1",
                                             (account_id,)).fetchone():  # fmt: skip
                        active = 0
                copied += db.execute(
                    "INSERT INTO sieve_scripts (account_id, name, script, active, updated_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (account_id, name, script, active, updated_at),
                ).rowcount
            if copied:
                db.execute("UPDATE meta SET value = CAST(value AS BIGINT) + 1 WHERE key = 'sieve_version'")
            self.counts.scripts += copied

    def copy_counters(self) -> None:
        """The UIDVALIDITY counter: at least the source's and above every copied mailbox's, so a mailbox made
        later never gets a UIDVALIDITY a client saw before (RFC 9051 §2.3.1.1); and a new directory
        version, so a node already running reloads the accounts and aliases; the server's own secrets."""
        row = self.src.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        highest = self.src.execute("SELECT MAX(uidvalidity) FROM mailboxes").fetchone()[0]
        counter = max(int(row[0]) if row else 0, int(highest or 0))
        with self.write() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('uidvalidity', ?) ON CONFLICT (key) DO UPDATE"
                " SET value = GREATEST(CAST(meta.value AS BIGINT), CAST(excluded.value AS BIGINT))",
                (str(counter),),
            )
            if self.counts.accounts or self.counts.aliases:
                db.execute("UPDATE meta SET value = CAST(value AS BIGINT) + 1 WHERE key = 'directory_version'")
            # The SRS secret the embedded server made (no [srs] secret configured): bounces to addresses
            # it signed stay valid at the cluster; a database that already has one keeps its own.
            for key, value in self.src.execute("SELECT key, value FROM meta WHERE key LIKE 'secret:%'"):
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, value))

    # -- messages, tombstones, bodies -------------------------------------------------------------------

    def copy_messages(self, mailbox_id: int, target_id: int) -> None:
        """The mailbox's messages by UID, a bounded batch a transaction; a UID the target has (as a
        message or as a tombstone: expunged there) is skipped, its body never read."""
        for batch in self._batches(
            "SELECT uid, blob_id, size, internal_date, flags, modseq, saved_at FROM messages"
            " WHERE mailbox_id = ? AND uid > ? ORDER BY uid LIMIT ?",
            mailbox_id,
        ):
            with self.write() as db:
                uids = [r[0] for r in batch]
                there = {
                    int(r[0])
                    for r in db.execute(
                        "SELECT uid FROM messages WHERE mailbox_id = ? AND uid = ANY(?)"
                        " UNION ALL SELECT uid FROM expunged WHERE mailbox_id = ? AND uid = ANY(?)",
                        (target_id, uids, target_id, uids),
                    )
                }
                missing = [r for r in batch if int(r[0]) not in there]
                self.counts.skipped += len(batch) - len(missing)
                self.copy_blobs(db, [r[1] for r in missing])
                db.executemany(
                    "INSERT INTO messages (mailbox_id, uid, blob_id, size, internal_date, flags, modseq, saved_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [(target_id, *r) for r in missing],
                )
                db.execute("UPDATE mailboxes SET used_bytes = used_bytes + ?, used_messages = used_messages + ?"
                           " WHERE id = ?", (sum(int(r[2]) for r in missing), len(missing), target_id))  # fmt: skip
                self.counts.messages += len(missing)
                self.counts.bytes += sum(int(r[2]) for r in missing)
            self.progress(len(batch))

    def _batches(self, select: str, mailbox_id: int) -> Iterator[list[Any]]:
        """Rows of one mailbox in UID order (`select` takes mailbox id, last UID, limit), each batch at most
        BATCH_ROWS rows and BATCH_BYTES octets (column 2 is the size) unless one message is larger."""
        last = 0
        while rows := self.src.execute(select, (mailbox_id, last, BATCH_ROWS)).fetchall():
            batch: list[Any] = []
            total = 0
            for row in rows:
                if batch and total + int(row[2]) > BATCH_BYTES:
                    yield batch
                    batch, total = [], 0
                batch.append(row)
                total += int(row[2])
            yield batch
            last = int(rows[-1][0])

    def copy_tombstones(self, mailbox_id: int, target_id: int) -> None:
        """Expunged UIDs with their MODSEQ, so QRESYNC's VANISHED (RFC 7162 §3.2.10) still reports them.
        Only the tombstone: the body a session's hold kept is no one's once the server has stopped."""
        last = 0
        while rows := self.src.execute(
            "SELECT uid, modseq FROM expunged WHERE mailbox_id = ? AND uid > ? ORDER BY uid LIMIT ?",
            (mailbox_id, last, BATCH_ROWS * 10),
        ).fetchall():
            with self.write() as db:
                db.executemany(
                    "INSERT INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    [(target_id, r[0], r[1]) for r in rows],
                )
            last = int(rows[-1][0])

    def copy_blobs(self, db: PgConnection, blob_ids: Sequence[str]) -> None:
        """The blobs (index columns, envelope and bytes) the target lacks, inside the caller's transaction."""
        wanted = list(dict.fromkeys(blob_ids))
        if not wanted:
            return
        there = {r[0] for r in db.execute("SELECT id FROM blobs WHERE id = ANY(?)", (wanted,))}
        chunks = _ChunkWriter(db)
        for blob_id in wanted:
            if blob_id in there:
                continue
            row = self.src.execute(f"SELECT {_BLOB_COLUMNS} FROM blobs WHERE id = ?", (blob_id,)).fetchone()
            if row is None:
                raise StoreError(f"the embedded store lacks message {blob_id} that a mailbox or the queue names")
            db.execute(f"INSERT INTO blobs ({_BLOB_COLUMNS}) VALUES ({', '.join('?' * len(row))})", row)
            size = int(row[1])
            reader = self.source.mail.open_message(blob_id)
            try:
                for seq, start in enumerate(range(0, size, CHUNK)):
                    chunks.add(blob_id, seq, reader.read(start, CHUNK))
            finally:
                reader.close()
        chunks.flush()

    # -- the queue --------------------------------------------------------------------------------------

    def copy_queue(self) -> None:
        """Queue entries with their bodies and recipients (states, attempts, next attempt), by id."""
        last = ""
        while rows := self.src.execute(
            "SELECT q.id, q.sender, q.ret, q.envid, q.smtputf8, q.body_8bit, q.created_at, q.expires_at,"
            " q.delay_notified, b.size FROM queue q JOIN blobs b ON b.id = q.id WHERE q.id > ? ORDER BY q.id LIMIT ?",
            (last, BATCH_ROWS),
        ).fetchall():
            batch: list[Any] = []
            total = 0
            for row in rows:
                if batch and total + int(row[9]) > BATCH_BYTES:
                    self._copy_queue_batch(batch)
                    batch, total = [], 0
                batch.append(row)
                total += int(row[9])
            self._copy_queue_batch(batch)
            last = rows[-1][0]

    def _copy_queue_batch(self, batch: list[Any]) -> None:
        with self.write() as db:
            ids = [r[0] for r in batch]
            there = {r[0] for r in db.execute("SELECT id FROM queue WHERE id = ANY(?)", (ids,))}
            missing = [r for r in batch if r[0] not in there]
            self.counts.skipped += len(batch) - len(missing)
            self.copy_blobs(db, [r[0] for r in missing])
            db.executemany(
                "INSERT INTO queue (id, sender, ret, envid, smtputf8, body_8bit, created_at, expires_at,"
                " delay_notified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [r[:9] for r in missing],
            )
            for entry in missing:
                recipients = self.src.execute(
                    f"SELECT {_RECIPIENT_COLUMNS} FROM queue_recipients WHERE queue_id = ? ORDER BY id", (entry[0],)
                ).fetchall()
                db.executemany(
                    f"INSERT INTO queue_recipients ({_RECIPIENT_COLUMNS}) VALUES ({', '.join('?' * 13)})", recipients
                )
            self.counts.queued += len(missing)
        self.progress(len(batch))


class _ChunkWriter:
    """blob_chunks rows sent in groups of about FLUSH_BYTES: one round trip for many small bodies, and
    never more than that (plus one chunk) in memory for a large one."""

    def __init__(self, db: PgConnection) -> None:
        self._db = db
        self._rows: list[tuple[str, int, bytes]] = []
        self._bytes = 0

    def add(self, blob_id: str, seq: int, data: bytes) -> None:
        self._rows.append((blob_id, seq, data))
        self._bytes += len(data)
        if self._bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self._db.executemany("INSERT INTO blob_chunks (blob_id, seq, data) VALUES (?, ?, ?)", self._rows)
        self._rows, self._bytes = [], 0


def _check_mailbox(db: PgConnection, account_id: int, address: str, name: str, uidvalidity: int) -> int | None:
    """The target's id of the account's mailbox `name`, or None; CopyConflict when it has another
    UIDVALIDITY (another mailbox: its UIDs name other messages)."""
    row = db.execute(
        "SELECT id, uidvalidity FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, name)
    ).fetchone()
    if row is None:
        return None
    if int(row[1]) != uidvalidity:
        raise CopyConflict(
            f"the database already has a different mailbox {name!r} of {address} (UIDVALIDITY {row[1]}, the "
            f"embedded store's is {uidvalidity}): delete one of them first"
        )
    return int(row[0])


def _when(timestamp: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(timestamp)))

"""The PostgreSQL store: everything a cluster of Kartero nodes shares, bodies included.

The store classes are the SQLite store's (they speak one SQL to both, see `sql.py`) over a `PgDatabase`;
what differs is where the bytes go. A message's bytes are rows of `blob_chunks` (CHUNK octets each),
written once for all its local recipients in the same transaction as its metadata, so a `250` means both
are in the database's WAL (synchronous_commit on). The committer still batches concurrent deliveries into
one transaction per batch (group commit), per node.

What a node keeps to itself: its spool folder (large messages being received) and its expunge holds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from kartero.mail.trace import TraceEvent
from kartero.store.abuse_pg import PgAbuseStore
from kartero.store.accounts_sql import SQLiteAccounts
from kartero.store.commit import Committer
from kartero.store.interface import QueueItem, QueueState, RecipientUpdate, StoreError, Unreported
from kartero.store.mailboxes import SQLiteMail
from kartero.store.pg_db import SCHEMA_VERSION, PgDatabase
from kartero.store.queue_sql import OPEN_STATES, SQLiteQueue
from kartero.store.sieve_sql import SqlSieve
from kartero.store.spool import WINDOW, FileBuffer, SpoolBody, clear_spool
from kartero.store.sql import SqlConnection
from kartero.store.trace_sql import SqlTrace

__all__ = ["CHUNK", "SCHEMA_VERSION", "PgStore"]

log = logging.getLogger("kartero.store")

# Octets per row of blob_chunks: big enough that a 25 MB message is 25 rows, small enough that a FETCH
# of a part reads little more than it needs.
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A Kartero process of the cluster as `kartero cluster status` shows it."""

    name: str
    address: str
    version: str
    pid: int
    started_at: int
    heartbeat_at: int
    alive: bool  # heard from within `[store] lease`
    delivering: tuple[str, ...]  # the domain of each recipient it holds a lease on


class PgCommitter(Committer):
    """The group commit with the bodies in the transaction instead of segment files."""

    insert_errors = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError, ValueError)
    backend = "postgresql"

    def __init__(self, database: PgDatabase, root: Path) -> None:
        super().__init__(database, root, None)

    def place(self, bodies: Sequence[bytes | SpoolBody]) -> list[tuple[int, int]]:
        return [(0, 0)] * len(bodies)

    def store_body(self, db: SqlConnection, blob_id: str, body: bytes | SpoolBody) -> None:
        if isinstance(body, bytes):
            db.executemany(
                "INSERT INTO blob_chunks (blob_id, seq, data) VALUES (?, ?, ?)",
                [(blob_id, n, body[start : start + CHUNK]) for n, start in enumerate(range(0, len(body), CHUNK))],
            )
            return
        with open(body.path, "rb") as file:  # a large message: one chunk in memory at a time
            seq = 0
            while piece := file.read(CHUNK):
                db.execute("INSERT INTO blob_chunks (blob_id, seq, data) VALUES (?, ?, ?)", (blob_id, seq, piece))
                seq += 1

    def recover(self) -> int:
        """Only this node's spool folder: the database has nothing half-written (one transaction)."""
        clear_spool(self._root)
        return 0

    def _compact(self, db: SqlConnection) -> None:
        """PostgreSQL reclaims the rows of deleted bodies itself (autovacuum)."""


class PgAccounts(SQLiteAccounts):
    """Accounts and aliases; the directory version comes from the change feed when it runs."""

    def __init__(self, database: PgDatabase, committer: Committer) -> None:
        super().__init__(database, committer)
        self._pg = database

    def directory_version(self) -> int:
        version = self._pg.directory_version()
        return version if version is not None else super().directory_version()

    def stored_directory_version(self) -> int:
        """The version in the database now (a round trip: never on the event loop)."""
        return super().directory_version()


class PgMail(SQLiteMail):
    """Mailboxes and messages with the bodies read from blob_chunks."""

    def read_message(self, blob_id: str) -> bytes:
        db = self._db()
        size = db.execute("SELECT size FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        if size is None:
            raise StoreError(f"no message {blob_id}")
        rows = db.execute("SELECT data FROM blob_chunks WHERE blob_id = ? ORDER BY seq", (blob_id,))
        return b"".join(bytes(r[0]) for r in rows)

    def open_message(self, blob_id: str) -> ChunkReader:  # type: ignore[override]
        # The size and, for a message of one chunk (most mail), its bytes in the same round trip: a
        # `FETCH 1:* BODY.PEEK[]` opens and reads every message, and each round trip from a worker thread
        # also waits for the GIL back (bench/README.md, issue 11). A larger message's chunks are read
        # only when a read covers them.
        row = self._db().execute(
            "SELECT b.size, c.data FROM blobs b LEFT JOIN blob_chunks c ON c.blob_id = b.id AND c.seq = 0"
            " AND b.size <= ? WHERE b.id = ?",
            (CHUNK, blob_id),
        ).fetchone()
        if row is None:
            raise StoreError(f"no message {blob_id}")
        reader = ChunkReader(self._db, blob_id, int(row[0]))
        if row[1] is not None:
            reader.keep(0, bytes(row[1]))
        return reader


class ChunkReader:
    """A message read piece by piece (MessageReader): FETCH of a part of a large message reads only the
    chunks it covers, and keeps the last one for the next read."""

    def __init__(self, db: Any, blob_id: str, size: int) -> None:
        self._db = db
        self.blob_id = blob_id
        self.size = size
        self._seq = -1
        self._chunk = b""

    def read(self, start: int, length: int) -> bytes:
        end = min(start + length, self.size)
        pieces: list[bytes] = []
        while start < end:
            seq, offset = divmod(start, CHUNK)
            if seq != self._seq:
                row = self._db().execute(
                    "SELECT data FROM blob_chunks WHERE blob_id = ? AND seq = ?", (self.blob_id, seq)
                ).fetchone()
                if row is None:
                    raise StoreError(f"message {self.blob_id} is gone")
                self._seq, self._chunk = seq, bytes(row[0])
            piece = self._chunk[offset : offset + min(end - start, WINDOW * 64)]
            if not piece:
                raise StoreError(f"message {self.blob_id} is shorter than its size")
            pieces.append(piece)
            start += len(piece)
        return b"".join(pieces)

    def keep(self, seq: int, chunk: bytes) -> None:
        """Chunk `seq`, read already (with the size, by `PgMail.open_message`)."""
        self._seq, self._chunk = seq, chunk

    def view(self) -> ChunkBuffer:
        """The message as a MessageData for the MIME code (SEARCH BODY/TEXT): read in bounded windows."""
        return ChunkBuffer(self)

    def close(self) -> None:
        self._chunk = b""


class ChunkBuffer(FileBuffer):
    """FileBuffer's bounded-window reads, over a ChunkReader instead of a file."""

    def __init__(self, reader: ChunkReader) -> None:
        super().__init__(-1, 0, reader.size)
        self._reader = reader

    def _read(self, start: int, end: int) -> bytes:
        return self._reader.read(start, end - start) if end > start else b""


class PgQueue(SQLiteQueue):
    """The queue shared by every node: a node takes recipients by leasing them (`FOR UPDATE SKIP
    LOCKED`, then `lease_until`), so each is delivered by one node at a time, and a dead node's leases run
    out after `lease_s`, when another node takes them. A failure notice is leased the same way, so one
    node sends it."""

    def __init__(self, database: PgDatabase, lease_s: float) -> None:
        super().__init__(database)
        self.owner = database.origin
        self.lease_s = lease_s

    def take_over_node(self, node: str) -> int:
        """At start: what earlier processes of this node name still lease (a crash, a kill) is free
        again at once instead of after the lease, as this process is that node now (a node name is one
        running process: docs/cluster.md). Returns how many recipients that frees."""
        with self._write(durable=False) as db:
            freed = db.execute(
                "UPDATE queue_recipients SET lease_until = 0, lease_node = NULL"
                " WHERE split_part(lease_node, ':', 1) = ? AND lease_node <> ?", (node, self.owner)
            ).rowcount  # fmt: skip
            db.execute("DELETE FROM nodes WHERE name = ? AND origin <> ?", (node, self.owner))
        return int(freed)

    def due_recipients(self, now: int, limit: int, exclude: frozenset[int] = frozenset()) -> list[QueueItem]:
        until = now + math.ceil(self.lease_s)
        with self._write() as db:
            claimed = [r[0] for r in db.execute(
                "WITH due AS (SELECT id FROM queue_recipients WHERE state IN (?, ?) AND next_attempt_at <= ?"
                " AND (lease_until < ? OR lease_node = ?) AND NOT (id = ANY(?))"
                " ORDER BY next_attempt_at, id LIMIT ? FOR UPDATE SKIP LOCKED)"
                " UPDATE queue_recipients r SET lease_node = ?, lease_until = ? FROM due WHERE r.id = due.id"
                " RETURNING r.id",
                (*OPEN_STATES, now, now, self.owner, list(exclude), limit, self.owner, until),
            )]  # fmt: skip
        if not claimed:
            return []
        items = self._items("r.id = ANY(?)", (claimed,))
        return sorted(items, key=lambda item: item.recipient_id)[:limit]

    def renew_leases(self, recipient_ids: Sequence[int]) -> None:
        if recipient_ids:
            with self._write(durable=False) as db:  # a lost renewal costs at most a repeat, never mail
                db.execute("UPDATE queue_recipients SET lease_until = ? WHERE id = ANY(?) AND lease_node = ?",
                           (math.ceil(time.time() + self.lease_s), list(recipient_ids), self.owner))  # fmt: skip

    def update_recipients(self, updates: Sequence[RecipientUpdate], trace: Sequence[TraceEvent] = ()) -> None:
        super().update_recipients(updates, trace)
        self.release_leases([u.recipient_id for u in updates])

    def release_leases(self, recipient_ids: Sequence[int] | None = None) -> None:
        """Give leases back (after the outcome is recorded; all of this process's at shutdown)."""
        with self._write(durable=False) as db:
            if recipient_ids is None:
                db.execute("UPDATE queue_recipients SET lease_until = 0, lease_node = NULL WHERE lease_node = ?",
                           (self.owner,))  # fmt: skip
            elif recipient_ids:
                db.execute("UPDATE queue_recipients SET lease_until = 0, lease_node = NULL"
                           " WHERE id = ANY(?) AND lease_node = ?", (list(recipient_ids), self.owner))  # fmt: skip

    def unreported_failures(self, queue_id: str) -> Unreported | None:
        now = int(time.time())
        with self._write() as db:
            claimed = db.execute(
                "UPDATE queue_recipients SET lease_node = ?, lease_until = ? WHERE queue_id = ? AND state = ?"
                " AND reported = 0 AND (lease_until < ? OR lease_node = ?) RETURNING id",
                (self.owner, now + math.ceil(self.lease_s), queue_id, QueueState.FAILED.value, now, self.owner),
            ).fetchall()
        if not claimed:
            return None  # none left, or another node is sending this notice
        found = super().unreported_failures(queue_id)
        if found is None:
            return None
        ids = {r[0] for r in claimed}
        return dataclasses.replace(found, recipients=tuple(r for r in found.recipients if r.recipient_id in ids))


class PgStore:
    """Store on PostgreSQL (`url`); `root` is this node's own folder (the spool of large messages)."""

    def __init__(self, url: str, root: Path, *, node: str = "", lease_s: float = 60.0, check: bool = True) -> None:
        self.root = root
        self.lease_s = lease_s
        self.node = node or socket.gethostname()
        root.mkdir(parents=True, exist_ok=True)
        self.database = PgDatabase(url, node=node, check=check)
        self.committer = PgCommitter(self.database, root)
        self.accounts = PgAccounts(self.database, self.committer)
        self.mail = PgMail(self.database, self.committer)
        self.queue = PgQueue(self.database, lease_s)
        self.sieve = SqlSieve(self.database)
        self.trace = SqlTrace(self.database)
        self.abuse = PgAbuseStore(self.database)

    def recover(self) -> int:
        return self.committer.recover()

    def heartbeat(self, name: str, address: str, version: str, started_at: int) -> None:
        """This process is alive (`kartero cluster status`); rows silent for a day are removed."""
        now = int(time.time())
        with self.database.write(durable=False) as db:
            db.execute(
                "INSERT INTO nodes (origin, name, address, version, pid, started_at, heartbeat_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (self.database.origin, name, address, version, os.getpid(), started_at, now),
            )
            db.execute("DELETE FROM nodes WHERE heartbeat_at < ?", (now - 86400,))

    def size_bytes(self) -> int:
        """What the database takes on disk (every node's mail: the cluster's store)."""
        row = self.database.db().execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row is not None else 0

    def dkim_keys(self) -> list[tuple[str, str, str, bytes, float]]:
        """Every DKIM key: (domain, selector, algorithm, private key, created)."""
        rows = self.database.db().execute(
            "SELECT domain, selector, algorithm, private, created_at FROM dkim_keys ORDER BY domain, selector"
        )
        return [(r[0], r[1], r[2], bytes(r[3]), float(r[4])) for r in rows]

    def put_dkim_key(self, domain: str, selector: str, algorithm: str, private: bytes, created: float, *,
                     replace: bool = False) -> bool:  # fmt: skip
        """Store a key; False when the selector has one already (and not `replace`, or of another
        algorithm: one key per selector)."""
        with self.database.write() as db:
            old = db.execute("SELECT algorithm FROM dkim_keys WHERE domain = ? AND selector = ?",
                             (domain, selector)).fetchone()  # fmt: skip
            if old is not None and (not replace or old[0] != algorithm):
                return False
            db.execute(
                "INSERT INTO dkim_keys (domain, selector, algorithm, private, created_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (domain, selector) DO UPDATE SET private = excluded.private,"
                " created_at = excluded.created_at",
                (domain, selector, algorithm, private, created),
            )
        return True

    def dkim_keys_stamp(self) -> object:
        """Changes at every key change the feed hears of (None without a feed)."""
        feed = self.database.feed
        return None if feed is None else feed.keys_version

    def nodes(self) -> list[NodeInfo]:
        """Every process that heartbeats (or did within a day), with what it is delivering now."""
        db = self.database.db()
        now = int(time.time())
        leased: dict[str, list[str]] = {}
        for origin, domain in db.execute(
            "SELECT lease_node, domain FROM queue_recipients WHERE lease_until >= ? AND lease_node IS NOT NULL"
            " AND state IN (?, ?) ORDER BY id", (now, *OPEN_STATES)
        ):  # fmt: skip
            leased.setdefault(origin, []).append(domain)
        rows = db.execute("SELECT origin, name, address, version, pid, started_at, heartbeat_at FROM nodes"
                          " ORDER BY name, started_at").fetchall()  # fmt: skip
        return [NodeInfo(r[1], r[2], r[3], int(r[4]), int(r[5]), int(r[6]),
                         now - int(r[6]) <= self.lease_s, tuple(leased.get(r[0], ()))) for r in rows]  # fmt: skip

    def start(self) -> None:
        """The committer, and the change feed: this process hears what other nodes and the CLI commit;
        what an earlier process of this node left leased is free again."""
        self.database.start_feed()
        self.committer.start()
        freed = self.queue.take_over_node(self.node)
        if freed:
            log.info("event=store.leases_taken_over node=%s recipients=%d", self.node, freed)

    def compact(self) -> None:
        """Nothing to do: PostgreSQL reclaims space itself."""

    def close(self) -> None:
        self.committer.close()
        if self.database.feed is not None:  # a server: what it still leased, others may take at once
            try:
                self.queue.release_leases()
                with self.database.write(durable=False) as db:
                    db.execute("DELETE FROM nodes WHERE origin = ?", (self.database.origin,))
            except Exception:
                log.exception("event=store.release_leases_failed")
        self.database.close()

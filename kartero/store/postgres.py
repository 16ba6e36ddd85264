"""The PostgreSQL store: everything a cluster of Kartero nodes shares, bodies included.

The store classes are the SQLite store's (they speak one SQL to both, see `sql.py`) over a `PgDatabase`;
what differs is where the bytes go. A message's bytes are rows of `blob_chunks` (CHUNK octets each),
written once for all its local recipients in the same transaction as its metadata, so a `250` means both
are in the database's WAL (synchronous_commit on). The committer still batches concurrent deliveries into
one transaction per batch (group commit), per node.

What a node keeps to itself: its spool folder (large messages being received) and its expunge holds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from kartero.store.accounts_sql import SQLiteAccounts
from kartero.store.commit import Committer
from kartero.store.interface import StoreError
from kartero.store.mailboxes import SQLiteMail
from kartero.store.pg_db import SCHEMA_VERSION, PgDatabase
from kartero.store.queue_sql import SQLiteQueue
from kartero.store.spool import WINDOW, FileBuffer, SpoolBody, clear_spool
from kartero.store.sql import SqlConnection

__all__ = ["CHUNK", "SCHEMA_VERSION", "PgStore"]

log = logging.getLogger("kartero.store")

# Octets per row of blob_chunks: big enough that a 25 MB message is 25 rows, small enough that a FETCH
# of a part reads little more than it needs.
CHUNK = 1 << 20


class PgCommitter(Committer):
    """The group commit with the bodies in the transaction instead of segment files."""

    insert_errors = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError, ValueError)

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
        row = self._db().execute("SELECT size FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        if row is None:
            raise StoreError(f"no message {blob_id}")
        return ChunkReader(self._db, blob_id, int(row[0]))


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


class PgStore:
    """Store on PostgreSQL (`url`); `root` is this node's own folder (the spool of large messages)."""

    def __init__(self, url: str, root: Path, *, check: bool = True) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.database = PgDatabase(url, check=check)
        self.committer = PgCommitter(self.database, root)
        self.accounts = SQLiteAccounts(self.database, self.committer)
        self.mail = PgMail(self.database, self.committer)
        self.queue = SQLiteQueue(self.database)

    def recover(self) -> int:
        return self.committer.recover()

    def start(self) -> None:
        self.committer.start()

    def compact(self) -> None:
        """Nothing to do: PostgreSQL reclaims space itself."""

    def close(self) -> None:
        self.committer.close()
        self.database.close()

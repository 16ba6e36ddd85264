"""The embedded store: SQLite in WAL mode for metadata, message bodies in append-only segments.

`SQLiteStore` is composition, the Store the server builds: three classes over one connection provider
(`sqlite_db.Database`: connections, the write lock, the listeners) and one committer (`commit.Committer`:
the group commit, compaction, releasing expunged bodies):

- `accounts` (`accounts_sql.SQLiteAccounts`): accounts, aliases, the directory snapshot and its version;
- `mail` (`mailboxes.SQLiteMail`): mailboxes, messages, flags, MODSEQs, METADATA, the change feed, bodies
  and deliveries;
- `queue` (`queue_sql.SQLiteQueue`): the outbound queue;
- `sieve` (`sieve_sql.SqlSieve`): Sieve scripts;
- `trace` (`trace_sql.SqlTrace`): the message trace.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from kartero.store.accounts_sql import SQLiteAccounts
from kartero.store.commit import Committer
from kartero.store.interface import AbuseStore
from kartero.store.mailboxes import SQLiteMail
from kartero.store.queue_sql import SQLiteQueue
from kartero.store.segments import Segments
from kartero.store.sieve_sql import SqlSieve
from kartero.store.sqlite_db import SCHEMA_VERSION, Database
from kartero.store.trace_sql import SqlTrace

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]


class SQLiteStore:
    """Store on SQLite + segments under `root` (`root/kartero.db`, `root/messages/*.seg`).

    Opening it is safe while a server runs (the CLI does); `recover()` and `start()` are for the one
    process that delivers.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.database = Database(root)
        # Up to issue 10 the directory version was this file's identity; a counter in `meta` replaced it.
        (root / "directory.version").unlink(missing_ok=True)
        self.segments = Segments(root / "messages")
        self.committer = Committer(self.database, root, self.segments)
        self.accounts = SQLiteAccounts(self.database, self.committer)
        self.mail = SQLiteMail(self.database, self.committer)
        self.queue = SQLiteQueue(self.database)
        self.sieve = SqlSieve(self.database)
        self.trace = SqlTrace(self.database)
        self.abuse: AbuseStore | None = None  # one process: the abuse counts stay in its memory

    def recover(self) -> int:
        """Cut off bytes no committed message points to (left by a crash mid-batch), remove segments
        nothing points to and empty the spool folder; returns the number of bytes dropped. Call before
        `start()`, in the delivering process only."""
        return self.committer.recover()

    def heartbeat(self, name: str, address: str, version: str, started_at: int) -> None:
        """One process owns the embedded store: there is no cluster to tell."""

    def start(self) -> None:
        """Start the committer thread; until then deliveries are refused (CLI use needs none)."""
        self.committer.start()

    def compact(self) -> None:
        """Ask the committer to reclaim the space of deleted messages (runs between batches)."""
        self.committer.compact()

    def size_bytes(self) -> int:
        """What the store takes on disk: the database (with its WAL) and the segment files (a stat of
        each: one per 64 MiB of mail)."""
        total = 0
        for name in ("kartero.db", "kartero.db-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += (self.root / name).stat().st_size
        for number in self.segments.numbers():
            with contextlib.suppress(FileNotFoundError):
                total += self.segments.size(number)
        return total

    def close(self) -> None:
        """Finish every delivery already accepted, then stop the writers and close the database."""
        self.committer.close()
        self.segments.close()
        self.database.close()

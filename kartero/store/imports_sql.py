"""The import ledger of both backends: which messages `kartero import` (kartero/migrate) has stored, so
that a rerun, or a run after a crash, stores none of them twice.

A message of a source is known by (account, source, folder, SHA-256 of its bytes, occurrence): the same
bytes may lie in a folder twice (a message saved twice), and each copy is imported once, so a run counts
the copies it meets. It does so in the table, not in memory: a row met by this run carries the run's id,
and the next copy of the same bytes takes the next row not met yet, or a new one.

Exactly once without a commit shared with the store's: a row is written (claimed) with the blob id the
message will be stored under before it is stored, and marked done once the store confirms it. A row left
not done by a crash is settled by the next run: the message was stored if `blobs` holds that id, else it
is stored then, under the same id.

Both writes are not synced on their own (`durable=False`): the delivery commit that follows a claim syncs
the log with it (SQLite's WAL and PostgreSQL's WAL are written in order), and a lost "done" is settled as
above.
"""

from __future__ import annotations

from collections.abc import Sequence

from kartero.store.ids import new_message_id
from kartero.store.interface import Claim, LedgerKey
from kartero.store.sql import SqlConnection, SqlDatabase


class SqlImportLedger:
    """The ImportLedger of both backends."""

    def __init__(self, database: SqlDatabase) -> None:
        self._database = database

    def claim(self, account_id: int, source: str, run: str, keys: Sequence[LedgerKey]) -> list[Claim]:
        """One claim per key, in order, in one transaction: a new row for a message no run has stored
        (and the same row again for one an interrupted run claimed but never stored), else a skip."""
        claims: list[Claim] = []
        with self._database.write(durable=False) as db:
            for key in keys:
                claims.append(self._claim_one(db, account_id, source, run, key))
        return claims

    def _claim_one(self, db: SqlConnection, account_id: int, source: str, run: str, key: LedgerKey) -> Claim:
        where = "account_id = ? AND source = ? AND folder = ? AND digest = ?"
        params = (account_id, source, key.folder, key.digest)
        row = db.execute(
            f"SELECT occurrence, blob_id, done FROM import_ledger WHERE {where} AND run <> ?"
            " ORDER BY occurrence LIMIT 1",
            (*params, run),
        ).fetchone()
        if row is None:
            last = db.execute(f"SELECT MAX(occurrence) FROM import_ledger WHERE {where}", params).fetchone()
            occurrence = int(last[0] or 0) + 1
            blob_id = new_message_id()
            db.execute(
                "INSERT INTO import_ledger (account_id, source, folder, digest, occurrence, blob_id, done, run)"
                " VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                (*params, occurrence, blob_id, run),
            )
            return Claim(key, occurrence, blob_id, True)
        occurrence, blob_id, done = int(row[0]), str(row[1]), bool(row[2])
        if not done and db.execute("SELECT 1 FROM blobs WHERE id = ?", (blob_id,)).fetchone() is not None:
            done = True  # stored by a run that stopped before it could say so
        db.execute(
            f"UPDATE import_ledger SET run = ?, done = ? WHERE {where} AND occurrence = ?",
            (run, int(done), *params, occurrence),
        )
        return Claim(key, occurrence, blob_id, not done)

    def confirm(self, account_id: int, source: str, claims: Sequence[Claim]) -> None:
        """These claims' messages are stored."""
        if not claims:
            return
        with self._database.write(durable=False) as db:
            db.executemany(
                "UPDATE import_ledger SET done = 1 WHERE account_id = ? AND source = ? AND folder = ? AND digest = ?"
                " AND occurrence = ?",
                [(account_id, source, c.key.folder, c.key.digest, c.occurrence) for c in claims],
            )

    def settled(self, account_id: int, source: str, claims: Sequence[Claim]) -> list[bool]:
        """Per claim: is its message stored (its row done, or a message stored under its blob id)? How the
        server taking in an import drop file twice (after a crash) knows what it stored the first time."""
        db = self._database.db()
        found: list[bool] = []
        for c in claims:
            row = db.execute(
                "SELECT done FROM import_ledger WHERE account_id = ? AND source = ? AND folder = ? AND digest = ?"
                " AND occurrence = ?",
                (account_id, source, c.key.folder, c.key.digest, c.occurrence),
            ).fetchone()
            done = row is not None and bool(row[0])
            found.append(done or db.execute("SELECT 1 FROM blobs WHERE id = ?", (c.blob_id,)).fetchone() is not None)
        return found

"""What ACME keeps in the database of a cluster (kartero/acme/shared.py): rows of the `meta` table under
`acme:` keys (the account key and URL, the certificate with its key, the renewal state, pending http-01
answers, and which node orders), so every node serves the same certificate and any node answers the
CA's http-01 request. Text values, a few KiB each; no schema change.
"""

from __future__ import annotations

from collections.abc import Mapping

from kartero.store.sql import SqlDatabase

PREFIX = "acme:"
LEAD = "lead"
_UPSERT = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"


class SqlAcmeRows:
    """Blocking: called in worker threads. Either backend (the cluster's is PostgreSQL)."""

    def __init__(self, database: SqlDatabase) -> None:
        self._database = database

    def get(self, key: str) -> str | None:
        row = self._database.db().execute("SELECT value FROM meta WHERE key = ?", (PREFIX + key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, items: Mapping[str, str]) -> None:
        """Set every key of `items`, in one transaction."""
        with self._database.write() as db:
            for key, value in items.items():
                db.execute(_UPSERT, (PREFIX + key, value))

    def put_if_absent(self, key: str, value: str) -> str:
        """`value` stored under `key` unless another node stored one first; returns the one stored."""
        with self._database.write() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", (PREFIX + key, value))
            row = db.execute("SELECT value FROM meta WHERE key = ?", (PREFIX + key,)).fetchone()
        return str(row[0])

    def delete(self, key: str) -> None:
        with self._database.write() as db:
            db.execute("DELETE FROM meta WHERE key = ?", (PREFIX + key,))

    def try_lead(self, node: str, now: float, lease_s: float) -> bool:
        """Whether `node` is the one that orders: it is when no node is, when it already was, or when the
        holder's lease ran out (a dead node's); the lease is then extended to `now + lease_s`. The write
        transaction serializes the nodes' attempts (the store's write lock)."""
        with self._database.write() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (PREFIX + LEAD,)).fetchone()
            if row is not None:
                holder, _, until = str(row[0]).partition(" ")
                try:
                    expires_at = float(until)
                except ValueError:
                    expires_at = 0.0
                if holder != node and expires_at >= now:
                    return False
            db.execute(_UPSERT, (PREFIX + LEAD, f"{node} {now + lease_s}"))
        return True

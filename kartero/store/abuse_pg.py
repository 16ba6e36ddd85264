"""The abuse state a cluster shares, in PostgreSQL: one row of `abuse_events` per event (interface.py
`AbuseStore`; policy/shared.py decides what the events mean).

Each process appends its own events and reads the others' in order of (transaction id, row id), only
below the oldest transaction still running (`pg_snapshot_xmin`): a row whose transaction commits after a
later one's is still read, and read once (ordering by id alone would skip it for good). A long write
transaction elsewhere in the database delays the reading by its length, never loses an event.

Events are written with `synchronous_commit = off` and without the cluster's write lock: a crash may lose
the last few, which costs an attacker's counts a moment, never mail. Rows expire with the window of
their kind (policy/shared.py asks, about once a minute), and the table never holds more than a cap.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from kartero.store.interface import KEY_PARTS, AbuseEvent, AbuseKind, StoreUnavailable
from kartero.store.pg_db import PgDatabase

# Events read at most per exchange: bounds the work the event loop does to apply them at once (a node
# starting behind a busy cluster catches up over several exchanges).
BATCH = 5000


class PgAbuseStore:
    """This process's view of `abuse_events`; `exchange` and `expire` run in worker threads, one at a
    time (the cursor is this object's)."""

    def __init__(self, database: PgDatabase, batch: int = BATCH) -> None:
        self._database = database
        self.batch = batch
        self.origin = database.origin
        self._cursor: tuple[str, int] = ("0", 0)  # (xid, id) of the last row read
        self._is_behind = False
        self._lock = threading.Lock()

    @property
    def is_behind(self) -> bool:
        return self._is_behind

    def exchange(self, outgoing: Sequence[AbuseEvent], since: float) -> list[AbuseEvent]:
        with self._lock:
            conn = self._conn()
            try:
                if outgoing:
                    with conn.transaction():
                        conn.execute(b"SET LOCAL synchronous_commit = off")
                        conn.cursor().executemany(
                            b"INSERT INTO abuse_events (origin, kind, at, k1, k2, k3) VALUES (%s, %s, %s, %s, %s, %s)",
                            [(self.origin, e.kind.value, e.at, *_text(e.key)) for e in outgoing],
                        )  # fmt: skip
                rows = conn.execute(
                    # xid8 arrives as text (psycopg has no loader for it) and goes back cast.
                    b"SELECT xid, id, kind, at, k1, k2, k3 FROM abuse_events"
                    b" WHERE (xid, id) > (%s::xid8, %s) AND xid < pg_snapshot_xmin(pg_current_snapshot())"
                    b" AND origin <> %s AND at >= %s ORDER BY xid, id LIMIT %s",
                    (*self._cursor, self.origin, since, self.batch),
                ).fetchall()  # fmt: skip
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"database unavailable: {str(exc).strip()}") from exc
            self._is_behind = len(rows) == self.batch
            if rows:
                self._cursor = (str(rows[-1][0]), int(rows[-1][1]))
            kinds = {k.value: k for k in AbuseKind}
            events = []
            for _, _, kind, at, k1, k2, k3 in rows:
                known = kinds.get(kind)
                if known is not None:  # else a kind a newer Kartero added: not ours to count
                    events.append(AbuseEvent(known, (k1, k2, k3)[: KEY_PARTS[known]], float(at)))
            return events

    def expire(self, before: Mapping[AbuseKind, float], max_rows: int) -> int:
        with self._lock:
            conn = self._conn()
            try:
                gone = 0
                for kind, at in before.items():
                    gone += conn.execute(b"DELETE FROM abuse_events WHERE kind = %s AND at < %s",
                                         (kind.value, at)).rowcount  # fmt: skip
                # Past the cap, the oldest go (ids are dense enough: a rolled-back insert leaves a gap).
                gone += conn.execute(
                    b"DELETE FROM abuse_events WHERE id <= (SELECT max(id) FROM abuse_events) - %s", (max_rows,)
                ).rowcount
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"database unavailable: {str(exc).strip()}") from exc
            return gone

    def _conn(self) -> psycopg.Connection[Any]:
        """This thread's pooled connection (autocommit)."""
        return self._database.db().conn


def _text(key: tuple[str, ...]) -> tuple[str, str, str]:
    """The key as the three columns: PostgreSQL text cannot hold NUL (a client's bytes, however unlikely
    past the parsers, must not make the batch fail)."""
    k1, k2, k3 = (*(part.replace("\x00", "\ufffd") for part in key), "", "")[:3]
    return k1, k2, k3

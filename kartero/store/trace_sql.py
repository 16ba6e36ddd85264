"""The message trace in SQL, one implementation for both backends (kartero.store.interface.TraceStore).

Two tables (sqlite_db.py and pg_db.py's migration 8 make them). `trace_events`: one row per event
(kartero.mail.trace.TraceEvent), the searchable ids in columns (Kartero's message id, the queue entry, the
Message-ID field), time in milliseconds, and the rest as one JSON object (`detail`), so a new field needs
no migration. `trace_addresses`: one row per address
a message names (sender, recipients, accounts reached, forwarding targets), in the canonical form of
`address_key`, written with the message's first events: the search by address reads it by index, never
the events.

Cost: intake's events go into the delivery group's transaction (`insert_rows`, under the group's
savepoint: a group that fails takes its events with it), the queue runner's into the transaction of
`update_recipients`; their rows are made (JSON, address keys) before the transaction, in the index
threads or the caller's thread. Nothing here adds an fsync to a message.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from kartero.dns.names import DomainError, canonical_domain
from kartero.mail.trace import (
    ADDRESSED_KINDS,
    DETAIL_FIELDS,
    TRACE_BOUNDS,
    TracedMessage,
    TraceEvent,
    TraceKind,
    clip,
    message_id_key,
)
from kartero.store.interface import MAX_TRACE_EVENTS, TraceQuery, TraceResult
from kartero.store.sql import SqlConnection, SqlDatabase

# The listing by time reads the ids' index in pages of this many rows per message wanted, at most this
# many pages (a bound on what one search reads, whatever the messages hold).
_PAGE = 4
_MAX_PAGES = 50
_EVENT_INSERT = "INSERT INTO trace_events (at_ms, message_id, kind, queue_id, header_id, detail) VALUES "
_ADDRESS_INSERT = "INSERT INTO trace_addresses (address, message_id) VALUES "
# Rows one INSERT statement carries (within SQLite's 999 parameters of old versions): a statement, not a
# row, is what costs a writer thread most (it waits for the GIL back after each).
_ROWS_PER_INSERT = 100
# One encoder for every event: json.dumps with arguments makes a new one per call (3 µs of 4.6).
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

EventRow = tuple[int, str, str, str | None, str | None, str]
AddressRow = tuple[str, str]


def address_key(address: str) -> str:
    """An address as the trace indexes and searches it: the local part as written, the domain in its
    canonical form (lower-case A-labels; as written, lower-cased, when it is no valid name)."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at:
        return clip(address.strip().strip("<>"), TRACE_BOUNDS["recipient"])
    return clip(f"{local}@{_domain_key(domain[:TRACE_BOUNDS['recipient']])}", TRACE_BOUNDS["recipient"])


@functools.lru_cache(maxsize=4096)
def _domain_key(domain: str) -> str:
    """The canonical form of a domain, remembered: a message names a few, the same ones again and again
    (3.7 µs each otherwise, for every message). Bounded: a flood of new names only pushes old ones out."""
    try:
        return canonical_domain(domain)
    except DomainError:
        return domain.lower()


def trace_rows(events: Sequence[TraceEvent], header_id: str | None = None) -> tuple[list[EventRow], list[AddressRow]]:
    """The rows of `events`: each event's, and one per distinct address of each message its opening
    events name (ADDRESSED_KINDS). `header_id` (the message's Message-ID, from its index) goes on the
    received and refused events that have none."""
    rows: list[EventRow] = []
    addresses: dict[AddressRow, None] = {}
    for event in events:
        at_ms = int(event.at * 1000)
        header = event.header_id
        if header is None and header_id and event.kind in (TraceKind.RECEIVED, TraceKind.REFUSED):
            header = header_id
        rows.append((at_ms, clip(event.message_id, TRACE_BOUNDS["message_id"]), event.kind.value,
                     clip(event.queue_id, TRACE_BOUNDS["queue_id"]) if event.queue_id else None,
                     message_id_key(header) if header else None,
                     _JSON.encode(event.detail())))  # fmt: skip
        if event.kind in ADDRESSED_KINDS:
            for address in event.addresses():
                addresses[(address_key(address), rows[-1][1])] = None
    return rows, list(addresses)


def insert_rows(db: SqlConnection, rows: Sequence[EventRow], addresses: Sequence[AddressRow]) -> None:
    """Inside a write transaction: keep these rows, finding the message of each event that names only
    its queue entry (the queue runner's) from that entry's earlier events."""
    if any(not r[1] for r in rows):
        found: dict[str, str] = {}
        for queue_id in {r[3] for r in rows if not r[1] and r[3]}:
            hit = db.execute("SELECT message_id FROM trace_events WHERE queue_id = ? LIMIT 1", (queue_id,)).fetchone()
            found[queue_id] = hit[0] if hit is not None else queue_id  # traced from here on only
        rows = [r if r[1] else (r[0], found.get(r[3] or "", r[3] or ""), *r[2:]) for r in rows]
    _insert(db, _EVENT_INSERT, "(?, ?, ?, ?, ?, ?)", rows)
    _insert(db, _ADDRESS_INSERT, "(?, ?)", addresses)


def _insert(db: SqlConnection, head: str, values: str, rows: Sequence[Sequence[Any]]) -> None:
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        db.execute(head + ", ".join([values] * len(chunk)), [v for row in chunk for v in row])


def deleted_rows(db: SqlConnection, queue_id: str, open_states: Sequence[str], at: float) -> list[EventRow]:
    """Inside the transaction that deletes a queue entry: a `deleted` event for each of its recipients
    still to try, when the entry's message has a trace."""
    hit = db.execute("SELECT message_id FROM trace_events WHERE queue_id = ? LIMIT 1", (queue_id,)).fetchone()
    if hit is None:
        return []
    marks = ",".join("?" * len(open_states))
    recipients = [r[0] for r in db.execute(
        f"SELECT address FROM queue_recipients WHERE queue_id = ? AND state IN ({marks}) ORDER BY id",
        (queue_id, *open_states))]  # fmt: skip
    events = [TraceEvent(TraceKind.DELETED, at, hit[0], queue_id, recipient=r, note="removed from the queue")
              for r in recipients]  # fmt: skip
    return trace_rows(events)[0]


# The dashboard's activity counts the events of messages received at most this long before its window
# (a message deferred for longer shows in the trace, not on the chart), and reads at most so many rows,
# newest first (on a busier server the oldest hours of the chart are the ones cut short).
ACTIVITY_LOOKBACK_S = 86400.0
MAX_ACTIVITY_ROWS = 500_000


class SqlTrace:
    """TraceStore over a Database (SQLite or PostgreSQL: the same SQL)."""

    def __init__(self, database: SqlDatabase) -> None:
        self._db = database.db
        self._write = database.write

    def record(self, events: Sequence[TraceEvent]) -> None:
        rows, addresses = trace_rows(events)
        if rows:
            with self._write(durable=False) as db:  # no fsync: a trace is not mail
                insert_rows(db, rows, addresses)

    def expire(self, before: float, max_rows: int) -> int:
        cutoff = id_at(before)
        with self._write(durable=False) as db:  # a deletion lost to a power cut is made again next time
            gone = int(db.execute(
                "DELETE FROM trace_events WHERE id IN (SELECT id FROM trace_events WHERE message_id < ? LIMIT ?)",
                (cutoff, max_rows)).rowcount)  # fmt: skip
            # Address rows are in the order their messages were written, which is their ids' order but
            # for a second's difference (refusals wait for their batch): the oldest rows, by their key.
            oldest = db.execute("SELECT id, message_id FROM trace_addresses ORDER BY id LIMIT ?", (max_rows,))
            going = [(r[0],) for r in oldest.fetchall() if r[1] < cutoff]
            db.executemany("DELETE FROM trace_addresses WHERE id = ?", going)
        return gone + len(going)

    def activity(self, since: float, until: float) -> dict[tuple[int, str], int]:
        events: dict[tuple[int, str], int] = {}
        rows = self._db().execute(
            "SELECT at_ms / 3600000, kind, COUNT(*) FROM (SELECT at_ms, kind FROM trace_events"
            " WHERE message_id >= ? AND message_id < ? ORDER BY message_id DESC LIMIT ?) AS recent"
            " WHERE at_ms >= ? AND at_ms < ?"
            " GROUP BY at_ms / 3600000, kind",
            (id_at(since - ACTIVITY_LOOKBACK_S), id_at(until), MAX_ACTIVITY_ROWS, int(since * 1000),
             int(until * 1000)),
        )  # fmt: skip
        for hour, kind, count in rows:
            events[(int(hour) * 3600, str(kind))] = int(count)
        return events

    def search(self, query: TraceQuery) -> TraceResult:
        db = self._db()
        since = id_at(query.since) if query.since is not None else ""
        until = id_at(query.until) if query.until is not None else "~"  # after every hex digit
        wanted = query.limit + 1  # one more tells whether the limit cut the list
        # One indexed query picks the candidates by the most selective criterion; the others are checked
        # on their events below.
        rows: list[Any]
        if query.id:
            rows = db.execute(
                "SELECT message_id FROM trace_events WHERE message_id = ? OR queue_id = ? LIMIT ?",
                (query.id, query.id, MAX_TRACE_EVENTS),
            ).fetchall()
        elif query.message_id:
            rows = db.execute(
                "SELECT message_id FROM trace_events WHERE header_id = ? AND message_id >= ? AND message_id < ?"
                " ORDER BY message_id DESC LIMIT ?",
                (message_id_key(query.message_id), since, until, wanted),
            ).fetchall()
        elif query.address:
            rows = db.execute(
                "SELECT message_id FROM trace_addresses WHERE address = ? AND message_id >= ? AND message_id < ?"
                " ORDER BY message_id DESC LIMIT ?",
                (address_key(query.address), since, until, wanted),
            ).fetchall()
        else:
            # Distinct ids from the newest, read in the index's order a page at a time: a message has a few
            # events (a bounded number: its recipients' attempts), so a few pages yield `wanted` messages.
            newest: dict[str, None] = {}
            before = until
            for _ in range(_MAX_PAGES):
                page = [r[0] for r in db.execute(
                    "SELECT message_id FROM trace_events WHERE message_id >= ? AND message_id < ?"
                    " ORDER BY message_id DESC LIMIT ?", (since, before, _PAGE * wanted))]  # fmt: skip
                newest.update(dict.fromkeys(page))
                if len(newest) >= wanted or len(page) < _PAGE * wanted:
                    break
                before = page[-1]  # that message's other events are behind it: it is found already
            rows = [(m,) for m in newest]
        candidates = list(dict.fromkeys(r[0] for r in rows))
        more = len(candidates) > query.limit
        candidates = candidates[: query.limit]
        if not candidates:
            return TraceResult(())
        marks = ",".join("?" * len(candidates))
        events: dict[str, list[TraceEvent]] = {m: [] for m in candidates}
        for row in db.execute(
            "SELECT message_id, at_ms, kind, queue_id, header_id, detail FROM trace_events"
            f" WHERE message_id IN ({marks}) ORDER BY at_ms, id LIMIT ?",
            (*candidates, MAX_TRACE_EVENTS),
        ):
            events[row[0]].append(_event(row))
        found = [TracedMessage(m, tuple(events[m])) for m in candidates if events[m]]
        found = [m for m in found if _matches(m, query, since, until)]
        if query.id:  # no index order here: newest first
            found.sort(key=lambda m: m.message_id, reverse=True)
        return TraceResult(tuple(found), more)


def _event(row: Sequence[Any]) -> TraceEvent:
    detail = {k: v for k, v in json.loads(row[5]).items() if k in DETAIL_FIELDS}  # a newer version's: left out
    if "recipients" in detail:
        detail["recipients"] = tuple(detail["recipients"])
    try:
        kind = TraceKind(row[2])
    except ValueError:  # written by a newer version: shown as what it is closest to, a note
        kind, detail["note"] = TraceKind.RECEIVED, f"{row[2]}: {detail.get('note', '')}"
    return TraceEvent(kind, int(row[1]) / 1000, row[0], row[3], row[4], **detail)


def id_at(moment: float) -> str:
    """The smallest message id made at `moment` (seconds since the epoch) or later: ids start with their
    time (kartero.store.ids), so a time range of messages is a range of ids, on the ids' own index."""
    return f"{max(0, int(moment * 1_000_000)):014x}"


def _matches(message: TracedMessage, query: TraceQuery, since: str, until: str) -> bool:
    """Whether a candidate meets every criterion (the one its query used holds already)."""
    if not since <= message.message_id < until:
        return False
    if query.address and (query.id or query.message_id):
        key = address_key(query.address)
        if not any(address_key(a) == key for e in message.events for a in e.addresses()):
            return False
    return not (query.id and query.message_id and message.header_id != message_id_key(query.message_id))

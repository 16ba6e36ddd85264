"""The group commit of the embedded store: how a delivery becomes durable, and the committer's other work.

Write path of a delivery (or a group of them that must be stored together):
0. in a small pool of index threads (never in the committer): parse the message once for IMAP
   (`index_message`); a message the parser chokes on gets a minimal fallback index and is stored anyway;
1. in the committer thread: take every group of deliveries that is waiting (up to MAX_BATCH);
2. append their bodies to the active segment with one write and one fdatasync;
3. insert them all (blobs, messages, UIDs, MODSEQs, queue rows) in one transaction, each group under its
   own savepoint, and commit (synchronous=FULL: the WAL is fsynced); a group that fails is rolled back to
   its savepoint and fails alone, the rest of the batch commits;
4. resolve the callers' Futures; only then does SMTP answer 250.
A group's message trace events (kartero.store.trace_sql) are made into rows in step 0 and inserted in
step 3, those of the whole batch together after its groups: they cost the commit no fsync of their own.
So two fsyncs serve a whole batch. A crash before 3 leaves bytes past the last committed body of a
segment; `recover()` cuts them off at the next start. Metadata never points at bytes not on disk.

Between batches the committer also compacts segments and lets go of the bodies of tombstones no session
holds any more (kartero.store.holds).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kartero import metrics
from kartero.mail.trace import TraceEvent
from kartero.mime.index import MessageIndex, index_message
from kartero.mime.parttree import PartNode, encode_parts
from kartero.store.holds import ExpungeHolds
from kartero.store.interface import INBOX, Content, Delivery, FileSpan, StoredMessage, StoreError, StoreUnavailable
from kartero.store.queue_sql import insert_outbound
from kartero.store.segments import Segments
from kartero.store.spool import SpoolBody, clear_spool, materialize, spool_dir
from kartero.store.sql import SqlConnection, SqlDatabase
from kartero.store.sqlite_db import drop_unreferenced_blobs, format_flags
from kartero.store.trace_sql import AddressRow, EventRow, insert_rows, trace_rows

log = logging.getLogger("kartero.store")

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


class Committer:
    """The one thread of the delivering process that appends to segments, and the index threads that
    feed it. Built over the shared Database; the mail and account stores hand it their deliveries,
    compaction requests and tombstone releases."""

    backend = "sqlite"  # the label of its metrics

    def __init__(self, database: SqlDatabase, root: Path, segments: Segments | None) -> None:
        self._database = database
        self._listeners = database.listeners
        self._root = root
        self._segment_files = segments  # None on PostgreSQL (kartero.store.postgres), which overrides their users
        self.holds = ExpungeHolds(self.request_release)
        self._commit_queue: queue.Queue[Any] = queue.Queue()
        self._committer: threading.Thread | None = None
        # Index threads take their work from a SimpleQueue: ThreadPoolExecutor.submit cost the event loop
        # 27 µs a message (a Python semaphore), this put about 1 µs.
        self._index_queue: queue.SimpleQueue[_Job | None]
        self._index_queue = queue.SimpleQueue()
        self._indexers: list[threading.Thread] = []
        self._intake_lock = threading.Lock()  # deliver_group against close: nothing queued after the stop
        self._closed = False

    # What a failed insert of one group may raise that the retry with the minimal index can mend
    # (ValueError: e.g. text SQLite cannot take).
    insert_errors: tuple[type[Exception], ...] = (sqlite3.Error, ValueError)

    @property
    def segments(self) -> Segments:
        if self._segment_files is None:
            raise StoreError("this store keeps no segment files")
        return self._segment_files

    def place(self, bodies: Sequence[bytes | SpoolBody]) -> list[tuple[int, int]]:
        """Before the transaction: write the batch's bodies durably; each one's (segment, offset)."""
        return self.segments.append(bodies)

    def store_body(self, db: SqlConnection, blob_id: str, body: bytes | SpoolBody) -> None:
        """Inside the transaction, after the body's blobs row: nothing here, `place` wrote it."""

    def recover(self) -> int:
        """Cut off bytes no committed message points to (left by a crash mid-batch), remove segments
        nothing points to and empty the spool folder; returns the number of bytes dropped. Call before
        `start()`, in the delivering process only."""
        clear_spool(self._root)
        with self._database.write() as db:  # no session of an earlier run holds anything
            self.release_tombstones(db, None)
        ends = dict(self._database.db().execute('SELECT segment, MAX("offset" + size) FROM blobs GROUP BY segment'))
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
        self._indexers = [
            threading.Thread(target=self._index_loop, name=f"kartero-index_{n}", daemon=True)
            for n in range(INDEX_THREADS)
        ]
        for thread in self._indexers:
            thread.start()
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

    def deliver_group(
        self, deliveries: Sequence[Delivery], trace: Sequence[TraceEvent] = ()
    ) -> Future[list[list[StoredMessage]]]:
        if not deliveries:
            raise ValueError("an empty delivery group")
        future: Future[list[list[StoredMessage]]] = Future()
        with self._intake_lock:
            if not self._indexers or self._closed:
                raise StoreError("store is not accepting deliveries")
            self._index_queue.put((tuple(deliveries), tuple(trace), future, time.monotonic()))
        return future

    def _index_loop(self) -> None:
        while (job := self._index_queue.get()) is not None:
            self._prepare(*job)

    def _prepare(self, deliveries: tuple[Delivery, ...], trace: tuple[TraceEvent, ...],
                 future: Future[list[list[StoredMessage]]], handed_at: float) -> None:  # fmt: skip
        """Index thread: bring each message into one piece (bytes, or for a large one a file of its own
        in the spool folder), parse it, then hand the group to the committer."""
        bodies: list[bytes | SpoolBody] = []
        try:
            for delivery in deliveries:
                bodies.append(self._body(delivery.data))
            indexes = tuple(_index(d, b) for d, b in zip(deliveries, bodies, strict=True))
            envelopes = tuple(d.envelope.to_json() if d.envelope is not None else "{}" for d in deliveries)
            events, addresses = trace_rows(trace, indexes[0].message_id) if trace else ([], [])
            group = _Group(deliveries, tuple(bodies), indexes, envelopes, future, handed_at, tuple(events),
                           tuple(addresses))  # fmt: skip
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
        return materialize(spool_dir(self._root), data.head, data.tail)

    def compact(self) -> None:
        """Ask the committer to reclaim the space of deleted messages (runs between batches)."""
        if self._committer is not None and not self._closed:
            self._commit_queue.put(_COMPACT)

    def _commit_loop(self) -> None:
        db: Any = None
        stop = False
        while not stop:
            first = self._commit_queue.get()
            if first is _STOP:
                break
            if db is None or getattr(db, "broken", False):  # PostgreSQL restarted, or the network cut
                try:
                    db = self._database.connect()
                except Exception as exc:  # still away: this work fails (451), the next tries again
                    log.warning("event=store.connect_failed detail=%s", str(exc).replace("\n", " "))
                    db = None
                    if isinstance(first, _Group) and first.future.set_running_or_notify_cancel():
                        first.future.set_exception(StoreUnavailable(str(exc)))
                        _discard(first.bodies)
                    continue
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

    def _commit_batch(self, db: SqlConnection, batch: list[_Group]) -> None:
        live = [g for g in batch if g.future.set_running_or_notify_cancel()]
        if not live:
            return
        results: list[list[list[StoredMessage]] | StoreError] = []
        started = time.monotonic()
        try:
            locations = iter(self.place([body for g in live for body in g.bodies]))
            with self._database.write(db=db):
                for group in live:
                    places = [next(locations) for _ in group.deliveries]
                    results.append(self._insert_group(db, group, places))
                self._insert_trace(db, [g for g, r in zip(live, results, strict=True) if not isinstance(r, StoreError)])
        except Exception as exc:
            log.exception("event=store.commit_failed groups=%d", len(live))
            for group in live:
                group.future.set_exception(StoreError(f"commit failed: {exc}"))
            return
        finally:
            for group in batch:
                _discard(group.bodies)
        done = time.monotonic()
        metrics.store_committed(self.backend, done - started, len(live))
        committed = [(g, r) for g, r in zip(live, results, strict=True) if not isinstance(r, StoreError)]
        for group, result in zip(live, results, strict=True):
            if isinstance(result, StoreError):
                group.future.set_exception(result)
            else:
                metrics.store_delivered(self.backend, done - group.handed_at)  # before its caller hears of it
                group.future.set_result(result)
        changed = frozenset(m.mailbox_id for _, result in committed for stored in result for m in stored)
        self._listeners.mailboxes_changed(changed)
        if any(d.outbound is not None for group, _ in committed for d in group.deliveries):
            self._listeners.queued()

    def _insert_group(
        self, db: SqlConnection, group: _Group, places: list[tuple[int, int]]
    ) -> list[list[StoredMessage]] | StoreError:
        """Insert every delivery of the group under one savepoint: all of them, or none and an error.

        Mail content must never make a delivery fail: when the insert fails for a reason other than
        vanished mailboxes, it is retried once with the minimal index (whose fields hold nothing taken
        from the message)."""
        error = StoreError("could not store the message")
        for attempt in range(2):
            indexes = group.indexes if attempt == 0 else tuple(_minimal_index(d) for d in group.deliveries)
            db.execute("SAVEPOINT grp")
            try:
                results: list[list[StoredMessage]] = []
                for delivery, index, envelope, place, body in zip(group.deliveries, indexes, group.envelopes,
                                                                  places, group.bodies, strict=True):  # fmt: skip
                    stored = self._insert_delivery(db, delivery, index, envelope, place)
                    if not isinstance(stored, StoreError):
                        self.store_body(db, delivery.blob_id, body)
                    if isinstance(stored, StoreError):
                        db.execute("ROLLBACK TO grp")
                        db.execute("RELEASE grp")
                        return stored
                    results.append(stored)
            except self.insert_errors as exc:
                db.execute("ROLLBACK TO grp")
                db.execute("RELEASE grp")
                log.exception("event=store.insert_failed id=%s", group.deliveries[0].blob_id)
                error = StoreError(f"could not store the message: {exc}")
                continue
            db.execute("RELEASE grp")
            return results
        return error

    def _insert_delivery(
        self, db: SqlConnection, d: Delivery, ix: MessageIndex, envelope: str, location: tuple[int, int]
    ) -> list[StoredMessage] | StoreError:
        stored: list[StoredMessage] = []
        now = int(time.time())  # the save date (RFC 8514): delivery and APPEND alike
        db.execute(
            "INSERT INTO blobs (id, segment, \"offset\", size, envelope, created_at, imap_envelope, imap_body,"
            " imap_bodystructure, parts, subject, from_text, to_text, cc_text, bcc_text, message_id, sent_date,"
            " sent_day, sort_subject, sort_from, sort_to, sort_cc, preview) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                d.blob_id, location[0], location[1], len(d.data), envelope, d.internal_date,
                ix.envelope, ix.body, ix.bodystructure, encode_parts(ix.parts), ix.subject, ix.from_, ix.to, ix.cc,
                ix.bcc, ix.message_id, ix.sent_date, ix.sent_day, ix.sort_subject, ix.sort_from, ix.sort_to, ix.sort_cc,
                ix.preview,
            ),
        )  # fmt: skip
        for target in d.targets:
            row = None
            # A mailbox deleted since delivery chose it (a Sieve fileinto, Junk): INBOX instead, as a
            # Sieve runtime error falls back to keep (RFC 5228 §2.10.6).
            for name in (target.mailbox, INBOX) if target.mailbox != INBOX else (INBOX,):
                row = db.execute(
                    "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1,"
                    " used_bytes = used_bytes + ?, used_messages = used_messages + 1"
                    " WHERE account_id = ? AND name = ? RETURNING id, uidnext - 1, highestmodseq",
                    (len(d.data), target.account_id, name),
                ).fetchone()
                if row is not None:
                    break
            if row is None:
                continue  # account deleted since RCPT; the other targets still get it
            mailbox_id, uid, modseq = row
            if any(m.mailbox_id == mailbox_id for m in stored):  # the fallback led where it is already
                db.execute("UPDATE mailboxes SET used_bytes = used_bytes - ?, used_messages = used_messages - 1"
                           " WHERE id = ?", (len(d.data), mailbox_id))  # fmt: skip
                continue  # (uidnext moved on: harmless, UIDs need not be dense)
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

    def _insert_trace(self, db: SqlConnection, groups: list[_Group]) -> None:
        """The trace events of the batch's stored groups, in a statement or two for the whole batch: each
        statement from this thread waits for the GIL back from the event loop, so a statement per group
        cost more than the rows (0.13 ms a message). Under a savepoint of its own: a trace that cannot be
        kept costs the messages nothing."""
        rows = [row for group in groups for row in group.trace]
        if not rows:
            return
        db.execute("SAVEPOINT trace")
        try:
            insert_rows(db, rows, [row for group in groups for row in group.addresses])
        except self.insert_errors:
            db.execute("ROLLBACK TO trace")
            log.exception("event=trace.insert_failed groups=%d", len(groups))
        db.execute("RELEASE trace")

    def _compact(self, db: SqlConnection) -> None:
        """Copy the live bodies of mostly dead sealed segments to the active one, then drop them.

        Crash-safe in every order: the copies are fdatasynced before the pointers move (in one
        transaction), and the old segment is removed only after that commit.
        """
        for number in self.segments.numbers():
            if number == self.segments.active:
                continue
            rows = db.execute(
                'SELECT id, "offset", size FROM blobs WHERE segment = ? ORDER BY "offset"', (number,)
            ).fetchall()
            total = self.segments.size(number)
            if rows and sum(r[2] for r in rows) >= total * COMPACT_BELOW:
                continue
            try:
                if rows:
                    bodies = [self.segments.read(number, offset, size) for _, offset, size in rows]
                    locations = self.segments.append(bodies)
                    with self._database.write(db=db):
                        db.executemany(
                            'UPDATE blobs SET segment = ?, "offset" = ? WHERE id = ?',
                            [(seg, off, row[0]) for (seg, off), row in zip(locations, rows, strict=True)],
                        )
                self.segments.remove(number)
                log.info("event=store.compacted segment=%d live=%d bytes=%d", number, len(rows), total)
            except Exception:
                log.exception("event=store.compaction_failed segment=%d", number)
                return

    def request_release(self, mailbox_id: int) -> None:
        """Tombstones of `mailbox_id` may no longer be held: let their bodies go, in the committer
        (between batches, never in a session's command) when it runs, else at once."""
        if self._committer is not None and not self._closed:
            if self.holds.want_release(mailbox_id):
                self._commit_queue.put(_RELEASE)
            return
        with self._database.write() as db:
            self.release_tombstones(db, frozenset({mailbox_id}))

    def _release_pending(self, db: SqlConnection) -> None:
        try:
            with self._database.write(db=db):
                self.release_tombstones(db, self.holds.take_released())
        except Exception:
            log.exception("event=store.release_failed")

    def release_tombstones(self, db: SqlConnection, mailbox_ids: frozenset[int] | None) -> None:
        """Inside a write transaction: forget the bodies of tombstones (of these mailboxes, or all) that no
        hold keeps. The holds are read here, under SQLite's write lock: a session that takes a hold later
        reads its message list after this commits, so it never lists a message whose body goes here."""
        if mailbox_ids is None:
            rows = db.execute("SELECT mailbox_id, uid, blob_id FROM expunged WHERE blob_id IS NOT NULL").fetchall()
        else:
            rows = []
            for mailbox_id in mailbox_ids:
                lowest = self.holds.lowest(mailbox_id)
                found = db.execute(
                    "SELECT mailbox_id, uid, blob_id, modseq FROM expunged"
                    " WHERE mailbox_id = ? AND blob_id IS NOT NULL",
                    (mailbox_id,),
                ).fetchall()
                going = [r[:3] for r in found if lowest is None or r[3] <= lowest]
                if len(going) == len(found):
                    self.holds.none_kept(mailbox_id)
                rows += going
        if not rows:
            return
        db.executemany(
            "UPDATE expunged SET blob_id = NULL WHERE mailbox_id = ? AND uid = ?", [(r[0], r[1]) for r in rows]
        )
        drop_unreferenced_blobs(db, list({r[2] for r in rows}))

    def close(self) -> None:
        """Finish every delivery already accepted, then stop the threads."""
        with self._intake_lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._indexers:
                self._index_queue.put(None)
        for thread in self._indexers:
            thread.join()  # what is being indexed still reaches the committer
        if self._committer is not None:
            self._commit_queue.put(_STOP)
            self._committer.join()


@dataclass(frozen=True, slots=True)
class _Group:
    """Deliveries committed together or not at all, with their bodies in one piece, their indexes and
    the caller's Future."""

    deliveries: tuple[Delivery, ...]
    bodies: tuple[bytes | SpoolBody, ...]
    indexes: tuple[MessageIndex, ...]
    envelopes: tuple[str, ...]  # each delivery's envelope record as JSON, made here and not in the committer
    future: Future[list[list[StoredMessage]]]
    handed_at: float  # time.monotonic() when deliver_group took it
    trace: tuple[EventRow, ...] = ()  # the message's trace events, and the addresses they name
    addresses: tuple[AddressRow, ...] = ()


# A delivery group on its way to an index thread: the deliveries, their trace events, the caller's Future,
# when it was handed.
_Job = tuple[tuple[Delivery, ...], tuple[TraceEvent, ...], Future[list[list[StoredMessage]]], float]


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


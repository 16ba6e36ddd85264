"""Issue 14: the message trace in the store (both backends: the SQL of each is what is tested).

A message's events are kept with its commit, the queue runner's with its attempt records; the search
finds a message by address (domain case and U-labels as its A-labels), Message-ID, Kartero's ids and
time, newest first; what the network chose is cut and cleaned; expiry goes in batches."""

from __future__ import annotations

import sqlite3

import pytest

from kartero.mail.envelope import EnvelopeRecipient
from kartero.mail.replies import Reply
from kartero.mail.trace import TraceEvent, TraceKind
from kartero.store import commit
from kartero.store.ids import new_message_id
from kartero.store.interface import (
    Delivery,
    DeliveryTarget,
    Outbound,
    QueueState,
    RecipientUpdate,
    TraceQuery,
)
from kartero.store.sqlite import SQLiteStore

T0 = 1_700_000_000.0
MESSAGE = b"Message-ID: <abc.123@client.example>\r\nSubject: not kept\r\n\r\nbody\r\n"


def received(message_id: str, at: float = T0) -> TraceEvent:
    return TraceEvent(TraceKind.RECEIVED, at, message_id, sender="alice@Client.Example",
                      recipients=("bob@example.test", "carol@xn--bcher-kva.example"), origin="smtp",
                      listener="smtp", client="127.0.0.9", helo="client.example",
                      tls="version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384", checks="spf=pass dkim=none dmarc=none",
                      size=len(MESSAGE))  # fmt: skip


def made_at(at: float) -> str:
    """A message id as kartero.store.ids makes them at `at` (ids start with their time)."""
    return f"{int(at * 1_000_000):014x}" + new_message_id()[14:]


def accept(store: SQLiteStore, at: float = T0) -> tuple[str, str]:
    """One message for bob (local) and carol (remote), with intake's events; its (message id, queue id)."""
    message_id, queue_id = made_at(at), made_at(at)
    outbound = Outbound("alice@client.example", (EnvelopeRecipient("carol@xn--bcher-kva.example"),), 2_000_000_000)
    events = [
        received(message_id, at),
        TraceEvent(TraceKind.STORED, at, message_id, recipient="bob@example.test", mailbox="INBOX"),
        TraceEvent(TraceKind.QUEUED, at, message_id, queue_id, recipient="carol@xn--bcher-kva.example"),
    ]
    store.mail.deliver_group([
        Delivery(message_id, MESSAGE, (DeliveryTarget(1),), int(at)),
        Delivery(queue_id, MESSAGE, (), int(at), None, outbound),
    ], events).result(10)  # fmt: skip
    return message_id, queue_id


def test_issue_14_a_path_is_kept_with_its_commits_and_found_every_way(store: SQLiteStore) -> None:
    message_id, queue_id = accept(store)
    (item,) = store.queue.due_recipients(2_000_000_000, 10)
    deferral = Reply(451, "4.7.1", "Greylisted, try again")
    store.queue.update_recipients(
        [RecipientUpdate(item.recipient_id, QueueState.DEFERRED, 1, int(T0) + 60, deferral, "4.7.1", "mx.bücher")],
        [TraceEvent(TraceKind.DEFERRED, T0 + 1, queue_id=queue_id, recipient=item.address, remote="mx.bücher",
                    reply=deferral.to_line(), status="4.7.1", attempt=1)],
    )  # fmt: skip
    store.queue.update_recipients(
        [RecipientUpdate(item.recipient_id, QueueState.DELIVERED, 2, 0, Reply(250, "2.0.0", "Ok: queued as X"))],
        [TraceEvent(TraceKind.DELIVERED, T0 + 2, queue_id=queue_id, recipient=item.address, remote="mx.bücher",
                    reply="250 2.0.0 Ok: queued as X", attempt=2)],
    )  # fmt: skip
    other_id, _ = accept(store, T0 + 100)  # a later message from the same sender

    def ids(**criteria: object) -> list[str]:
        return [m.message_id for m in store.trace.search(TraceQuery(**criteria)).messages]  # type: ignore[arg-type]

    assert ids(address="alice@client.example") == [other_id, message_id]  # newest first
    assert ids(address="alice@CLIENT.example.") == [other_id, message_id]  # the domain's case and form
    assert ids(address="carol@BÜCHER.example") == [other_id, message_id]  # a U-label finds its A-label
    assert ids(address="Alice@client.example") == []  # the local part as written
    assert ids(address="bob@example.test", until=T0 + 50) == [message_id]
    assert ids(address="bob@example.test", since=T0 + 50) == [other_id]
    assert ids(since=T0 - 1, until=T0 + 200) == [other_id, message_id]
    assert ids(message_id="<abc.123@client.example>") == [other_id, message_id]  # taken from the index
    assert ids(message_id="abc.123@client.example", until=T0 + 50) == [message_id]
    assert ids(id=queue_id) == [message_id] == ids(id=message_id)
    assert ids(id=message_id, address="nobody@example.test") == []
    result = store.trace.search(TraceQuery(address="alice@client.example", limit=1))
    assert result.more and [m.message_id for m in result.messages] == [other_id]

    (traced,) = store.trace.search(TraceQuery(id=queue_id)).messages
    assert [(e.kind, e.recipient, e.queue_id, e.message_id) for e in traced.events] == [
        (TraceKind.RECEIVED, None, None, message_id),
        (TraceKind.STORED, "bob@example.test", None, message_id),
        (TraceKind.QUEUED, "carol@xn--bcher-kva.example", queue_id, message_id),
        (TraceKind.DEFERRED, "carol@xn--bcher-kva.example", queue_id, message_id),  # found from the queue id
        (TraceKind.DELIVERED, "carol@xn--bcher-kva.example", queue_id, message_id),
    ]
    assert traced.events[0] == TraceEvent(
        TraceKind.RECEIVED, T0, message_id, header_id="abc.123@client.example", sender="alice@Client.Example",
        recipients=("bob@example.test", "carol@xn--bcher-kva.example"), origin="smtp", listener="smtp",
        client="127.0.0.9",
        helo="client.example", tls="version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384",
        checks="spf=pass dkim=none dmarc=none", size=len(MESSAGE),
    )  # fmt: skip
    assert traced.events[3] == TraceEvent(TraceKind.DEFERRED, T0 + 1, message_id, queue_id, recipient=item.address,
                                          remote="mx.bücher", reply="451 4.7.1 Greylisted, try again", status="4.7.1",
                                          attempt=1)  # fmt: skip
    assert traced.header_id == "abc.123@client.example" and traced.queue_ids == (queue_id,)
    assert traced.outcomes() == {"bob@example.test": TraceKind.STORED,
                                 "carol@xn--bcher-kva.example": TraceKind.DELIVERED}  # fmt: skip
    assert b"not kept" not in repr(traced).encode()


def test_issue_14_refusals_deletions_hostile_text_and_expiry(store: SQLiteStore) -> None:
    refused_id = made_at(T0)
    store.trace.record([TraceEvent(
        TraceKind.REFUSED, T0, refused_id, sender="", recipients=("bob@example.test",),
        helo="evil\r\nX-Injected: yes\x00\ud800" + "h" * 10_000, reply="550 5.7.1 " + "x" * 5000, note="policy",
    )])  # fmt: skip
    (refused,) = store.trace.search(TraceQuery(address="bob@example.test")).messages
    event = refused.events[0]
    assert event.helo is not None and event.helo.startswith("evil??X-Injected: yes??hhh") and len(event.helo) == 255
    assert event.reply is not None and len(event.reply) == 512 and event.sender == ""
    assert refused.outcomes() == {"bob@example.test": TraceKind.REFUSED}

    _, queue_id = accept(store, T0 + 10)
    assert store.queue.queue_delete(queue_id)
    (deleted,) = store.trace.search(TraceQuery(id=queue_id)).messages
    assert [(e.kind, e.recipient, e.note) for e in deleted.events[-1:]] == [
        (TraceKind.DELETED, "carol@xn--bcher-kva.example", "removed from the queue")]

    assert store.trace.expire(T0 + 5, 1) == 2  # one event and one address row a batch, oldest first
    assert store.trace.expire(T0 + 5, 100) == 0  # the refused message had one of each
    assert [m.message_id for m in store.trace.search(TraceQuery()).messages] == [deleted.message_id]
    # A message goes whole, with its later events (the deletion, made now): by the time it arrived.
    assert store.trace.expire(T0 + 20, 100) == 4 + 3  # received, stored, queued, deleted; 3 addresses
    assert store.trace.search(TraceQuery()).messages == ()


def test_issue_14_every_search_reads_an_index_a_bounded_number_of_rows(sqlite_store: SQLiteStore) -> None:
    """The listing by time pages through the ids' index (a message with many events costs more rows, not
    a scan); each query of a search is an index search in SQLite's plan, never a SCAN of a table."""
    ids = [made_at(T0 + n) for n in range(30)]
    sqlite_store.trace.record([TraceEvent(TraceKind.DEFERRED, T0 + n, m, "q" + m, recipient=f"r{k}@example.test")
                               for n, m in enumerate(ids) for k in range(3 if n % 2 else 30)])  # fmt: skip
    for limit in (1, 5, 29, 30, 31):
        result = sqlite_store.trace.search(TraceQuery(limit=limit))
        assert [m.message_id for m in result.messages] == ids[::-1][:limit] and result.more is (limit < 30)
    assert [m.message_id for m in sqlite_store.trace.search(TraceQuery(since=T0 + 10, until=T0 + 12)).messages] == [
        ids[11], ids[10]]
    db = sqlite_store.database.db()
    for sql in ("SELECT message_id FROM trace_addresses WHERE address = ? AND message_id >= ? AND message_id < ?"
                " ORDER BY message_id DESC LIMIT ?",
                "SELECT message_id FROM trace_events WHERE header_id = ? AND message_id >= ? AND message_id < ?"
                " ORDER BY message_id DESC LIMIT ?",
                "SELECT message_id FROM trace_events WHERE message_id >= ? AND message_id < ?"
                " ORDER BY message_id DESC LIMIT ?",
                "SELECT message_id FROM trace_events WHERE message_id = ? OR queue_id = ? LIMIT ?",
                "SELECT id FROM trace_events WHERE message_id < ? LIMIT ?"):  # fmt: skip
        plan = " ".join(str(r[3]) for r in db.execute("EXPLAIN QUERY PLAN " + sql, [""] * sql.count("?")))
        assert "SCAN" not in plan and "TEMP B-TREE" not in plan and "USING" in plan, (sql, plan)


def test_issue_14_activity_counts_events_per_hour_and_kind(store: SQLiteStore) -> None:
    """The dashboard's chart: events of the window by the hour, kind by kind, nothing outside it."""
    hour = 3600 * (int(T0) // 3600 + 1)
    early, _ = accept(store, hour - 100)  # before the window: its received/stored/queued do not count
    accept(store, hour + 10)
    accept(store, hour + 3600 + 5)
    store.trace.record([TraceEvent(TraceKind.DELIVERED, hour + 20, early, recipient="carol@example.org"),
                        TraceEvent(TraceKind.DEFERRED, hour + 7300, early, recipient="carol@example.org")])
    counts = store.trace.activity(hour, hour + 7200)
    assert counts == {
        (hour, "received"): 1, (hour, "stored"): 1, (hour, "queued"): 1, (hour, "delivered"): 1,
        (hour + 3600, "received"): 1, (hour + 3600, "stored"): 1, (hour + 3600, "queued"): 1,
    }  # fmt: skip


def test_issue_14_a_trace_that_cannot_be_kept_costs_the_message_nothing(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(commit, "insert_rows", broken)
    message_id = made_at(T0)
    stored = sqlite_store.mail.deliver_group([Delivery(message_id, MESSAGE, (DeliveryTarget(1),), int(T0))],
                                             [received(message_id)]).result(10)  # fmt: skip
    assert [[m.uid for m in s] for s in stored] == [[1]]
    assert sqlite_store.trace.search(TraceQuery()).messages == ()

"""Issue 11: the abuse events a cluster shares in PostgreSQL (store/abuse_pg.py), two processes' views of
one database: each reads the other's events once, in order, a late commit included; rows expire."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from kartero.store.abuse_pg import BATCH, PgAbuseStore
from kartero.store.interface import AbuseEvent, AbuseKind, StoreUnavailable
from kartero.store.pg_db import PgDatabase, migrate
from tests.pgserver import PrivatePostgres

FAILED = AbuseKind.LOGIN_FAILED


@pytest.fixture
def url(postgres: PrivatePostgres) -> str:
    url = postgres.new_database()
    migrate(url)
    return url


@pytest.fixture
def pair(url: str) -> Iterator[tuple[PgAbuseStore, PgAbuseStore]]:
    a, b = PgDatabase(url, node="a"), PgDatabase(url, node="b")
    yield PgAbuseStore(a), PgAbuseStore(b)
    a.close()
    b.close()


def test_issue_11_each_process_reads_the_others_events_once(pair: tuple[PgAbuseStore, PgAbuseStore]) -> None:
    a, b = pair
    now = time.time()
    sent = [AbuseEvent(FAILED, ("192.0.2.1", "alice@example.test"), now - 2),
            AbuseEvent(AbuseKind.SENT, ("alice@example.test",), now - 1),
            AbuseEvent(AbuseKind.GREY_SEEN, ("192.0.2.0/24", "s@x.example", "bob@example.test"), now)]  # fmt: skip
    assert a.exchange(sent, now - 3600) == []  # its own are not read back
    assert b.exchange([], now - 3600) == sent
    assert b.exchange([], now - 3600) == []  # once
    back = AbuseEvent(AbuseKind.LOGIN_OK, ("192.0.2.1", "alice@example.test"), now)
    assert b.exchange([back], now - 3600) == []
    assert a.exchange([], now - 3600) == [back]


def test_issue_11_a_nul_in_a_key_does_not_fail_the_batch(pair: tuple[PgAbuseStore, PgAbuseStore]) -> None:
    a, b = pair
    now = time.time()
    a.exchange([AbuseEvent(FAILED, ("n", "a\x00b"), now), AbuseEvent(FAILED, ("n", "c"), now)], now - 60)
    assert [e.key for e in b.exchange([], now - 60)] == [("n", "a\ufffdb"), ("n", "c")]


def test_issue_11_a_process_starting_reads_only_what_still_counts(
    url: str, pair: tuple[PgAbuseStore, PgAbuseStore]
) -> None:
    a, _ = pair
    now = time.time()
    old, recent = (AbuseEvent(FAILED, ("192.0.2.1", "alice@example.test"), t) for t in (now - 7200, now - 60))
    a.exchange([old, recent], now)
    database = PgDatabase(url, node="c")
    try:
        assert PgAbuseStore(database).exchange([], now - 3600) == [recent]
    finally:
        database.close()


def test_issue_11_a_row_committed_after_a_later_one_is_still_read(
    url: str, pair: tuple[PgAbuseStore, PgAbuseStore]
) -> None:
    """Reading by id alone would pass over a row whose transaction commits after a higher id's: its
    failure would never count at the other nodes. Reading below the oldest running transaction waits."""
    a, b = pair
    now = time.time()
    with psycopg.connect(url) as slow:  # a transaction (not autocommit) that inserts first, commits last
        slow.execute("INSERT INTO abuse_events (origin, kind, at, k1, k2) VALUES ('slow', %s, %s, 'n', 'first')",
                     (FAILED.value, now))  # fmt: skip
        a.exchange([AbuseEvent(FAILED, ("n", "second"), now)], now - 60)
        assert b.exchange([], now - 60) == []  # not past the running transaction
        slow.commit()
    assert [e.key[1] for e in b.exchange([], now - 60)] == ["first", "second"]
    assert b.exchange([], now - 60) == []


def test_issue_11_transaction_ids_are_ordered_as_numbers(url: str, pair: tuple[PgAbuseStore, PgAbuseStore]) -> None:
    """Read one at a time across a power of ten of transaction ids (999 then 1000): ordered as text, the
    reader took 1000 first and never read 999 (measured: 7,100 of 20,000 events lost)."""
    a, _ = pair
    database = PgDatabase(url, node="c")
    try:
        reader = PgAbuseStore(database, batch=1)
        now = time.time()
        a.exchange([AbuseEvent(FAILED, ("n", "first"), now)], now - 60)
        assert [e.key[1] for e in reader.exchange([], now - 60)] == ["first"]
        with psycopg.connect(url, autocommit=True) as conn:
            xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])  # type: ignore[index]
            boundary = 10 ** len(str(xid + 2))
            # Each subtransaction that writes takes a transaction id: burn them up to just below the boundary.
            conn.execute(f"CREATE TEMP TABLE burn (n int); DO $$ BEGIN FOR i IN 1..{boundary - xid - 3} LOOP"
                         " BEGIN INSERT INTO burn VALUES (i); EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $$")
        for name in ("below", "at", "above"):  # one transaction each: ids boundary - 1, boundary, ...
            a.exchange([AbuseEvent(FAILED, ("n", name), now)], now - 60)
        assert [e.key[1] for _ in range(4) for e in reader.exchange([], now - 60)] == ["below", "at", "above"]
    finally:
        database.close()


def test_issue_11_events_are_read_in_batches(pair: tuple[PgAbuseStore, PgAbuseStore]) -> None:
    a, b = pair
    now = time.time()
    a.exchange([AbuseEvent(AbuseKind.SENT, (f"u{i}@example.test",), now) for i in range(BATCH + 5)], now - 60)
    assert len(b.exchange([], now - 60)) == BATCH and b.is_behind
    assert len(b.exchange([], now - 60)) == 5 and not b.is_behind


def test_issue_11_rows_expire_by_kind_and_past_the_cap(url: str, pair: tuple[PgAbuseStore, PgAbuseStore]) -> None:
    a, _ = pair
    now = time.time()
    a.exchange([AbuseEvent(FAILED, ("n", "old"), now - 1000), AbuseEvent(FAILED, ("n", "new"), now),
                AbuseEvent(AbuseKind.SENT, ("u",), now - 1000)], now)  # fmt: skip
    assert a.expire({FAILED: now - 900}, 1000) == 1  # SENT is not this process's to expire
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT kind, k2 FROM abuse_events ORDER BY id").fetchall()
        assert rows == [("login_failed", "new"), ("sent", "")]
    a.exchange([AbuseEvent(AbuseKind.SENT, (f"u{i}",), now) for i in range(10)], now)
    assert a.expire({}, 4) == 8
    with psycopg.connect(url) as conn:
        assert [r[0] for r in conn.execute("SELECT k1 FROM abuse_events ORDER BY id")] == ["u6", "u7", "u8", "u9"]


def test_issue_11_the_database_away_is_store_unavailable(postgres: PrivatePostgres) -> None:
    url = postgres.new_database()
    migrate(url)
    database = PgDatabase(url, node="a")
    try:
        store = PgAbuseStore(database)
        database.close()  # every connection closed, the pool too: as if the server went away
        with pytest.raises(StoreUnavailable):
            store.exchange([AbuseEvent(FAILED, ("n", "a"), time.time())], 0.0)
    finally:
        database.close()

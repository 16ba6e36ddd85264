"""Issue 15: the import ledger (kartero/store/imports_sql.py) on both backends (their SQL differs): a rerun
skips what was stored, the same bytes twice in a folder are two messages, a claim an interrupted run never
stored is stored again under the same id, one it stored but did not confirm is not."""

from __future__ import annotations

from pathlib import Path

from kartero.mail.envelope import EnvelopeRecord, Origin
from kartero.store.copy import copy_store
from kartero.store.imports_sql import SqlImportLedger
from kartero.store.interface import INBOX, Delivery, DeliveryTarget, LedgerKey
from kartero.store.postgres import PgStore
from kartero.store.sqlite import SQLiteStore
from tests.pgserver import PrivatePostgres

A, B = LedgerKey("INBOX", "a" * 64), LedgerKey("INBOX", "b" * 64)
SOURCE = "mbox:/home/bob/mail"


def test_issue_15_a_rerun_skips_what_was_stored(store: SQLiteStore) -> None:
    ledger = SqlImportLedger(store.database)
    first = ledger.claim(1, SOURCE, "run1", [A, B, A])
    assert [(c.key, c.occurrence, c.is_new) for c in first] == [(A, 1, True), (B, 1, True), (A, 2, True)]
    assert len({c.blob_id for c in first}) == 3
    ledger.confirm(1, SOURCE, first)
    again = ledger.claim(1, SOURCE, "run2", [A, A, B])
    assert [(c.occurrence, c.is_new) for c in again] == [(1, False), (2, False), (1, False)]
    # A third copy of A in the source: that one is new; another source or folder knows nothing of these.
    more = ledger.claim(1, SOURCE, "run3", [A, A, A])
    assert [(c.occurrence, c.is_new) for c in more] == [(1, False), (2, False), (3, True)]
    assert [c.is_new for c in ledger.claim(1, "maildir:/x", "run4", [A])] == [True]
    assert [c.is_new for c in ledger.claim(1, SOURCE, "run5", [LedgerKey("Sent", A.digest)])] == [True]


def test_issue_15_an_interrupted_run_is_settled_by_the_next(store: SQLiteStore) -> None:
    ledger = SqlImportLedger(store.database)
    never_stored, stored_unconfirmed = ledger.claim(1, SOURCE, "run1", [A, B])  # then the process died
    store.mail.deliver(Delivery(stored_unconfirmed.blob_id, b"Subject: b\r\n\r\n", (DeliveryTarget(1, INBOX),),
                                1_700_000_000, EnvelopeRecord(Origin.IMPORT, ""))).result(10)  # fmt: skip
    retry = ledger.claim(1, SOURCE, "run2", [A, B])
    assert [(c.blob_id, c.is_new) for c in retry] == [(never_stored.blob_id, True), (stored_unconfirmed.blob_id, False)]
    assert [c.is_new for c in ledger.claim(1, SOURCE, "run3", [B])] == [False]  # settled as done


def test_issue_15_db_copy_carries_the_ledger(postgres: PrivatePostgres, tmp_path: Path) -> None:
    """An import into the embedded store, then `db copy` into PostgreSQL: the same import run there skips
    what was imported (and the copy, run twice, copies the ledger once)."""
    source = SQLiteStore(tmp_path / "data")
    source.start()
    bob = source.accounts.add_account("bob@example.test", "unused").id
    ledger = SqlImportLedger(source.database)
    keys = [LedgerKey("INBOX", f"{n:064x}") for n in range(1200)] + [A]  # past one batch of the copy
    ledger.confirm(bob, SOURCE, ledger.claim(bob, SOURCE, "run1", keys))
    source.close()
    source = SQLiteStore(tmp_path / "data")
    url = postgres.migrated_database()
    try:
        copy_store(source, url)
        copy_store(source, url)
    finally:
        source.close()
    target = PgStore(url, tmp_path / "node")
    try:
        account = target.accounts.get_account("bob@example.test")
        assert account is not None
        claims = SqlImportLedger(target.database).claim(account.id, SOURCE, "run2", [*keys, A])
        assert [c.is_new for c in claims] == [False] * len(keys) + [True]  # the second A is a new copy
    finally:
        target.close()

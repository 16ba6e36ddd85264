"""Issue 15: the import ledger (kartero/store/imports_sql.py) on both backends (their SQL differs): a rerun
skips what was stored, the same bytes twice in a folder are two messages, a claim an interrupted run never
stored is stored again under the same id, one it stored but did not confirm is not."""

from __future__ import annotations

from kartero.mail.envelope import EnvelopeRecord, Origin
from kartero.store.imports_sql import SqlImportLedger
from kartero.store.interface import INBOX, Delivery, DeliveryTarget, LedgerKey
from kartero.store.sqlite import SQLiteStore

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

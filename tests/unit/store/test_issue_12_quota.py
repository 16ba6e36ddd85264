"""Issue 12: per-account storage usage is kept exactly by the store (both backends), never rescanned."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.store.copy import copy_store
from kartero.store.ids import new_message_id
from kartero.store.interface import INBOX, Delivery, DeliveryTarget, FlagOp, MailboxExists, NoSuchMailbox
from kartero.store.pg_db import MIGRATIONS
from kartero.store.postgres import PgStore
from kartero.store.sqlite import SQLiteStore
from tests.pgserver import PrivatePostgres

ENVELOPE = EnvelopeRecord(Origin.SMTP, "a@b", (EnvelopeRecipient("b@x.test", ("SUCCESS",), "rfc822;b@x.test"),),
                          received_at=1_700_000_000, helo="client.example", tls=True)  # fmt: skip
BOXES = (INBOX, "Trash", "Folder")


def deliver(store: SQLiteStore | PgStore, size: int, *targets: tuple[int, str]) -> None:
    data = b"x" * (size - 2) + b"\r\n"
    wanted = tuple(DeliveryTarget(a, m) for a, m in targets)
    store.mail.deliver(Delivery(new_message_id(), data, wanted, 1_700_000_000, ENVELOPE)).result(10)


def recount(store: SQLiteStore) -> dict[int, tuple[int, int]]:
    """The usage of every account counted from its messages: what the store must agree with."""
    rows = store.database.db().execute(
        "SELECT a.id, CAST(COALESCE(SUM(m.size), 0) AS BIGINT), COUNT(m.id) FROM accounts a"
        " LEFT JOIN mailboxes b ON b.account_id = a.id LEFT JOIN messages m ON m.mailbox_id = b.id GROUP BY a.id"
    )
    return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}


def kept(store: SQLiteStore) -> dict[int, tuple[int, int]]:
    return {a: (u.used_bytes, u.messages) for a, u in store.mail.quota_usage().items()}


def account(store: SQLiteStore, address: str) -> int:
    found = store.accounts.get_account(address)
    return found.id if found else store.accounts.add_account(address, "unused").id


def mailbox_id(store: SQLiteStore, account_id: int, name: str) -> int | None:
    box = store.mail.get_mailbox(account_id, name)
    return box.id if box else None


TARGETS = st.lists(st.tuples(st.booleans(), st.sampled_from(BOXES)), min_size=1, max_size=3)
OPERATIONS = st.one_of(
    st.tuples(st.just("deliver"), st.integers(2, 5000), TARGETS),
    st.tuples(st.just("copy"), st.sampled_from(BOXES), st.sampled_from(BOXES), st.booleans(), st.booleans()),
    st.tuples(st.just("expunge"), st.booleans(), st.sampled_from(BOXES), st.integers(1, 3)),
    st.tuples(st.just("delete_mailbox"), st.booleans(), st.sampled_from(BOXES[1:])),
    st.tuples(st.just("delete_account"), st.just(False)),
)


def apply(store: SQLiteStore, operation: tuple[object, ...]) -> None:
    kind = operation[0]
    bob = account(store, "bob@example.test")
    carol = account(store, "carol@example.test")
    who = {True: carol, False: bob}
    if kind == "deliver":
        _, size, targets = operation
        assert isinstance(size, int) and isinstance(targets, list)
        present = [(who[c], m) for c, m in targets if mailbox_id(store, who[c], m) is not None]
        if present:
            deliver(store, size, *present)
    elif kind == "copy":
        _, source, target, move, other = operation
        assert isinstance(source, str) and isinstance(target, str)
        owner = who[bool(other)]
        source_id, target_id = mailbox_id(store, owner, source), mailbox_id(store, owner, target)
        if source_id is None or target_id is None:
            return
        uids = [row.uid for row in store.mail.message_rows(source_id)][::2]
        if uids:
            store.mail.copy_messages(source_id, uids, target_id, move=bool(move))
    elif kind == "expunge":
        _, other, name, step = operation
        assert isinstance(name, str) and isinstance(step, int)
        box = mailbox_id(store, who[bool(other)], name)
        if box is None:
            return
        uids = [row.uid for row in store.mail.message_rows(box)][::step]
        store.mail.update_flags(box, uids, FlagOp.ADD, frozenset({"\\Deleted"}), None)
        store.mail.expunge(box)
    elif kind == "delete_mailbox":
        _, other, name = operation
        assert isinstance(name, str)
        try:
            store.mail.delete_mailbox(who[bool(other)], name)
        except NoSuchMailbox:
            with contextlib.suppress(MailboxExists):
                store.mail.create_mailbox(who[bool(other)], name)
    else:
        store.accounts.delete_account("carol@example.test")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(OPERATIONS, min_size=1, max_size=12))
def test_issue_12_usage_equals_a_recount_after_any_operations(store: SQLiteStore, operations: list[tuple[object, ...]]
                                                              ) -> None:  # fmt: skip
    """Delivery (several recipients and mailboxes), COPY, MOVE, EXPUNGE, mailbox and account deletion:
    after each, the kept usage of every account is what counting its messages gives. (The store is
    shared by the examples: the invariant holds whatever came before.)"""
    for operation in operations:
        apply(store, operation)
        assert kept(store) == recount(store)


def test_issue_12_quota_limits_and_the_warned_mark(store: SQLiteStore) -> None:
    bob = account(store, "bob@example.test")
    assert store.mail.quota_usage([bob])[bob].limit_bytes is None  # the default applies
    assert store.accounts.set_quota("bob@example.test", 1000)
    assert not store.accounts.set_quota("nobody@example.test", 1000)
    deliver(store, 100, (bob, INBOX))
    usage = store.mail.quota_usage([bob, 9999])
    assert list(usage) == [bob]
    assert (usage[bob].limit_bytes, usage[bob].used_bytes, usage[bob].messages) == (1000, 100, 1)
    assert usage[bob].effective_limit(5) == 1000 and not usage[bob].warned
    assert store.accounts.set_quota("bob@example.test", None)
    assert store.mail.quota_usage([bob])[bob].effective_limit(5) == 5
    assert store.mail.mark_quota_warned(bob, True)
    assert not store.mail.mark_quota_warned(bob, True)  # only the first caller sends the warning
    assert store.mail.quota_usage([bob])[bob].warned
    assert store.mail.mark_quota_warned(bob, False)


def test_issue_12_an_older_database_gets_its_usage_counted_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data")
    store.start()
    bob = store.accounts.add_account("bob@example.test", "unused").id
    deliver(store, 300, (bob, INBOX), (bob, "Trash"))
    deliver(store, 50, (bob, INBOX))
    store.close()
    db = sqlite3.connect(tmp_path / "data" / "kartero.db")
    for column in ("used_bytes", "used_messages"):  # as a database made before issue 12
        db.execute(f"ALTER TABLE mailboxes DROP COLUMN {column}")
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path / "data")
    try:
        usage = store.mail.quota_usage()[bob]
        assert (usage.used_bytes, usage.messages) == (650, 3)
    finally:
        store.close()


def test_issue_12_the_postgresql_migration_counts_the_mail_already_stored(postgres: PrivatePostgres,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    store = PgStore(postgres.migrated_database(), tmp_path / "node")
    store.start()
    try:
        bob = store.accounts.add_account("bob@example.test", "unused").id
        deliver(store, 300, (bob, INBOX), (bob, "Trash"))
        deliver(store, 50, (bob, INBOX))
        (migration,) = [m for m in MIGRATIONS if "ADD COLUMN used_bytes" in m]
        count = migration[migration.index("UPDATE mailboxes") :]
        with store.database.write() as db:  # as a database before the counters: all zero, then counted
            db.execute("UPDATE mailboxes SET used_bytes = 0, used_messages = 0")
            db.execute(count.strip().rstrip(";"))
        usage = store.mail.quota_usage()[bob]
        assert (usage.used_bytes, usage.messages) == (650, 3)
    finally:
        store.close()


def test_issue_12_db_copy_keeps_quotas_and_usage(postgres: PrivatePostgres, tmp_path: Path) -> None:
    source = SQLiteStore(tmp_path / "data")
    source.start()
    bob = source.accounts.add_account("bob@example.test", "unused").id
    source.accounts.add_account("carol@example.test", "unused")
    source.accounts.set_quota("bob@example.test", 5000)
    source.accounts.set_quota("carol@example.test", 0)
    deliver(source, 300, (bob, INBOX), (bob, "Trash"))
    deliver(source, 4400, (bob, INBOX))
    source.mail.mark_quota_warned(bob, True)
    source.close()
    source = SQLiteStore(tmp_path / "data")
    url = postgres.migrated_database()
    try:
        copy_store(source, url)
        copy_store(source, url)  # a second run copies nothing, and counts nothing twice
    finally:
        source.close()
    target = PgStore(url, tmp_path / "node")
    try:
        copied = {u.address: (u.limit_bytes, u.used_bytes, u.messages, u.warned)
                  for u in target.mail.quota_usage().values()}  # fmt: skip
        assert copied == {"bob@example.test": (5000, 5000, 3, True), "carol@example.test": (0, 0, 0, False)}
    finally:
        target.close()

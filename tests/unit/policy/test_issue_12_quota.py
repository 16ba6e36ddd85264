"""Issue 12: quotas at RCPT (452 4.2.2 from memory, on both backends) and the 90 % warning, once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from kartero.auth.accounts import DirectoryCache
from kartero.mail import replies
from kartero.mail.address import Path as SMTPPath
from kartero.mail.address import parse_mailbox
from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.policy.decisions import Accept, Decision, RcptContext, Reject
from kartero.policy.inbound import InboundPolicy
from kartero.policy.quota import QuotaBook
from kartero.policy.submission import SubmissionPolicy
from kartero.store.ids import new_message_id
from kartero.store.interface import INBOX, Delivery, DeliveryTarget, FlagOp
from kartero.store.sqlite import SQLiteStore

ENVELOPE = EnvelopeRecord(Origin.SMTP, "a@b", (EnvelopeRecipient("bob@example.test"),), received_at=1_700_000_000)
FULL = Reject(replies.MAILBOX_FULL)


def deliver(store: SQLiteStore, size: int, *account_ids: int) -> None:
    targets = tuple(DeliveryTarget(a, INBOX) for a in account_ids)
    data = b"Subject: x\r\n\r\n" + b"x" * (size - 14)
    store.mail.deliver(Delivery(new_message_id(), data, targets, 1_700_000_000, ENVELOPE)).result(10)


class Heard:
    """A store listener registered after the book's: once it has heard a change, so has the book."""

    def __init__(self, store: SQLiteStore) -> None:
        self.event = threading.Event()
        store.mail.add_listener(lambda ids: self.event.set())

    def wait(self, book: QuotaBook) -> None:
        assert self.event.wait(10)
        self.event.clear()
        book.settle()


@pytest.fixture
def book(store: SQLiteStore) -> Iterator[QuotaBook]:
    """bob (1) with 1000 octets, carol (2) without a limit of her own; default quota 5000."""
    store.accounts.add_account("carol@example.test", "unused")
    store.accounts.set_quota("bob@example.test", 1000)
    quota = QuotaBook(store.mail, 5000, "mx.example.test")
    quota.prime()
    quota.attach()
    yield quota
    quota.close()


def rcpt(policy: InboundPolicy | SubmissionPolicy, address: str, size: int | None = None) -> Decision:
    return asyncio.run(policy.check_rcpt(SMTPPath(parse_mailbox(address)), RcptContext("192.0.2.1", "a@b", size)))


def policies(store: SQLiteStore, book: QuotaBook) -> tuple[InboundPolicy, SubmissionPolicy]:
    directory = DirectoryCache(store.accounts, ("example.test",))
    directory.prime()
    mx = InboundPolicy(directory, "example.test")
    submission = SubmissionPolicy(directory, "example.test")
    mx.quota = submission.quota = book
    return mx, submission


def test_issue_12_rcpt_452_when_full_or_when_the_declared_size_does_not_fit(store: SQLiteStore,
                                                                             book: QuotaBook) -> None:  # fmt: skip
    heard = Heard(store)
    for policy in policies(store, book):  # the MX, and submission to a local recipient alike
        assert isinstance(rcpt(policy, "bob@example.test"), Accept)
        assert isinstance(rcpt(policy, "bob@example.test", 1000), Accept)  # fits exactly
        assert rcpt(policy, "bob@example.test", 1001) == FULL
    assert FULL.reply.to_bytes() == b"452 4.2.2 Mailbox full\r\n"
    deliver(store, 600, 1)
    heard.wait(book)
    mx, submission = policies(store, book)
    assert isinstance(rcpt(mx, "bob@example.test", 400), Accept)
    assert rcpt(mx, "bob@example.test", 401) == FULL
    deliver(store, 600, 1)  # accepted before: stored though it passes the limit
    heard.wait(book)
    assert rcpt(mx, "bob@example.test") == FULL
    assert rcpt(submission, "bob@example.test") == FULL
    assert isinstance(rcpt(mx, "carol@example.test", 4999), Accept)  # the default quota: 5000
    assert rcpt(mx, "carol@example.test", 5001) == FULL


def test_issue_12_an_alias_is_refused_only_when_every_account_is_full(store: SQLiteStore, book: QuotaBook) -> None:
    store.accounts.add_alias("team@example.test", "bob@example.test")
    store.accounts.add_alias("team@example.test", "carol@example.test")
    heard = Heard(store)
    deliver(store, 1000, 1)
    heard.wait(book)
    mx, _ = policies(store, book)
    assert rcpt(mx, "bob@example.test") == FULL
    assert isinstance(decision := rcpt(mx, "team@example.test"), Accept) and set(decision.account_ids) == {1, 2}
    deliver(store, 5000, 2)
    heard.wait(book)
    assert rcpt(mx, "team@example.test") == FULL


def test_issue_12_a_new_limit_is_read_after_a_directory_reload(store: SQLiteStore, book: QuotaBook) -> None:
    mx, _ = policies(store, book)
    assert rcpt(mx, "carol@example.test", 10_000) == FULL  # the default quota: 5000
    store.accounts.set_quota("carol@example.test", 0)  # no limit
    book.directory_reloaded()
    book.settle()
    assert isinstance(rcpt(mx, "carol@example.test", 10_000), Accept)


def inbox_rows(store: SQLiteStore, account_id: int) -> list[bytes]:
    inbox = store.mail.get_mailbox(account_id, INBOX)
    assert inbox is not None
    return [store.mail.read_message(row.blob_id) for row in store.mail.message_rows(inbox.id)]


def test_issue_12_the_90_percent_warning_arrives_once_per_crossing(store: SQLiteStore, book: QuotaBook) -> None:
    heard = Heard(store)
    deliver(store, 800, 1)
    heard.wait(book)
    assert len(inbox_rows(store, 1)) == 1  # 80 %: no warning
    deliver(store, 100, 1)  # 90 %
    heard.wait(book)
    heard.wait(book)  # the warning's own delivery
    messages = inbox_rows(store, 1)
    assert len(messages) == 3
    warning = messages[-1]
    assert b"\r\nFrom: Mail System <postmaster@example.test>\r\n" in warning
    assert b"\r\nTo: <bob@example.test>\r\nSubject: Your mailbox is 90% full\r\n" in warning
    assert b"\r\nAuto-Submitted: auto-generated\r\n" in warning and warning.startswith(b"Return-Path: <>\r\n")
    assert store.mail.quota_usage([1])[1].warned
    deliver(store, 50, 1)  # still above: no second warning
    heard.wait(book)
    assert len(inbox_rows(store, 1)) == 4
    inbox = store.mail.get_mailbox(1, INBOX)
    assert inbox is not None
    store.mail.update_flags(inbox.id, [1, 2], FlagOp.ADD, frozenset({"\\Deleted"}), None)
    store.mail.expunge(inbox.id)  # below 90 % again: the mark goes
    heard.wait(book)
    assert not store.mail.quota_usage([1])[1].warned
    deliver(store, 800, 1)  # and the next crossing warns again
    heard.wait(book)
    heard.wait(book)
    assert sum(b"Auto-Submitted: auto-generated" in m for m in inbox_rows(store, 1)) == 2

"""Issue 13: what the content filters decide, carried out by intake with the real store (both backends):
refused, discarded, edited, recipients and sender changed, spam to Junk, and Sieve overriding Junk."""

from __future__ import annotations

import asyncio

from kartero.auth.accounts import DirectoryCache
from kartero.concurrency import Blocking
from kartero.filters.chain import Filters
from kartero.filters.model import (
    AddHeader,
    AddRecipient,
    ChangeSender,
    DeleteRecipient,
    Discard,
    Quarantine,
    Refuse,
    Transaction,
)
from kartero.intake import Incoming, Intake, Refused, SmtpArrival, Stored, Target
from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.mail.replies import Reply
from kartero.rules.engine import Rules
from kartero.store.interface import Content
from kartero.store.sqlite import SQLiteStore
from tests.unit.filters.test_chain import CLIENT, Scripted

ARRIVAL = SmtpArrival("client.remote.test", "192.0.2.7", "ESMTP", None, None)
MESSAGE = b"From: alice@remote.test\r\nSubject: Hello\r\n\r\nBody.\r\n"
REJECT = Reply(550, "5.7.1", "Command rejected")


def deliver(store: SQLiteStore, filters: list[Scripted], *addresses: str,
            data: bytes = MESSAGE) -> tuple[Stored | Refused, Incoming]:  # fmt: skip
    directory = DirectoryCache(store.accounts, ("example.test",))
    directory.prime()
    rules = Rules(store.sieve, store.mail, store.accounts.directory_version, hostname="mx.example.test")
    intake = Intake(store.mail, directory, hostname="mx.example.test", queue_lifetime_s=3600.0, blocking=Blocking(),
                    rules=rules)  # fmt: skip
    targets = []
    for address in addresses:
        account = store.accounts.get_account(address)
        assert account is not None
        targets.append(Target(EnvelopeRecipient(address), (account.id,)))
    envelope = EnvelopeRecord(Origin.SMTP, "alice@remote.test", tuple(t.recipient for t in targets))
    chain = Filters(filters, "X-Spam").session()  # type: ignore[arg-type]
    assert chain is not None
    tx = Transaction("client.remote.test", None, None, None, "alice@remote.test", (), addresses)

    async def run_filters(data: bytes | Content, message_id: str) -> object:
        return await chain.message(Transaction(tx.helo, None, None, None, tx.mail_from, (), addresses, message_id),
                                   data)  # fmt: skip

    incoming = Incoming(envelope, data, tuple(targets), ARRIVAL, filter=run_filters)  # type: ignore[arg-type]

    async def go() -> Stored | Refused:
        outcome = await intake.accept(incoming)
        await intake.drain()
        return outcome

    return asyncio.run(go()), incoming


def box(store: SQLiteStore, address: str, name: str) -> list[bytes]:
    account = store.accounts.get_account(address)
    assert account is not None
    mailbox = store.mail.get_mailbox(account.id, name)
    assert mailbox is not None
    return [store.mail.read_message(r.blob_id) for r in store.mail.message_rows(mailbox.id)]


def test_issue_13_a_refusal_at_the_end_of_data_stores_nothing(store: SQLiteStore) -> None:
    outcome, _ = deliver(store, [Scripted("a", {"message": Refuse(REJECT)})], "bob@example.test")
    assert outcome == Refused(REJECT, "filter")
    assert box(store, "bob@example.test", "INBOX") == []


def test_issue_13_discard_answers_250_and_stores_nothing(store: SQLiteStore) -> None:
    outcome, _ = deliver(store, [Scripted("a", {"message": Discard()})], "bob@example.test")
    assert isinstance(outcome, Stored) and outcome.reply.code == 250
    assert box(store, "bob@example.test", "INBOX") == []


def test_issue_13_changes_are_in_the_stored_copy_and_spam_goes_to_junk(store: SQLiteStore) -> None:
    outcome, _ = deliver(store, [Scripted("a", changes=(AddHeader("X-Spam", "Yes"),))], "bob@example.test")
    assert isinstance(outcome, Stored)
    assert box(store, "bob@example.test", "INBOX") == []
    (stored,) = box(store, "bob@example.test", "Junk")
    assert stored.endswith(b"Subject: Hello\r\nX-Spam: Yes\r\n\r\nBody.\r\n")
    assert stored.startswith(b"Return-Path: <alice@remote.test>\r\nReceived: from client.remote.test")


def test_issue_13_quarantine_goes_to_junk(store: SQLiteStore) -> None:
    outcome, _ = deliver(store, [Scripted("a", changes=(Quarantine("held"),))], "bob@example.test")
    assert isinstance(outcome, Stored)
    assert len(box(store, "bob@example.test", "Junk")) == 1


def test_issue_13_recipients_and_sender_changed_by_a_filter(store: SQLiteStore) -> None:
    store.accounts.add_account("carol@example.test", "unused")
    store.accounts.add_account("dave@example.test", "unused")
    changes = (AddRecipient("Carol@Example.TEST"), AddRecipient("nobody@example.test"),
               DeleteRecipient("BOB@example.test"), ChangeSender("bounces@remote.test"))  # fmt: skip
    outcome, _ = deliver(store, [Scripted("a", changes=changes)], "bob@example.test", "dave@example.test")
    assert isinstance(outcome, Stored)
    assert box(store, "bob@example.test", "INBOX") == []
    (carol,) = box(store, "carol@example.test", "INBOX")
    (dave,) = box(store, "dave@example.test", "INBOX")
    assert carol == dave and carol.startswith(b"Return-Path: <bounces@remote.test>\r\n")
    account = store.accounts.get_account("carol@example.test")
    assert account is not None
    inbox = store.mail.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    (row,) = store.mail.message_rows(inbox.id)
    record = store.mail.read_envelope(row.blob_id)
    assert record.sender == "bounces@remote.test"
    assert [r.address for r in record.recipients] == ["dave@example.test", "carol@example.test"]


def test_issue_13_every_recipient_deleted_is_a_discard(store: SQLiteStore) -> None:
    outcome, _ = deliver(store, [Scripted("a", changes=(DeleteRecipient("bob@example.test"),))], "bob@example.test")
    assert isinstance(outcome, Stored)
    assert box(store, "bob@example.test", "INBOX") == []


def test_issue_13_sieve_sees_the_spam_header_and_may_keep_it_in_the_inbox(store: SQLiteStore) -> None:
    bob = store.accounts.get_account("bob@example.test")
    assert bob is not None
    store.sieve.put_script(bob.id, "main", 'require "fileinto";\n'
                           'if header :is "X-Spam" "Yes" { if address :is "from" "alice@remote.test" '
                           '{ fileinto "INBOX"; stop; } }\n')  # fmt: skip
    store.sieve.set_active(bob.id, "main")
    spam = [Scripted("a", changes=(AddHeader("X-Spam", "Yes"),))]
    deliver(store, spam, "bob@example.test")
    assert len(box(store, "bob@example.test", "INBOX")) == 1
    # a plain keep follows the filter's verdict
    deliver(store, spam, "bob@example.test", data=MESSAGE.replace(b"alice@remote", b"mallory@remote"))
    assert len(box(store, "bob@example.test", "Junk")) == 1


def test_issue_13_a_recipient_deleted_as_the_client_wrote_it_matches_its_canonical_target(store: SQLiteStore) -> None:
    """The milter names RCPT as the client wrote it (U-label domain); a remote target is queued under the
    A-label form. The delete must still take it out."""
    directory = DirectoryCache(store.accounts, ("example.test",))
    directory.prime()
    intake = Intake(store.mail, directory, hostname="mx.example.test", queue_lifetime_s=3600.0, blocking=Blocking())
    bob = store.accounts.get_account("bob@example.test")
    assert bob is not None
    targets = (Target(EnvelopeRecipient("bob@example.test"), (bob.id,)),
               Target(EnvelopeRecipient("dave@xn--bcher-kva.example"), is_remote=True))  # fmt: skip
    envelope = EnvelopeRecord(Origin.SUBMISSION, "bob@example.test", tuple(t.recipient for t in targets))
    chain = Filters([Scripted("a", changes=(DeleteRecipient("Dave@bücher.example"),))], "X-Spam").session()
    assert chain is not None
    tx = Transaction("c", None, None, "bob@example.test", "bob@example.test", (), ())

    async def go() -> Stored | Refused:
        await chain.connect(CLIENT)
        await chain.mail_from(tx)
        incoming = Incoming(envelope, MESSAGE, targets, ARRIVAL,
                            filter=lambda data, message_id: chain.message(tx, data))  # fmt: skip
        return await intake.accept(incoming)

    assert isinstance(asyncio.run(go()), Stored)
    assert store.queue.queue_entries() == []  # nothing queued for the deleted remote recipient
    assert len(box(store, "bob@example.test", "INBOX")) == 1

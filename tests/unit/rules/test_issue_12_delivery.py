"""Issue 12: Sieve at final delivery through intake, with the real store (both backends), interpreter and
rules: where the copies go, with which flags and header, what is refused in the reply, and what is sent
afterwards (rejection notices, vacation replies) through the queue."""

from __future__ import annotations

import asyncio
import email
import email.policy

import pytest

from kartero.auth.accounts import DirectoryCache
from kartero.concurrency import Blocking
from kartero.intake import Incoming, Intake, Refused, SmtpArrival, Stored, Target
from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.mail.replies import Reply
from kartero.rules.engine import Rules
from kartero.store.sqlite import SQLiteStore

ARRIVAL = SmtpArrival("client.remote.test", "192.0.2.7", "ESMTP", None, None)
MESSAGE = (b"From: Alice <alice@remote.test>\r\nTo: bob@example.test\r\nSubject: Hello there\r\n"
           b"Message-ID: <m1@remote.test>\r\n\r\nBody.\r\n")  # fmt: skip


def run(store: SQLiteStore, incoming: Incoming) -> Stored | Refused:
    directory = DirectoryCache(store.accounts, ("example.test",))
    directory.prime()
    rules = Rules(store.sieve, store.mail, store.accounts.directory_version, hostname="mx.example.test")
    intake = Intake(store.mail, directory, hostname="mx.example.test", queue_lifetime_s=3600.0, blocking=Blocking(),
                    rules=rules)  # fmt: skip
    return asyncio.run(intake.accept(incoming))


def activate(store: SQLiteStore, address: str, text: str) -> int:
    account = store.accounts.get_account(address)
    assert account is not None
    store.sieve.put_script(account.id, "main", text)
    store.sieve.set_active(account.id, "main")
    return account.id


def to(store: SQLiteStore, *addresses: str, origin: Origin = Origin.SMTP, sender: str = "alice@remote.test",
       data: bytes = MESSAGE) -> Incoming:  # fmt: skip
    targets = []
    for address in addresses:
        account = store.accounts.get_account(address)
        assert account is not None
        targets.append(Target(EnvelopeRecipient(address), (account.id,)))
    envelope = EnvelopeRecord(origin, sender, tuple(t.recipient for t in targets))
    return Incoming(envelope, data, tuple(targets), ARRIVAL)


def mailbox(store: SQLiteStore, account_id: int, name: str) -> list[tuple[frozenset[str], bytes]]:
    box = store.mail.get_mailbox(account_id, name)
    if box is None:
        return []
    return [(r.flags, store.mail.read_message(r.blob_id)) for r in store.mail.message_rows(box.id)]


def queued(store: SQLiteStore) -> list[tuple[str, list[str], bytes]]:
    return [(e.sender, [r.address for r in e.recipients], store.mail.read_message(e.id))
            for e in store.queue.queue_entries()]  # fmt: skip


def test_issue_12_fileinto_with_flags_and_an_edited_header(store: SQLiteStore) -> None:
    bob = activate(store, "bob@example.test", """
require ["fileinto", "mailbox", "imap4flags", "editheader"];
addheader "X-Rule" "greeting";
fileinto :create :flags "\\\\Flagged $Greeting" "Sorted/Greetings";
""")
    assert isinstance(run(store, to(store, "bob@example.test")), Stored)
    assert mailbox(store, bob, "INBOX") == []
    assert store.mail.get_mailbox(bob, "Sorted") is not None  # the superior too, as IMAP CREATE
    ((flags, stored),) = mailbox(store, bob, "Sorted/Greetings")
    assert flags == {"\\Flagged", "$Greeting"}
    assert stored.startswith(b"Return-Path: <alice@remote.test>\r\nReceived: from client.remote.test")
    assert b"\r\nX-Rule: greeting\r\n" in stored or stored.split(b"\r\n", 4)[-1].startswith(b"X-Rule: greeting\r\n")
    assert stored.endswith(b"\r\n\r\nBody.\r\n")


def test_issue_12_a_missing_mailbox_without_create_keeps_in_inbox(store: SQLiteStore) -> None:
    bob = activate(store, "bob@example.test", 'require "fileinto";\nfileinto "Missing";\n')
    assert isinstance(run(store, to(store, "bob@example.test")), Stored)
    ((_, stored),) = mailbox(store, bob, "INBOX")
    assert stored.endswith(MESSAGE)


def test_issue_12_accounts_without_a_script_are_untouched(store: SQLiteStore) -> None:
    store.accounts.add_account("carol@example.test", "h")
    bob = activate(store, "bob@example.test", "discard;\n")
    carol = store.accounts.get_account("carol@example.test")
    assert carol is not None
    assert isinstance(run(store, to(store, "bob@example.test", "carol@example.test")), Stored)
    assert mailbox(store, bob, "INBOX") == []
    ((_, stored),) = mailbox(store, carol.id, "INBOX")
    assert stored.endswith(MESSAGE)


def test_issue_12_reject_for_the_only_recipient_is_the_smtp_reply(store: SQLiteStore) -> None:
    bob = activate(store, "bob@example.test", 'require "reject";\nreject text:\nNo mail\r\nfrom you,\tplease.\n.\n;\n')
    outcome = run(store, to(store, "bob@example.test"))
    assert outcome == Refused(Reply(550, "5.7.1", "No mail from you, please."), "sieve reject")
    assert mailbox(store, bob, "INBOX") == [] and queued(store) == []


def test_issue_12_reject_among_several_recipients_sends_a_notice(store: SQLiteStore) -> None:
    store.accounts.add_account("carol@example.test", "h")
    activate(store, "bob@example.test", 'require "reject";\nreject "Not from you.";\n')
    assert isinstance(run(store, to(store, "bob@example.test", "carol@example.test")), Stored)
    ((sender, recipients, notice),) = queued(store)
    assert (sender, recipients) == ("", ["alice@remote.test"])
    parsed = email.message_from_bytes(notice, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert b"Not from you." in notice and b"Final-Recipient: rfc822; bob@example.test" in notice


def test_issue_12_reject_on_submission_sends_a_notice_and_never_to_the_null_sender(store: SQLiteStore) -> None:
    store.accounts.add_account("carol@example.test", "h")
    activate(store, "bob@example.test", 'require "reject";\nreject "Not from you.";\n')
    assert isinstance(run(store, to(store, "bob@example.test", origin=Origin.SUBMISSION, sender="carol@example.test")),
                      Stored)  # fmt: skip
    carol = store.accounts.get_account("carol@example.test")
    assert carol is not None
    ((_, notice),) = mailbox(store, carol.id, "INBOX")
    assert notice.startswith(b"Return-Path: <>\r\n") and b"Not from you." in notice
    assert isinstance(run(store, to(store, "bob@example.test", "carol@example.test", sender="")), Stored)
    assert queued(store) == [] and len(mailbox(store, carol.id, "INBOX")) == 2  # no notice for a bounce


def test_issue_12_vacation_once_per_sender_and_period(store: SQLiteStore) -> None:
    bob = activate(store, "bob@example.test", 'require "vacation";\nvacation :days 3 "Away.";\n')
    for _ in range(3):
        assert isinstance(run(store, to(store, "bob@example.test")), Stored)
    assert len(mailbox(store, bob, "INBOX")) == 3  # vacation keeps the message
    ((sender, recipients, reply),) = queued(store)
    assert (sender, recipients) == ("", ["alice@remote.test"])
    parsed = email.message_from_bytes(reply, policy=email.policy.default)
    assert parsed["Subject"] == "Auto: Hello there"
    assert parsed["In-Reply-To"] == "<m1@remote.test>"
    other = MESSAGE.replace(b"alice@remote.test", b"dave@remote.test")
    assert isinstance(run(store, to(store, "bob@example.test", sender="dave@remote.test", data=other)), Stored)
    assert [q[1] for q in queued(store)] == [["alice@remote.test"], ["dave@remote.test"]]


def test_issue_12_duplicate_sees_earlier_deliveries_only(store: SQLiteStore) -> None:
    bob = activate(store, "bob@example.test", """
require ["duplicate", "fileinto", "mailbox"];
if duplicate { fileinto :create "Dups"; }
""")
    assert isinstance(run(store, to(store, "bob@example.test")), Stored)
    assert isinstance(run(store, to(store, "bob@example.test")), Stored)
    assert len(mailbox(store, bob, "INBOX")) == 1
    assert len(mailbox(store, bob, "Dups")) == 1


def test_issue_12_redirect_queues_a_copy_marked_delivered_to(store: SQLiteStore) -> None:
    bob = activate(store, "bob@example.test", 'redirect "bob@elsewhere.test";\n')
    assert isinstance(run(store, to(store, "bob@example.test")), Stored)
    assert mailbox(store, bob, "INBOX") == []
    ((_, recipients, copy),) = queued(store)
    assert recipients == ["bob@elsewhere.test"]
    assert copy.startswith(b"Delivered-To: bob@example.test\r\nReceived: from client.remote.test")
    assert copy.endswith(MESSAGE)


@pytest.mark.parametrize("script", ["if true { stop; ", "require \"fileinto\";\nfileinto \"${bad\";\n"])
def test_issue_12_a_script_that_no_longer_compiles_keeps_the_message(store: SQLiteStore, script: str) -> None:
    account = store.accounts.get_account("bob@example.test")
    assert account is not None
    store.sieve.put_script(account.id, "main", script)  # stored without a check, as by an older version
    store.sieve.set_active(account.id, "main")
    assert isinstance(run(store, to(store, "bob@example.test")), Stored)
    ((_, stored),) = mailbox(store, account.id, "INBOX")
    assert stored.endswith(MESSAGE)


def test_issue_12_vacation_from_must_be_an_address_of_the_account(store: SQLiteStore) -> None:
    activate(store, "bob@example.test", 'require "vacation";\nvacation :from "ceo@example.test" "Away.";\n')
    assert isinstance(run(store, to(store, "bob@example.test")), Stored)
    ((_, _, reply),) = queued(store)
    assert b"\r\nFrom: <bob@example.test>\r\n" in b"\r\n" + reply
    activate(store, "bob@example.test", 'require "vacation";\nvacation :from "Bob@Example.test" :handle "2" "x";\n')
    assert isinstance(run(store, to(store, "bob@example.test")), Stored)
    assert b"\r\nFrom: <Bob@Example.test>\r\n" in b"\r\n" + queued(store)[1][2]

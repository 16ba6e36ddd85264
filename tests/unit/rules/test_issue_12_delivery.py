"""Issue 12: Sieve at final delivery through intake, with the real store (both backends), interpreter and
rules: where the copies go, with which flags and header, what is refused in the reply, and what is sent
afterwards (rejection notices, vacation replies) through the queue."""

from __future__ import annotations

import asyncio
import email
import email.policy
from dataclasses import replace

import pytest

from kartero.auth.accounts import DirectoryCache
from kartero.concurrency import Blocking
from kartero.intake import Incoming, Intake, Refused, SmtpArrival, Stored, Target
from kartero.mail import replies
from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.mail.replies import Reply
from kartero.policy.decisions import AcceptMessage, MessageDecision
from kartero.rules.engine import Rules
from kartero.store.interface import Content
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

    async def accept() -> Stored | Refused:
        outcome = await intake.accept(incoming)
        await intake.drain()  # the replies are sent after the answer
        return outcome

    return asyncio.run(accept())


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


# -- review findings (issue 12): each failed before its fix ------------------------------------------


def test_issue_12_vacation_from_is_not_taken_from_orcpt(store: SQLiteStore) -> None:
    activate(store, "bob@example.test", 'require "vacation";\nvacation :from "ceo@example.test" "Wire money.";\n')
    incoming = to(store, "bob@example.test")
    orcpt = EnvelopeRecipient("bob@example.test", (), "rfc822;ceo@example.test")
    forged = replace(incoming.targets[0], recipient=orcpt)
    envelope = replace(incoming.envelope, recipients=(forged.recipient,))
    assert isinstance(run(store, replace(incoming, envelope=envelope, targets=(forged,))), Stored)
    ((_, _, reply),) = queued(store)
    assert b"\r\nFrom: <bob@example.test>\r\n" in b"\r\n" + reply


def test_issue_12_vacation_from_keeps_a_display_name(store: SQLiteStore) -> None:
    activate(store, "bob@example.test", 'require "vacation";\nvacation :from "Bob Büro <bob@example.test>" "x";\n')
    assert isinstance(run(store, to(store, "bob@example.test")), Stored)
    ((_, _, reply),) = queued(store)
    parsed = email.message_from_bytes(reply, policy=email.policy.default)
    assert parsed["From"].addresses[0].display_name == "Bob Büro"
    assert parsed["From"].addresses[0].addr_spec == "bob@example.test"


def test_issue_12_a_redirect_through_an_alias_is_marked_with_the_alias(store: SQLiteStore) -> None:
    store.accounts.add_alias("info@example.test", "bob@example.test")
    activate(store, "bob@example.test", 'redirect "bob@elsewhere.test";\n')
    account = store.accounts.get_account("bob@example.test")
    assert account is not None
    info = Target(EnvelopeRecipient("info@example.test"), (account.id,))
    incoming = Incoming(EnvelopeRecord(Origin.SMTP, "alice@remote.test", (info.recipient,)), MESSAGE, (info,), ARRIVAL)
    assert isinstance(run(store, incoming), Stored)
    ((_, _, copy),) = queued(store)
    assert copy.startswith(b"Delivered-To: info@example.test\r\n")
    back = replace(incoming, data=copy)  # it comes back to the alias: not delivered nor redirected again
    assert run(store, back) == Refused(replies.MAIL_LOOP, "loop")
    assert len(queued(store)) == 1


def test_issue_12_redirects_are_capped_per_message_and_a_capped_plan_keeps(store: SQLiteStore) -> None:
    users = [f"u{i}@example.test" for i in range(6)]
    script = "".join(f'redirect "r{i}@elsewhere.test";\n' for i in range(5))
    for user in users:
        store.accounts.add_account(user, "h")
        activate(store, user, script)
    assert isinstance(run(store, to(store, *users)), Stored)
    assert sum(len(r) for _, r, _ in queued(store)) == 20
    kept = []
    for user in users:
        account = store.accounts.get_account(user)
        assert account is not None
        kept.append(len(mailbox(store, account.id, "INBOX")))
    assert kept == [0, 0, 0, 0, 1, 1]  # the fifth lost all its redirects to the cap, the sixth all


def test_issue_12_generated_replies_have_crlf_lines_within_998_octets(store: SQLiteStore) -> None:
    references = " ".join(f"<ref{i}.{'x' * 30}@remote.test>" for i in range(40))
    data = MESSAGE.replace(b"Message-ID:", b"References: " + references.encode() + b"\r\nMessage-ID:")
    subject = "Abwesenheitsnotiz: " + "Büro geschlossen " * 8
    reason = "Ich bin nicht da. " * 200
    activate(store, "bob@example.test", f'require "vacation";\nvacation :subject "{subject}" "{reason}";\n')
    assert isinstance(run(store, to(store, "bob@example.test", data=data)), Stored)
    ((_, _, reply),) = queued(store)
    body = reply.split(b"\r\n\r\n", 1)[1]
    assert b"\n" not in reply.replace(b"\r\n", b"") and b"\r" not in reply.replace(b"\r\n", b"")
    assert max(len(line) for line in reply.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(reply, policy=email.policy.default)
    assert parsed["Subject"] == " ".join(subject.split())
    assert parsed["References"].split()[-1] == "<m1@remote.test>"
    assert parsed.get_content().strip() == reason.strip() and body


def test_issue_12_keep_follows_the_checks_and_fileinto_inbox_does_not(store: SQLiteStore) -> None:
    async def to_junk(data: bytes | Content) -> MessageDecision:
        return AcceptMessage(data if isinstance(data, bytes) else b"", "Junk")

    bob = activate(store, "bob@example.test", 'require "vacation";\nvacation "Away.";\n')  # keeps implicitly
    assert isinstance(run(store, replace(to(store, "bob@example.test"), check=to_junk)), Stored)
    assert len(mailbox(store, bob, "Junk")) == 1 and mailbox(store, bob, "INBOX") == []
    assert queued(store) == []  # no vacation reply to mail the checks call junk
    activate(store, "bob@example.test", 'require "fileinto";\nif address :is "from" "alice@remote.test" {'
                                        ' fileinto "INBOX"; }\n')  # fmt: skip
    assert isinstance(run(store, replace(to(store, "bob@example.test"), check=to_junk)), Stored)
    assert len(mailbox(store, bob, "INBOX")) == 1  # the user's rescue rule wins


def test_issue_12_reject_does_not_refuse_what_an_alias_also_forwards(store: SQLiteStore) -> None:
    store.accounts.add_alias("info@example.test", "bob@example.test")
    store.accounts.add_alias("info@example.test", "ext@elsewhere.test")
    bob = activate(store, "bob@example.test", 'require "reject";\nreject "No.";\n')
    info = Target(EnvelopeRecipient("info@example.test"), (bob,), forward_to=("ext@elsewhere.test",))
    envelope = EnvelopeRecord(Origin.SMTP, "alice@remote.test", (info.recipient,))
    assert isinstance(run(store, Incoming(envelope, MESSAGE, (info,), ARRIVAL)), Stored)
    recipients = sorted(r[0] for _, r, _ in queued(store))
    assert recipients == ["alice@remote.test", "ext@elsewhere.test"]  # the forward, and the notice


def test_issue_12_a_mime_vacation_reason_adds_only_content_fields(store: SQLiteStore) -> None:
    entity = "Content-Type: text/plain; charset=us-ascii\nFrom: ceo@example.test\nBcc: x@evil.test\n\nAway.\n"
    activate(store, "bob@example.test", f'require "vacation";\nvacation :mime text:\n{entity}.\n;\n')
    assert isinstance(run(store, to(store, "bob@example.test")), Stored)
    ((_, _, reply),) = queued(store)
    head = reply.split(b"\r\n\r\n", 1)[0]
    assert b"Content-Type: text/plain; charset=us-ascii" in head
    assert b"ceo@" not in head and b"Bcc" not in head
    assert reply.endswith(b"\r\n\r\nAway.\r\n")


def test_issue_12_fileinto_create_makes_at_most_ten_mailboxes_a_message(store: SQLiteStore) -> None:
    deep = 'require ["fileinto", "mailbox"];\nfileinto :create "a/b/c/d/e/f/g/h/i/j/k";\n'
    bob = activate(store, "bob@example.test", deep)
    assert isinstance(run(store, to(store, "bob@example.test")), Stored)
    assert store.mail.get_mailbox(bob, "a") is None
    assert len(mailbox(store, bob, "INBOX")) == 1

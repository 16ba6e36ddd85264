"""Intake (issue 10): the one path every accepted message takes, and the one envelope record it stores."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.auth.accounts import DirectoryCache
from kartero.concurrency import Blocking
from kartero.intake import Incoming, Intake, LocalArrival, Refused, SmtpArrival, Stored, Target, format_received
from kartero.mail import replies
from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.policy.decisions import AcceptMessage, MessageDecision, Reject
from kartero.store.interface import Content
from kartero.store.sqlite import SQLiteStore

ARRIVAL = SmtpArrival("client.example", "192.0.2.7", "ESMTPS", "TLSv1.3 TLS_AES_256_GCM_SHA384", None)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.accounts.add_account("bob@example.test", "h")
    s.accounts.add_account("carol@example.test", "h")
    s.start()
    yield s
    s.close()


def intake(store: SQLiteStore) -> Intake:
    directory = DirectoryCache(store.accounts, ("example.test",))
    directory.prime()
    return Intake(store.mail, directory, hostname="mx.example.test", queue_lifetime_s=3600.0, blocking=Blocking())


def accept(store: SQLiteStore, incoming: Incoming) -> Stored | Refused:
    return asyncio.run(intake(store).accept(incoming))


def inbox_messages(store: SQLiteStore, address: str) -> list[bytes]:
    account = store.accounts.get_account(address)
    assert account is not None
    inbox = store.mail.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    return [store.mail.read_message(r.blob_id) for r in store.mail.message_rows(inbox.id)]


def local(store: SQLiteStore, address: str) -> Target:
    account = store.accounts.get_account(address)
    assert account is not None
    return Target(EnvelopeRecipient(address), (account.id,))


def test_issue_10_local_and_remote_copies_are_stored_in_one_commit_with_the_trace_fields(store: SQLiteStore) -> None:
    bob = local(store, "bob@example.test")
    remote = Target(EnvelopeRecipient("dave@remote.example", ("SUCCESS", "FAILURE"), "rfc822;dave@remote.example"),
                    is_remote=True)  # fmt: skip
    envelope = EnvelopeRecord(Origin.SMTP, "alice@sender.example", (bob.recipient, remote.recipient),
                              helo="client.example", client_ip="192.0.2.7", tls=True, envid="E1")  # fmt: skip
    data = b"Subject: hi\r\n\r\nbody\r\n"
    outcome = accept(store, Incoming(envelope, data, (bob, remote), ARRIVAL))
    assert isinstance(outcome, Stored) and outcome.queue_id is not None and outcome.queue_id != outcome.message_id
    (stored,) = inbox_messages(store, "bob@example.test")
    header, _, rest = stored.partition(b"Subject: hi")
    assert rest == b"\r\n\r\nbody\r\n"
    lines = header.split(b"\r\n")
    assert lines[0] == b"Return-Path: <alice@sender.example>"
    assert lines[1] == b"Received: from client.example ([192.0.2.7])"
    assert lines[2] == b"\tby mx.example.test (Kartero) with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384)"
    assert lines[3].startswith(b"\tid " + outcome.message_id.encode() + b"; ")  # two recipients: no `for`
    queued = store.mail.read_message(outcome.queue_id)
    assert queued.startswith(b"Received: from client.example") and queued.endswith(data)  # no Return-Path
    (entry,) = store.queue.queue_entries()
    assert [r.address for r in entry.recipients] == ["dave@remote.example"]
    record = store.mail.read_envelope(outcome.message_id)
    assert record.recipients == envelope.recipients and record.envid == "E1" and record.received_at > 0
    assert store.mail.read_envelope(outcome.queue_id) == record


def test_issue_10_sendmail_gets_its_own_received_field_and_completed_header(store: SQLiteStore) -> None:
    bob = local(store, "bob@example.test")
    envelope = EnvelopeRecord(Origin.SENDMAIL, "root@example.test", (bob.recipient,), user="root")
    data = b"Subject: cron\r\n\r\nbody\r\n"
    outcome = accept(store, Incoming(envelope, data, (bob,), LocalArrival("root"), complete_header=True))
    assert isinstance(outcome, Stored)
    (stored,) = inbox_messages(store, "bob@example.test")
    lines = stored.split(b"\r\n")
    assert lines[0] == b"Return-Path: <root@example.test>"
    assert lines[1] == b"Received: by mx.example.test (Kartero sendmail, from userid root)"
    assert lines[2].startswith(b"\tid " + outcome.message_id.encode() + b"; ")
    assert lines[3] == b"From: <root@example.test>"
    assert lines[4].startswith(b"Date: ") and lines[5].startswith(b"Message-ID: <")
    assert lines[5].endswith(b"@mx.example.test>")
    assert stored.endswith(data)


def test_issue_10_a_dsn_has_return_path_and_no_received(store: SQLiteStore) -> None:
    bob = local(store, "bob@example.test")
    data = b"From: MAILER-DAEMON\r\nSubject: failure\r\n\r\nbody\r\n"
    outcome = accept(store, Incoming(EnvelopeRecord(Origin.DSN, "", (bob.recipient,)), data, (bob,)))
    assert isinstance(outcome, Stored)
    assert inbox_messages(store, "bob@example.test") == [b"Return-Path: <>\r\n" + data]


def test_issue_10_the_checks_decide_what_is_stored_and_where(store: SQLiteStore) -> None:
    bob = local(store, "bob@example.test")
    envelope = EnvelopeRecord(Origin.SMTP, "a@b.example", (bob.recipient,))

    async def to_junk(data: bytes | Content) -> MessageDecision:
        assert isinstance(data, bytes)
        return AcceptMessage(b"X-Checked: yes\r\n" + data, "Junk")

    async def refuse(data: bytes | Content) -> MessageDecision:
        return Reject(replies.DMARC_REJECTED)

    refused = accept(store, Incoming(envelope, b"Subject: x\r\n\r\n", (bob,), ARRIVAL, check=refuse))
    assert refused == Refused(replies.DMARC_REJECTED, "policy")
    outcome = accept(store, Incoming(envelope, b"Subject: x\r\n\r\n", (bob,), ARRIVAL, check=to_junk))
    assert isinstance(outcome, Stored)
    assert inbox_messages(store, "bob@example.test") == []
    account = store.accounts.get_account("bob@example.test")
    assert account is not None
    junk = store.mail.get_mailbox(account.id, "Junk")
    assert junk is not None
    (row,) = store.mail.message_rows(junk.id)
    assert b"\r\nX-Checked: yes\r\nSubject: x\r\n\r\n" in store.mail.read_message(row.blob_id)


def test_issue_10_intake_resolves_local_aliases_and_remote_addresses(store: SQLiteStore) -> None:
    store.accounts.add_alias("team@example.test", "bob@example.test")
    store.accounts.add_alias("team@example.test", "carol@example.test")

    async def resolve() -> list[Target | None]:
        i = intake(store)
        return [await i.resolve(a) for a in ("team@example.test", "nobody@example.test", "x@remote.example")]

    team, nobody, remote = asyncio.run(resolve())
    assert team is not None and len(team.account_ids) == 2 and not team.is_remote
    assert nobody is None
    assert remote == Target(EnvelopeRecipient("x@remote.example"), is_remote=True)


def test_issue_10_received_names_the_single_recipient() -> None:
    when = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert format_received(ARRIVAL, hostname="mx.example.test", message_id="ID1", recipient="bob@example.test",
                           date=when) == (
        b"Received: from client.example ([192.0.2.7])\r\n"
        b"\tby mx.example.test (Kartero) with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n"
        b"\tid ID1 for <bob@example.test>; Sun, 29 Nov 2026 12:00:00 +0000\r\n"
    )


# -- the envelope record ------------------------------------------------------------------------------


def test_issue_10_every_old_envelope_shape_still_reads() -> None:
    """The three shapes the three old copies of the message path wrote, and APPEND's."""
    recipient = {"address": "bob@example.test", "notify": ["SUCCESS"], "orcpt": ["rfc822", "bob@example.test"]}
    smtp = {"mail_from": "a@b.example", "recipients": [recipient], "ret": "HDRS", "envid": "X", "body": "8BITMIME",
            "smtputf8": False, "size": 120, "helo": "client.example", "client_ip": "192.0.2.7", "tls": True}
    assert EnvelopeRecord.from_json(json.dumps(smtp)) == EnvelopeRecord(
        Origin.SMTP, "a@b.example", (EnvelopeRecipient("bob@example.test", ("SUCCESS",), "rfc822;bob@example.test"),),
        helo="client.example", client_ip="192.0.2.7", tls=True, ret="HDRS", envid="X", body="8BITMIME", size=120,
    )  # fmt: skip
    sendmail = {"mail_from": "root@example.test", "rcpt_to": ["bob@example.test"], "sendmail_user": "root"}
    assert EnvelopeRecord.from_json(json.dumps(sendmail)) == EnvelopeRecord(
        Origin.SENDMAIL, "root@example.test", (EnvelopeRecipient("bob@example.test"),), user="root"
    )
    assert EnvelopeRecord.from_json('{"mail_from": "", "dsn": true}') == EnvelopeRecord(Origin.DSN, "")
    assert EnvelopeRecord.from_json('{"appended_by": "bob@example.test"}') == EnvelopeRecord(
        Origin.APPEND, "", user="bob@example.test"
    )
    assert EnvelopeRecord.from_json("{}") == EnvelopeRecord(Origin.UNKNOWN, "")


def test_issue_10_an_old_record_in_the_database_reads_through_the_store(store: SQLiteStore) -> None:
    bob = local(store, "bob@example.test")
    outcome = accept(store, Incoming(EnvelopeRecord(Origin.SMTP, "a@b.example", (bob.recipient,)), b"x\r\n", (bob,)))
    assert isinstance(outcome, Stored)
    with store.database.write() as db:  # as the code before issue 10 left it
        db.execute("UPDATE blobs SET envelope = ? WHERE id = ?",
                   ('{"mail_from": "old@b.example", "rcpt_to": ["bob@example.test"], "sendmail_user": "u"}',
                    outcome.message_id))  # fmt: skip
    assert store.mail.read_envelope(outcome.message_id) == EnvelopeRecord(
        Origin.SENDMAIL, "old@b.example", (EnvelopeRecipient("bob@example.test"),), user="u"
    )


_TEXT = st.text(max_size=20)
_RECORDS = st.builds(
    EnvelopeRecord,
    origin=st.sampled_from(list(Origin)),
    sender=_TEXT,
    recipients=st.lists(st.builds(EnvelopeRecipient, _TEXT, st.lists(_TEXT, max_size=3).map(tuple),
                                  st.none() | _TEXT), max_size=3).map(tuple),
    received_at=st.integers(0, 2**40),
    user=st.none() | _TEXT.filter(bool),
    helo=st.none() | _TEXT.filter(bool),
    client_ip=st.none() | _TEXT.filter(bool),
    tls=st.booleans(),
    ret=st.none() | st.sampled_from(["FULL", "HDRS"]),
    envid=st.none() | _TEXT.filter(bool),
    body=st.none() | st.sampled_from(["7BIT", "8BITMIME", "BINARYMIME"]),
    smtputf8=st.booleans(),
    size=st.none() | st.integers(1, 2**40),
)


@settings(max_examples=200, deadline=None)
@given(_RECORDS)
def test_issue_10_the_record_round_trips(record: EnvelopeRecord) -> None:
    assert EnvelopeRecord.from_json(record.to_json()) == record


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["v", "origin", "sender", "recipients", "address", "notify", "orcpt",
                                         "mail_from", "rcpt_to", "dsn", "appended_by", "helo", "size", "tls"]),
                        inner, max_size=5), max_leaves=20))  # fmt: skip
def test_issue_10_any_stored_json_reads_as_a_record_or_a_value_error(value: object) -> None:
    try:
        record = EnvelopeRecord.from_json(json.dumps(value))
    except ValueError:
        assert not isinstance(value, dict)
        return
    assert isinstance(record, EnvelopeRecord)


def test_issue_10_dsns_sent_from_every_pool_thread_do_not_starve_the_directory_reload(store: SQLiteStore) -> None:
    """The queue runner sends DSNs from worker threads, each waiting on the loop for intake; a DSN to an
    account added a moment ago needs a directory reload. With the reload in the same pool, DSNs filling
    the pool held it for its whole deadline (found in review of issue 10)."""
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    from kartero.delivery.local import DsnSender

    dsn = b"From: MAILER-DAEMON\r\nSubject: Undelivered Mail\r\n\r\nsorry\r\n"

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(2))
        sender = DsnSender(intake(store), loop)
        store.accounts.add_account("new@example.test", "h")  # after the directory was loaded
        sends = [loop.run_in_executor(None, partial(sender.send, "new@example.test", dsn, smtputf8=False))
                 for _ in range(2)]  # fmt: skip
        await asyncio.wait_for(asyncio.gather(*sends), 20)

    asyncio.run(scenario())
    assert inbox_messages(store, "new@example.test") == [b"Return-Path: <>\r\n" + dsn] * 2

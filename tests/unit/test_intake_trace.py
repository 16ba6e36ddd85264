"""Issue 14: the trace events intake writes with a message's commit, and those of messages it refuses."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.auth.accounts import DirectoryCache
from kartero.concurrency import Blocking
from kartero.intake import Incoming, Intake, Refused, SmtpArrival, Stored, Target
from kartero.mail import replies
from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.mail.trace import TraceEvent, TraceKind
from kartero.policy.decisions import AcceptMessage, MessageDecision, Reject
from kartero.store.interface import Content, TraceQuery
from kartero.store.sqlite import SQLiteStore

ARRIVAL = SmtpArrival("client.example", "192.0.2.7", "ESMTPS", "version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384",
                      None, listener="smtp", client_name="client.example")  # fmt: skip
MESSAGE = b"Message-ID: <m1@client.example>\r\nSubject: secret plans\r\n\r\nbody\r\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.accounts.add_account("bob@example.test", "h")
    s.accounts.add_alias("team@example.test", "bob@example.test")
    s.accounts.add_alias("team@example.test", "ext@far.example")
    s.start()
    yield s
    s.close()


async def checked(data: bytes | Content) -> MessageDecision:
    return AcceptMessage(data, "INBOX", "spf=pass dkim=none dmarc=none")


async def refuse(data: bytes | Content) -> MessageDecision:
    return Reject(replies.DMARC_REJECTED)


def test_issue_14_intake_traces_the_path_it_commits_and_the_messages_it_refuses(store: SQLiteStore) -> None:
    async def run() -> tuple[Stored | Refused, Stored | Refused]:
        directory = DirectoryCache(store.accounts, ("example.test",))
        directory.prime()
        intake = Intake(store.mail, directory, hostname="mx.example.test", queue_lifetime_s=3600.0,
                        blocking=Blocking(), trace=store.trace)  # fmt: skip
        team = await intake.resolve("team@example.test")
        assert team is not None
        remote = Target(EnvelopeRecipient("dave@remote.example"), is_remote=True)
        envelope = EnvelopeRecord(Origin.SMTP, "alice@sender.example", (team.recipient, remote.recipient),
                                  helo="client.example", client_ip="192.0.2.7", tls=True)  # fmt: skip
        stored = await intake.accept(Incoming(envelope, MESSAGE, (team, remote), ARRIVAL, check=checked))
        refused = await intake.accept(Incoming(envelope, MESSAGE, (team, remote), ARRIVAL, check=refuse))
        await intake.drain()  # the refusal's event waits for its batch
        return stored, refused

    stored, refused = asyncio.run(run())
    assert isinstance(stored, Stored) and stored.queue_id is not None and isinstance(refused, Refused)
    (entry_a, entry_b) = sorted(store.queue.queue_entries(), key=lambda e: e.recipients[0].address)
    forwarded_id = entry_b.id if entry_b.recipients[0].address == "ext@far.example" else entry_a.id
    (traced,) = store.trace.search(TraceQuery(address="bob@example.test")).messages  # the account of the alias
    found = store.trace.search(TraceQuery(address="team@example.test")).messages
    (rejected,) = [m for m in found if m != traced]
    assert traced in found and traced.message_id == stored.message_id
    opening = {"sender": "alice@sender.example", "recipients": ("team@example.test", "dave@remote.example"),
               "origin": "smtp", "listener": "smtp", "client": "192.0.2.7", "client_name": "client.example",
               "helo": "client.example", "tls": "version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384",
               "size": len(MESSAGE)}  # fmt: skip
    at = traced.events[0].at
    assert traced.events == (
        TraceEvent(TraceKind.RECEIVED, at, stored.message_id, header_id="m1@client.example",
                   checks="spf=pass dkim=none dmarc=none", **opening),  # type: ignore[arg-type]
        TraceEvent(TraceKind.STORED, at, stored.message_id, recipient="team@example.test", account="bob@example.test",
                   mailbox="INBOX"),
        TraceEvent(TraceKind.QUEUED, at, stored.message_id, stored.queue_id, recipient="dave@remote.example"),
        TraceEvent(TraceKind.QUEUED, at, stored.message_id, forwarded_id, recipient="ext@far.example",
                   note="forwarded for team@example.test"),
    )  # fmt: skip
    (event,) = rejected.events
    assert event == TraceEvent(TraceKind.REFUSED, event.at, rejected.message_id,
                               reply=replies.DMARC_REJECTED.to_line(), note="policy", **opening)  # type: ignore[arg-type]
    assert "secret" not in repr(found)

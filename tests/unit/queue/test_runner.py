"""The queue runner's decisions over the real SQLite store: which outcome becomes which state, when the
sender is told, and when an entry may go. The delivery agent is replaced by a scripted one (the
integration tests in tests/integration/test_outbound.py use the real one against real servers)."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Iterator, Sequence
from email.message import EmailMessage
from pathlib import Path

import pytest

from kartero.mail.envelope import EnvelopeRecipient
from kartero.mail.replies import Reply
from kartero.queue.jobs import Deferred, Delivered, Failed, JobMessage, OnOutcomes, Outcome
from kartero.queue.runner import QueueRunner, QueueSettings
from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, Outbound, QueueState
from kartero.store.sqlite import SQLiteStore

T0 = 1_800_000_000


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


class ScriptedAgent:
    """Answers each recipient address with the outcome the test set; remembers what it was given."""

    def __init__(self, outcomes: dict[str, Outcome]) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[str, list[str]]] = []

    async def deliver(
        self, domain: str, messages: Sequence[JobMessage], on_outcomes: OnOutcomes | None = None
    ) -> dict[int, Outcome]:
        self.calls.append((domain, [r.address for m in messages for r in m.recipients]))
        result = {}
        for m in messages:
            part = {r.recipient_id: self.outcomes[r.address] for r in m.recipients}
            if on_outcomes is not None:
                on_outcomes(part)
            result.update(part)
        return result


class Bouncer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail = fail

    def send(self, recipient: str, data: bytes, *, smtputf8: bool) -> None:
        if self.fail:
            raise OSError("disk full")
        self.sent.append((recipient, data))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.start()
    yield s
    s.close()


def queue(store: SQLiteStore, sender: str, *recipients: str | EnvelopeRecipient, lifetime: int = 86400) -> str:
    blob = new_message_id()
    rcpts = tuple(r if isinstance(r, EnvelopeRecipient) else EnvelopeRecipient(r) for r in recipients)
    data = b"From: x@a.test\r\nSubject: queued\r\n\r\nbody\r\n"
    store.mail.deliver(Delivery(blob, data, (), T0, None, Outbound(sender, rcpts, T0 + lifetime))).result(10)
    return blob


def runner(store: SQLiteStore, agent: ScriptedAgent, bouncer: Bouncer, clock: Clock) -> QueueRunner:
    settings = QueueSettings(hostname="mx.a.test", retry_first_s=60, retry_max_s=600, delay_notice_s=3600)
    return QueueRunner(store, agent, bouncer, settings, clock=clock)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def statuses(dsn: bytes) -> list[dict[str, str]]:
    part = next(p for p in parse(dsn).walk() if p.get_content_type() == "message/delivery-status")
    payload = part.get_payload()
    assert isinstance(payload, list)
    return [{k.lower(): str(v) for k, v in block.items()} for block in payload[1:]]


def test_delivered_entry_goes_away_and_failures_make_one_dsn(store: SQLiteStore) -> None:
    clock = Clock()
    agent = ScriptedAgent({
        "ok@b.test": Delivered(Reply(250, "2.0.0", "ok"), "mx.b.test[127.0.0.3]"),
        "no@b.test": Failed(Reply(550, "5.1.1", "No such user"), "mx.b.test[127.0.0.3]"),
        "no@c.test": Failed(Reply(554, "5.7.1", "Relay denied"), "mx.c.test[127.0.0.4]"),
    })  # fmt: skip
    bouncer = Bouncer()
    queue_id = queue(store, "alice@a.test", "ok@b.test", "no@b.test", "no@c.test")
    asyncio.run(runner(store, agent, bouncer, clock).run_due())
    assert sorted(agent.calls) == [("b.test", ["ok@b.test", "no@b.test"]), ("c.test", ["no@c.test"])]
    (to, dsn), = bouncer.sent  # fmt: skip
    assert to == "alice@a.test"
    assert [(s["final-recipient"], s["status"], s["remote-mta"]) for s in statuses(dsn)] == [
        ("rfc822; no@b.test", "5.1.1", "dns; mx.b.test"), ("rfc822; no@c.test", "5.7.1", "dns; mx.c.test")
    ]  # fmt: skip
    assert store.queue.queue_entries() == []
    with pytest.raises(Exception, match="no message"):
        store.mail.read_message(queue_id)  # the bytes went with the entry


def test_null_sender_and_notify_never_get_no_dsn(store: SQLiteStore) -> None:
    agent = ScriptedAgent({"x@b.test": Failed(Reply(550, "5.1.1", "No"))})
    bouncer = Bouncer()
    queue(store, "", "x@b.test")
    queue(store, "alice@a.test", EnvelopeRecipient("x@b.test", ("NEVER",)))
    asyncio.run(runner(store, agent, bouncer, Clock()).run_due())
    assert bouncer.sent == [] and store.queue.queue_entries() == []


def test_success_notice_only_when_asked_and_the_next_hop_cannot_report(store: SQLiteStore) -> None:
    agent = ScriptedAgent({
        "plain@b.test": Delivered(Reply(250, None, "ok"), "mx.b.test[127.0.0.3]", remote_dsn=False),
        "dsn@c.test": Delivered(Reply(250, None, "ok"), "mx.c.test[127.0.0.4]", remote_dsn=True),
    })  # fmt: skip
    bouncer = Bouncer()
    queue(store, "alice@a.test", EnvelopeRecipient("plain@b.test", ("SUCCESS",)),
          EnvelopeRecipient("dsn@c.test", ("SUCCESS",)))  # fmt: skip
    asyncio.run(runner(store, agent, bouncer, Clock()).run_due())
    (_, dsn), = bouncer.sent  # fmt: skip
    assert [(s["final-recipient"], s["action"]) for s in statuses(dsn)] == [("rfc822; plain@b.test", "relayed")]


def test_deferred_backs_off_then_expires_with_5_4_7(store: SQLiteStore) -> None:
    clock = Clock()
    agent = ScriptedAgent({"later@b.test": Deferred(Reply(451, "4.4.1", "Cannot connect"))})
    bouncer = Bouncer()
    queue(store, "alice@a.test", "later@b.test", lifetime=800)
    r = runner(store, agent, bouncer, clock)
    nexts = []
    for _ in range(4):
        asyncio.run(r.run_due())
        (entry,) = store.queue.queue_entries()
        (rcpt,) = entry.recipients
        assert rcpt.state is QueueState.DEFERRED and rcpt.last_reply == "451 4.4.1 Cannot connect"
        nexts.append(rcpt.next_attempt_at - int(clock.now))
        clock.now = rcpt.next_attempt_at
    assert nexts == [60, 120, 240, 800 - 420]  # doubling from retry_first; the last try at the expiry time
    asyncio.run(r.run_due())
    assert store.queue.queue_entries() == []
    (_, dsn), = bouncer.sent  # fmt: skip
    (status,) = statuses(dsn)
    assert status["status"] == "5.4.7" and "gave up" in status["diagnostic-code"]
    assert len(agent.calls) == 5


def test_nxdomain_is_believed_on_the_third_answer(store: SQLiteStore) -> None:
    clock = Clock()
    agent = ScriptedAgent({"x@gone.test": Failed(Reply(550, "5.1.2", "Domain gone.test does not exist"),
                                                 is_nxdomain=True)})  # fmt: skip
    bouncer = Bouncer()
    queue(store, "alice@a.test", "x@gone.test")
    r = runner(store, agent, bouncer, clock)
    for attempt in (1, 2):
        asyncio.run(r.run_due())
        (entry,) = store.queue.queue_entries()
        assert entry.recipients[0].state is QueueState.DEFERRED and entry.recipients[0].attempts == attempt
        clock.now = entry.recipients[0].next_attempt_at
    asyncio.run(r.run_due())
    assert store.queue.queue_entries() == [] and len(bouncer.sent) == 1


def test_a_notice_that_cannot_be_stored_is_kept_and_sent_later(store: SQLiteStore) -> None:
    agent = ScriptedAgent({"no@b.test": Failed(Reply(550, "5.1.1", "No"))})
    broken = Bouncer(fail=True)
    queue_id = queue(store, "alice@a.test", "no@b.test")
    asyncio.run(runner(store, agent, broken, Clock()).run_due())
    # The recipient is final, but the entry stays until its sender has been told.
    (entry,) = store.queue.queue_entries()
    assert entry.id == queue_id and entry.recipients[0].state is QueueState.FAILED
    assert store.queue.entries_with_unreported_failures() == [queue_id]
    working = Bouncer()
    asyncio.run(runner(store, agent, working, Clock()).run_due())  # a new runner sweeps at start
    assert len(working.sent) == 1 and store.queue.queue_entries() == []
    assert len(agent.calls) == 1  # never delivered again


def test_flush_and_delete(store: SQLiteStore) -> None:
    clock = Clock()
    agent = ScriptedAgent({"later@b.test": Deferred(Reply(451, "4.4.1", "down"))})
    first = queue(store, "alice@a.test", "later@b.test")
    second = queue(store, "alice@a.test", "later@b.test")
    r = runner(store, agent, Bouncer(), clock)
    asyncio.run(r.run_due())
    asyncio.run(r.run_due())
    assert len(agent.calls) == 1  # nothing due until the retry time
    assert store.queue.queue_flush() == 2
    asyncio.run(r.run_due())
    assert len(agent.calls) == 2 and len(agent.calls[1][1]) == 2  # both messages, one delivery
    assert store.queue.queue_delete(first) and not store.queue.queue_delete(first)
    assert [e.id for e in store.queue.queue_entries()] == [second]


def test_issue_8_a_large_message_goes_to_the_agent_as_a_handle_and_comes_back_as_its_header(
    store: SQLiteStore,
) -> None:
    """Past 1 MiB a queued message is not read whole: the agent gets a handle to read it in pieces, and
    a failure notice returns only its header even under RET=FULL (RFC 3464 §2: "or portion thereof")."""
    blob = new_message_id()
    header = b"From: x@a.test\r\nSubject: large\r\n\r\n"
    data = header + b"0123456789abcdef\r\n" * 100_000  # ~1.8 MB
    outbound = Outbound("alice@a.test", (EnvelopeRecipient("no@b.test"),), T0 + 86400, ret="FULL")
    store.mail.deliver(Delivery(blob, data, (), T0, None, outbound)).result(10)
    seen: list[JobMessage] = []

    class Recording(ScriptedAgent):
        async def deliver(
            self, domain: str, messages: Sequence[JobMessage], on_outcomes: OnOutcomes | None = None
        ) -> dict[int, Outcome]:
            seen.extend(messages)
            return await super().deliver(domain, messages, on_outcomes)

    bouncer = Bouncer()
    agent = Recording({"no@b.test": Failed(Reply(550, "5.1.1", "No such user"))})
    asyncio.run(runner(store, agent, bouncer, Clock()).run_due())
    (message,) = seen
    assert message.data == b"" and message.size == len(data) and message.open_body is not None
    (_, dsn), = bouncer.sent  # fmt: skip
    returned = next(p for p in parse(dsn).walk() if p.get_content_type() == "text/rfc822-headers")
    assert "Subject: large" in returned.get_content()
    assert b"0123456789abcdef" not in dsn and len(dsn) < 10_000

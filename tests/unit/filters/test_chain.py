"""The chain of a listener's filters over one session: order, first refusal, accept-rest, discard,
changes seen by the next filter, the Junk verdict."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kartero.filters.chain import Filters
from kartero.filters.model import (
    AcceptRest,
    AddHeader,
    AddRecipient,
    ClientInfo,
    Continue,
    Discard,
    FilterSession,
    MessageVerdict,
    Quarantine,
    Refuse,
    Transaction,
    Verdict,
)
from kartero.mail.replies import Reply
from kartero.store.interface import Content

CLIENT = ClientInfo("s1", "smtp", "mx.example.org", "192.0.2.1", 40000, "unknown")
TX = Transaction("client.example", None, None, None, "a@example.com", (), ("b@example.org",))
MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"
REJECT = Reply(550, "5.7.1", "Command rejected")


@dataclass
class Scripted:
    """A filter answering from a table: phase -> verdict; it records what it was asked."""

    name: str
    answers: dict[str, Verdict] = field(default_factory=dict)
    changes: tuple = ()  # type: ignore[type-arg]
    calls: list[str] = field(default_factory=list)
    seen: list[bytes] = field(default_factory=list)

    def session(self) -> FilterSession:
        return self  # type: ignore[return-value]

    def _answer(self, phase: str) -> Verdict:
        self.calls.append(phase)
        return self.answers.get(phase, Continue())

    async def connect(self, client: ClientInfo) -> Verdict:
        return self._answer("connect")

    async def helo(self, name: str) -> Verdict:
        return self._answer(f"helo {name}")

    async def mail_from(self, transaction: Transaction) -> Verdict:
        return self._answer("mail")

    async def rcpt_to(self, transaction: Transaction, recipient: str, params: tuple[str, ...]) -> Verdict:
        return self._answer(f"rcpt {recipient}")

    async def message(self, transaction: Transaction, data: bytes | Content) -> MessageVerdict:
        assert isinstance(data, bytes)
        self.seen.append(data)
        self.calls.append(f"message {','.join(transaction.recipients)}")
        return MessageVerdict(self.answers.get("message", Continue()), self.changes)

    async def abort(self) -> None:
        self.calls.append("abort")

    async def close(self) -> None:
        self.calls.append("close")


def run(filters: list[Scripted], *steps: str) -> list[object]:
    async def go() -> list[object]:
        chain = Filters(filters, "X-Spam").session()  # type: ignore[arg-type]
        assert chain is not None
        out: list[object] = []
        for step in steps:
            if step == "connect":
                out.append(await chain.connect(CLIENT))
            elif step.startswith("helo"):
                chain.helo(step.split()[1])
            elif step == "mail":
                out.append(await chain.mail_from(TX))
            elif step.startswith("rcpt"):
                out.append(await chain.rcpt_to(TX, step.split()[1], ()))
            elif step == "message":
                out.append(await chain.message(TX, MESSAGE))
            elif step == "close":
                await chain.close()
        return out

    return asyncio.run(go())


def test_no_filters_no_chain() -> None:
    assert Filters([], "X-Spam").session() is None


def test_every_filter_is_asked_in_order_and_helo_comes_before_mail() -> None:
    a, b = Scripted("a"), Scripted("b")
    run([a, b], "connect", "helo c.example", "mail", "rcpt x@example.org", "message", "close")
    expected = ["connect", "helo c.example", "mail", "rcpt x@example.org", "message b@example.org", "abort",
                "close"]  # fmt: skip
    assert a.calls == expected and b.calls == expected


def test_the_first_refusal_answers_and_later_filters_are_not_asked() -> None:
    a, b = Scripted("a", {"rcpt bad@example.org": Refuse(REJECT)}), Scripted("b")
    results = run([a, b], "connect", "mail", "rcpt bad@example.org", "rcpt ok@example.org")
    assert results == [None, None, REJECT, None]
    assert b.calls == ["connect", "mail", "rcpt ok@example.org"]


def test_a_refusal_at_helo_answers_the_mail() -> None:
    a = Scripted("a", {"helo bad.example": Refuse(REJECT)})
    assert run([a], "connect", "helo bad.example", "mail") == [None, REJECT]


def test_accept_rest_skips_that_filter_for_the_transaction_and_a_new_one_asks_again() -> None:
    a, b = Scripted("a", {"mail": AcceptRest()}), Scripted("b")
    run([a, b], "connect", "mail", "rcpt x@example.org", "message", "mail", "close")
    # every filter ends the last transaction before the next and before closing (each knows whether it
    # has one open: the milter core sends ABORT only then), as Postfix does
    assert a.calls == ["connect", "mail", "abort", "mail", "abort", "close"]
    assert b.calls == ["connect", "mail", "rcpt x@example.org", "message b@example.org", "abort", "mail", "abort",
                       "close"]  # fmt: skip


def test_accept_at_connect_skips_the_filter_for_the_session() -> None:
    a = Scripted("a", {"connect": AcceptRest()})
    run([a], "connect", "mail", "message", "mail", "close")
    assert a.calls == ["connect", "close"]


def test_a_transaction_without_a_message_is_aborted_before_the_next() -> None:
    a = Scripted("a")
    run([a], "connect", "mail", "mail", "message", "mail")
    assert a.calls == ["connect", "mail", "abort", "mail", "message b@example.org", "abort", "mail"]


def test_discard_at_rcpt_discards_the_message_without_asking_further() -> None:
    a, b = Scripted("a", {"rcpt x@example.org": Discard()}), Scripted("b")
    *_, filtered = run([a, b], "connect", "mail", "rcpt x@example.org", "rcpt y@example.org", "message")
    assert filtered.discard and filtered.refusal is None  # type: ignore[attr-defined]
    assert a.calls == ["connect", "mail", "rcpt x@example.org"]
    assert b.calls == ["connect", "mail"]


def test_changes_of_one_filter_are_what_the_next_sees() -> None:
    a = Scripted("a", changes=(AddHeader("X-Spam", "Yes"), AddRecipient("new@example.org")))
    b = Scripted("b")
    *_, filtered = run([a, b], "connect", "mail", "message")
    assert b.seen == [b"Subject: hi\r\nX-Spam: Yes\r\n\r\nbody\r\n"]
    assert b.calls[-1] == "message b@example.org,new@example.org"
    assert filtered.junk and filtered.edited.added == [("new@example.org", ())]  # type: ignore[attr-defined]


def test_issue_13_filters_after_a_refusal_are_aborted_before_the_next_mail() -> None:
    a, b = Scripted("a", {"message": Refuse(REJECT)}), Scripted("b")
    run([a, b], "connect", "mail", "message", "helo again.example", "mail", "close")
    assert b.calls == ["connect", "mail", "abort", "helo again.example", "mail", "abort", "close"]


def test_a_message_refusal_drops_the_changes_so_far() -> None:
    a = Scripted("a", changes=(AddHeader("X-A", "1"),))
    b = Scripted("b", {"message": Refuse(REJECT)})
    *_, filtered = run([a, b], "connect", "mail", "message")
    assert filtered.refusal == REJECT  # type: ignore[attr-defined]


def test_quarantine_means_junk() -> None:
    a = Scripted("a", changes=(Quarantine("looks bad"),))
    *_, filtered = run([a], "connect", "mail", "message")
    assert filtered.junk and filtered.edited.quarantine == "looks bad"  # type: ignore[attr-defined]
    *_, clean = run([Scripted("b")], "connect", "mail", "message")
    assert not clean.junk  # type: ignore[attr-defined]


def test_a_refusal_at_connect_answers_every_mail_of_the_session() -> None:
    a, b = Scripted("a", {"connect": Refuse(REJECT)}), Scripted("b")
    assert run([a, b], "connect", "mail", "mail") == [None, REJECT, REJECT]
    assert a.calls == ["connect"] and b.calls == []

"""The content filters of one listener, in the config's order, over one SMTP session.

Each filter is asked in turn; the first refusal answers the command (later filters are not asked); an
`AcceptRest` stops asking that filter for the rest of the transaction (at connect: of the session); a
`Discard` accepts the message for nobody. At the end of the message every filter sees the message as
the filters before it left it, and the changes are applied only once each filter's exchange completed:
a filter that fails mid-message answers per its `on_error` and leaves no half of its changes behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kartero import metrics
from kartero.filters.changes import Edited, apply, is_junk
from kartero.filters.model import (
    AcceptRest,
    ClientInfo,
    Discard,
    Filter,
    FilterSession,
    Refuse,
    Transaction,
    Verdict,
)
from kartero.log import kv
from kartero.mail.replies import Reply
from kartero.store.interface import Content

log = logging.getLogger("kartero.filters")

# Header blocks larger than this are split and edited in a worker thread (the hooks do the same).
LARGE_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Filtered:
    """What the filters made of a message: refused, discarded, or to be delivered as `edited` says
    (to Junk when `junk`)."""

    refusal: Reply | None
    discard: bool
    edited: Edited
    junk: bool


class Filters:
    """The filters one listener applies, and what a milter's spam verdict looks like."""

    def __init__(self, filters: Sequence[Filter], junk_header: str) -> None:
        self.filters = tuple(filters)
        self.junk_header = junk_header

    def session(self) -> ChainSession | None:
        """A chain for one SMTP session; None when the listener has no filters (nothing to ask)."""
        if not self.filters:
            return None
        return ChainSession([(f.name, f.session()) for f in self.filters], self.junk_header)


class ChainSession:
    def __init__(self, sessions: list[tuple[str, FilterSession]], junk_header: str) -> None:
        self._sessions = sessions
        self._junk_header = junk_header
        self._done_session: set[int] = set()  # filters that accepted the whole session at connect
        self._done_transaction: set[int] = set()
        self._discard_session = False
        self._discard = False  # this transaction's message goes to nobody
        self._helo: str | None = None  # the HELO name not yet told to the filters
        self._in_transaction = False
        self._closed = False
        self._refusal: Reply | None = None  # a filter refused the session at connect

    def _active(self) -> list[tuple[int, str, FilterSession]]:
        done = self._done_session | self._done_transaction
        return [(i, name, s) for i, (name, s) in enumerate(self._sessions) if i not in done]

    async def connect(self, client: ClientInfo) -> None:
        """Tell the filters who connected. A refusal here answers every MAIL of the session, as Postfix
        does: the client gets it as a reply to a transaction it can retry (or not), not as a greeting."""
        for i, name, session in self._active():
            verdict = await session.connect(client)
            _count(name, "connect", verdict)
            if isinstance(verdict, Refuse):
                self._refusal = verdict.reply
                return
            if isinstance(verdict, AcceptRest):
                self._done_session.add(i)
            elif isinstance(verdict, Discard):
                self._discard_session = True
                break

    def helo(self, name: str) -> None:
        """Remember the HELO name; the filters hear it before the next MAIL (the core answers HELO)."""
        self._helo = name

    async def mail_from(self, transaction: Transaction) -> Reply | None:
        """The refusal of this MAIL, or None (start of a transaction)."""
        if self._refusal is not None:
            return self._refusal
        await self._abort()
        self._in_transaction = True
        self._discard = self._discard_session
        self._done_transaction = set()
        if self._discard:
            return None
        if self._helo is not None:
            helo, self._helo = self._helo, None
            for i, name, session in self._active():
                if (stop := self._settle(i, name, "helo", await session.helo(helo))) is not None:
                    return stop
                if self._discard:
                    return None
        for i, name, session in self._active():
            if (stop := self._settle(i, name, "mail", await session.mail_from(transaction))) is not None:
                return stop
            if self._discard:
                return None
        return None

    async def rcpt_to(self, transaction: Transaction, recipient: str, params: tuple[str, ...]) -> Reply | None:
        """The refusal of this recipient, or None."""
        if self._discard:
            return None
        for i, name, session in self._active():
            verdict = await session.rcpt_to(transaction, recipient, params)
            if (stop := self._settle(i, name, "rcpt", verdict)) is not None:
                return stop
            if self._discard:
                return None
        return None

    async def message(self, transaction: Transaction, data: bytes | Content) -> Filtered:
        """Ask each filter in turn about the message as the ones before it left it."""
        edited = Edited(data)
        if self._discard:
            return Filtered(None, True, edited, False)
        for _, name, session in self._active():
            outcome = await session.message(transaction, edited.data)
            verdict = outcome.verdict
            _count(name, "message", verdict)
            if isinstance(verdict, Refuse):
                return Filtered(verdict.reply, False, edited, False)
            if isinstance(verdict, Discard):
                return Filtered(None, True, edited, False)
            if outcome.changes:
                if _is_large(edited.data):  # linear, but a 2 MiB header is ~0.5 s of Python: off the loop
                    await asyncio.to_thread(apply, edited, outcome.changes)
                else:
                    apply(edited, outcome.changes)
                log.info("%s", kv(event="filter.changed", filter=name, id=transaction.queue_id,
                                  changes=",".join(sorted({type(c).__name__ for c in outcome.changes}))))  # fmt: skip
                transaction = _updated(transaction, edited)
        junk = edited.quarantine is not None
        if not junk:
            if _is_large(edited.data):
                junk = await asyncio.to_thread(is_junk, edited.data, self._junk_header)
            else:
                junk = is_junk(edited.data, self._junk_header)
        return Filtered(None, False, edited, junk)

    async def _abort(self) -> None:
        """End the last transaction at every filter still in the session, also those that settled it
        (accepted the rest, refused or discarded the message): each knows whether it has one open, and
        Postfix too sends ABORT to every milter before the next MAIL."""
        if not self._in_transaction:
            return
        self._in_transaction = False
        for i, (_, session) in enumerate(self._sessions):
            if i not in self._done_session:
                await session.abort()

    async def close(self) -> None:
        """End every filter's session (each bounded by its own deadline)."""
        if self._closed:
            return
        self._closed = True
        await self._abort()
        await asyncio.gather(*(session.close() for _, session in self._sessions), return_exceptions=True)

    def _settle(self, i: int, name: str, phase: str, verdict: Verdict) -> Reply | None:
        _count(name, phase, verdict)
        if isinstance(verdict, Refuse):
            return verdict.reply
        if isinstance(verdict, AcceptRest):
            self._done_transaction.add(i)
        elif isinstance(verdict, Discard):
            self._discard = True
        return None


def _count(name: str, phase: str, verdict: Verdict) -> None:
    match verdict:
        case Refuse(reply=reply):
            word = "tempfail" if reply.is_transient else "reject"
        case AcceptRest():
            word = "accept"
        case Discard():
            word = "discard"
        case _:
            word = "continue"
    metrics.filter_verdict(name, phase, word)


def _is_large(data: bytes | Content) -> bool:
    return len(data.head if isinstance(data, Content) else data) > LARGE_HEAD


def _updated(transaction: Transaction, edited: Edited) -> Transaction:
    """The transaction as the next filter should see it after sender and recipient changes."""
    recipients = [r for r in transaction.recipients if r.lower() not in edited.deleted]
    recipients += [a for a, _ in edited.added if a.lower() not in {r.lower() for r in recipients}]
    sender = transaction.mail_from if edited.sender is None else edited.sender
    return replace(transaction, mail_from=sender, recipients=tuple(recipients))

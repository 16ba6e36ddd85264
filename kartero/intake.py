"""Intake: the one path every accepted message takes into the system.

A listener (the SMTP adapter), the maildrop pickup (`kartero sendmail`) and Kartero's own DSNs hand the
message here with its resolved recipients; intake runs the checks the listener asks for (with a
deadline), completes Date/Message-ID and DKIM-signs when asked (submission, sendmail), builds the trace
fields (this is the one place that writes `Received:` and `Return-Path:`), builds the one envelope
record (`kartero.mail.envelope`), and stores the local copies and queues the remote ones in one commit
(`Store.deliver_group`: both or neither, so a 451 never leaves half a message stored). The MIME index is
computed by the store's index threads before the commit, never in the committer.

Everything here is `async def` and runs on the event loop; blocking work (signing, the DNS of the
checks, reading a spooled message whole) goes through `Blocking`, with a deadline. A check that raises
or passes its deadline ends that message with `451 4.3.0` and a logged traceback; the session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses
from typing import Any

from kartero import metrics
from kartero.auth.accounts import DirectoryCache, DirectoryError, parse_address
from kartero.concurrency import Blocking, DeadlineExceeded, Finished, settled, start_eagerly, within
from kartero.dns.names import DomainError, canonical_domain
from kartero.filters.chain import Filtered
from kartero.log import kv
from kartero.mail import replies
from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.mail.replies import Reply
from kartero.mail.srs import SRS, SRSError, is_srs
from kartero.mail.trace import TraceEvent, TraceKind
from kartero.mailauth.dkim import DKIMError, Signer
from kartero.mime.headers import find_body_start, parse_header_block
from kartero.policy.decisions import AcceptMessage, MessageDecision, Reject
from kartero.policy.inbound import JUNK, srs_original
from kartero.rules.engine import Copy, Message, Plan, Rules
from kartero.rules.reject import build_rejection
from kartero.store.ids import new_message_id
from kartero.store.interface import (
    INBOX,
    Content,
    Delivery,
    DeliveryTarget,
    FileSpan,
    MailStore,
    Outbound,
    TraceStore,
    as_targets,
)
from kartero.store.spool import read_whole

log = logging.getLogger("kartero.intake")

# How long one policy decision (MAIL, RCPT, the message checks) may take before the client gets
# 451 4.3.0; [limits] check_deadline overrides it. SPF alone may make 10 DNS lookups (RFC 7208 §4.6.4).
CHECK_DEADLINE_S = 120.0
# How long the store may take to commit a message. Past it the client gets 451 and may retry; the commit
# may still land, so the retry can duplicate the message (which SMTP allows after a 4xx, and is better
# than a session that waits forever on a hung disk).
STORE_DEADLINE_S = 300.0

# Redirected copies one message may make, over all its recipients' scripts (each script has its own cap).
MAX_REDIRECTS_PER_MESSAGE = 20
# Remote destinations one message reaches through aliases, all recipients together: one message to a big
# alias list cannot make the queue send more copies than this (the rest are logged, not sent).
MAX_FORWARDS = 100
# Trace events of messages refused or discarded at the end of DATA (no commit to ride with) wait this long
# to be written together, at most this many (a flood of refused messages costs a write a second, not one
# each; beyond the cap they are counted in the log instead).
TRACE_FLUSH_S = 1.0
MAX_TRACE_BUFFER = 1000

MessageCheck = Callable[[bytes | Content], Coroutine[Any, Any, MessageDecision]]
# The listener's content filters (milters, hooks: kartero/filters) at the end of the message, given the
# message id it will be stored under (the milter macro `i`).
MessageFilter = Callable[[bytes | Content, str], Coroutine[Any, Any, Filtered]]


# -- trace fields -------------------------------------------------------------------------------------


def with_protocol(*, is_esmtp: bool, is_tls: bool, is_authenticated: bool, is_utf8: bool) -> str:
    """The `with` keyword of RFC 3848 and RFC 6531 §3.7.3 (e.g. ESMTPS, UTF8SMTPSA)."""
    if not is_esmtp:
        return "SMTP"
    base = "UTF8SMTP" if is_utf8 else "ESMTP"
    return base + ("S" if is_tls else "") + ("A" if is_authenticated else "")


@dataclass(frozen=True, slots=True)
class SmtpArrival:
    """How a message came in over SMTP, for its `Received:` field (RFC 5321 §4.4)."""

    helo: str
    client_ip: str
    protocol: str  # with_protocol()
    tls: str | None  # the TLS version and cipher, when TLS was used
    authenticated_as: str | None
    listener: str = ""  # which listener (smtp, submission, submissions), for the message trace
    client_name: str | None = None  # the client's verified reverse name, when it was looked up


@dataclass(frozen=True, slots=True)
class LocalArrival:
    """A message from a local program: `kartero sendmail` run by `user`."""

    user: str


Arrival = SmtpArrival | LocalArrival


def format_received(arrival: Arrival, *, hostname: str, message_id: str, recipient: str | None,
                    date: datetime) -> bytes:  # fmt: skip
    """A folded Received header ending in CRLF. `recipient` goes in a `for` clause (one recipient only,
    so that one stored copy can serve every recipient of a message)."""
    if isinstance(arrival, LocalArrival):
        return (f"Received: by {hostname} (Kartero sendmail, from userid {arrival.user or 'unknown'})\r\n"
                f"\tid {message_id}; {format_datetime(date)}\r\n").encode()  # fmt: skip
    client_ip = arrival.client_ip
    literal = f"[IPv6:{client_ip}]" if ":" in client_ip else f"[{client_ip}]"
    lines = [f"Received: from {arrival.helo} ({literal})"]
    by = f"by {hostname} (Kartero) with {arrival.protocol}"
    if arrival.tls:
        by += f" ({arrival.tls})"
    lines.append(by)
    if arrival.authenticated_as:
        lines.append(f"(authenticated as {arrival.authenticated_as})")
    last = f"id {message_id}"
    if recipient:
        last += f" for <{recipient}>"
    lines.append(f"{last}; {_rfc5322_date(date)}")
    return ("\r\n\t".join(lines) + "\r\n").encode("utf-8")


@functools.lru_cache(maxsize=4)
def _rfc5322_date(date: datetime) -> str:
    """format_datetime (10 µs) once per second, not once per message."""
    return format_datetime(date)


def format_return_path(sender: str) -> bytes:
    """`Return-Path: <sender>` (empty brackets for the null sender), RFC 5321 §4.4."""
    return f"Return-Path: <{sender}>\r\n".encode()


# -- what goes in and what comes out ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One accepted recipient: the local accounts it reaches, or (remote) the address to queue;
    `forward_to`: the remote addresses its aliases point at (a copy forwarded with an SRS sender)."""

    recipient: EnvelopeRecipient
    account_ids: tuple[int, ...] = ()
    is_remote: bool = False
    forward_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Incoming:
    envelope: EnvelopeRecord  # its recipients: every accepted one, in order
    data: bytes | Content
    targets: tuple[Target, ...]
    arrival: Arrival | None = None  # None: no Received field (a DSN Kartero wrote itself)
    check: MessageCheck | None = None  # the listener's checks of the content (policy.check_message)
    filter: MessageFilter | None = None  # the listener's content filters, after the checks
    complete_header: bool = False  # add From:/Date:/Message-ID: when missing (submission, sendmail)
    sign: bool = False  # DKIM-sign when the From: domain is local and has keys
    body_8bit: bool = False  # declared BODY=8BITMIME, or 8-bit octets seen by the SMTP core


@dataclass(frozen=True, slots=True)
class Stored:
    message_id: str
    queue_id: str | None  # the queue entry of the remote recipients, if any
    discarded: str | None = None  # accepted for nobody: why ("discarded by a filter", ...)

    @property
    def reply(self) -> Reply:
        return replies.MESSAGE_ACCEPTED.with_text(f"Message accepted as {self.message_id}")


@dataclass(frozen=True, slots=True)
class Refused:
    reply: Reply
    reason: str  # for the log line


# What the metrics count each Refused.reason as (kartero.metrics.REASONS); the others are words of it.
METRIC_REASONS = {"check failed": "error", "filter failed": "error", "no recipient left": "error",
                  "store failed": "error", "sieve reject": "sieve"}  # fmt: skip


Outcome = Stored | Refused


class Intake:
    def __init__(self, store: MailStore, directory: DirectoryCache, *, hostname: str, queue_lifetime_s: float,
                 blocking: Blocking, signer: Signer | None = None, check_deadline_s: float = CHECK_DEADLINE_S,
                 store_deadline_s: float = STORE_DEADLINE_S, rules: Rules | None = None,
                 srs: SRS | None = None, trace: TraceStore | None = None) -> None:  # fmt: skip
        self.store = store
        self.trace = trace  # None: no message trace is kept
        self._trace_buffer: list[TraceEvent] = []  # refusals and discards waiting for their write
        self._trace_dropped = 0
        self._account_names: tuple[object, dict[int, str]] = (None, {})  # the snapshot they were read from
        self.srs = srs  # None: forwarded mail keeps its sender, SRS addresses are not ours
        self.directory = directory
        self.hostname = hostname
        self.queue_lifetime_s = queue_lifetime_s
        self.blocking = blocking
        self.signer = signer
        self.check_deadline_s = check_deadline_s
        self.store_deadline_s = store_deadline_s
        self.rules = rules  # mail rules (Sieve) at final delivery; None: none
        self._pending: set[asyncio.Future[None]] = set()
        # DKIM signing holds a large (spooled) message in memory several times over (dkimpy): one at a time.
        self._large = threading.Lock()

    async def resolve(self, address: str) -> Target | None:
        """Where mail for the canonical `address` goes, for senders without a RCPT phase (sendmail, DSNs):
        local accounts (aliases followed), remote, or None for an unknown local address."""
        local, _, domain = address.rpartition("@")
        if domain not in self.directory.domains:
            return Target(EnvelopeRecipient(address), is_remote=True)
        if self.srs is not None and is_srs(local):  # a DSN about mail we forwarded: to its original sender
            original = srs_original(self.srs, address, time.time())
            if original is None:
                return None
            local, _, domain = original.rpartition("@")
            if domain not in self.directory.domains:
                return Target(EnvelopeRecipient(original), is_remote=True)
            address = f"{local.lower()}@{domain}"
        resolution = await self.directory.resolve(address)
        if not resolution.has_destinations:
            return None
        return Target(EnvelopeRecipient(address), resolution.account_ids, forward_to=resolution.forward_to)

    async def accept(self, incoming: Incoming) -> Outcome:
        """Check, complete, trace and store one message; Stored once it is durable."""
        origin = incoming.envelope.origin
        metrics.message_received(origin)
        try:
            outcome = await self._accept(incoming)
        except BaseException:  # a bug, or the caller's deadline cancelled it: the client gets a 451
            metrics.message_refused(origin, "error")
            raise
        if isinstance(outcome, Refused):
            metrics.message_refused(origin, METRIC_REASONS.get(outcome.reason, outcome.reason))
        elif outcome.discarded:
            metrics.message_discarded(origin)
        else:
            metrics.message_stored(origin)
        if self.trace is None:
            return outcome
        if isinstance(outcome, Refused) and outcome.reason != "store failed":  # a failed store: nothing to say
            self._trace_later(self._opening(TraceKind.REFUSED, incoming, incoming.envelope, new_message_id(),
                                            reply=outcome.reply.to_line(), note=outcome.reason))  # fmt: skip
        elif isinstance(outcome, Stored) and outcome.discarded:
            self._trace_later(self._opening(TraceKind.DISCARDED, incoming, incoming.envelope, outcome.message_id,
                                            note=outcome.discarded))  # fmt: skip
        return outcome

    async def _accept(self, incoming: Incoming) -> Outcome:
        data = incoming.data
        mailbox = INBOX
        checks = ""
        if incoming.check is not None:
            try:
                checking = start_eagerly(incoming.check(data))  # most checks need no I/O: no Task then
                if isinstance(checking, Finished):
                    decision = checking.result()
                else:
                    decision = await within(self.check_deadline_s, checking, "message check")
            except Exception as exc:  # a bug or a hang in a check: this message only
                log.error("%s", kv(event="intake.check_failed", sender=f"<{incoming.envelope.sender}>",
                                   detail=str(exc) or exc.__class__.__name__), exc_info=exc)  # fmt: skip
                return Refused(replies.LOCAL_ERROR, "check failed")
            if isinstance(decision, Reject):
                return Refused(decision.reply, decision.reason)
            assert isinstance(decision, AcceptMessage)
            data, mailbox, checks = decision.data, decision.mailbox, decision.checks
        message_id = new_message_id()
        if incoming.filter is not None:
            filtered = await self._filtered(incoming, incoming.filter, data, message_id)
            if not isinstance(filtered, tuple):
                return filtered
            incoming, is_junk = filtered
            data = incoming.data
            if is_junk:
                mailbox = JUNK
        envelope = incoming.envelope
        if not envelope.received_at:
            envelope = replace(envelope, received_at=int(time.time()))
        now = datetime.fromtimestamp(envelope.received_at, UTC)
        if incoming.complete_header:
            data = _prepend(self._missing_fields(_head(data), envelope.sender, now), data)
        if incoming.sign and self.signer is not None:
            try:
                data = await self.blocking(self.check_deadline_s, self._signed, self.signer, data)
            except DeadlineExceeded as exc:
                log.error("%s", kv(event="dkim.sign_failed", detail=str(exc)))  # sent unsigned, as on errors
        return await self._store(incoming, envelope, data, mailbox, now, message_id, checks)

    async def _filtered(self, incoming: Incoming, content_filter: MessageFilter, data: bytes | Content,
                        message_id: str) -> Outcome | tuple[Incoming, bool]:  # fmt: skip
        """The message as the content filters left it (and whether they found it spam), or their answer:
        refused, or discarded (accepted for nobody, logged)."""
        sender = f"<{incoming.envelope.sender}>"
        try:
            running = start_eagerly(content_filter(data, message_id))
            if isinstance(running, Finished):
                filtered = running.result()
            else:
                filtered = await within(self.check_deadline_s, running, "content filters")
        except Exception as exc:  # each filter answers its own failures; this is a bug or the backstop
            log.error("%s", kv(event="intake.filter_failed", id=message_id, sender=sender,
                               detail=str(exc) or exc.__class__.__name__), exc_info=exc)  # fmt: skip
            return Refused(replies.LOCAL_ERROR, "filter failed")
        if filtered.refusal is not None:
            return Refused(filtered.refusal, "filter")
        if filtered.discard:
            log.info("%s", kv(event="filter.discarded", id=message_id, sender=sender))
            return Stored(message_id, None, "discarded by a filter")
        edited = filtered.edited
        envelope = incoming.envelope
        targets = incoming.targets
        if edited.deleted:  # the milter names them as the client wrote them; a remote target is canonical
            deleted = {_address_key(a) for a in edited.deleted}
            targets = tuple(t for t in targets if _address_key(t.recipient.address) not in deleted)
        known = {_address_key(t.recipient.address) for t in targets}
        for address, _ in edited.added:
            try:
                canonical = parse_address(address)
                target = await self.resolve(canonical)
            except (DirectoryError, DomainError) as exc:
                target, canonical = None, address
                log.info("%s", kv(event="filter.bad_recipient", id=message_id, rcpt=address, detail=str(exc)))
            if target is None:
                log.info("%s", kv(event="filter.unknown_recipient", id=message_id, rcpt=canonical))
            elif _address_key(canonical) not in known:
                known.add(_address_key(canonical))
                targets += (target,)
        if not targets:
            log.info("%s", kv(event="filter.no_recipients", id=message_id, sender=sender))
            return Stored(message_id, None, "a filter removed every recipient")
        if edited.sender is not None:
            envelope = replace(envelope, sender=edited.sender)
        if targets != incoming.targets:
            envelope = replace(envelope, recipients=tuple(t.recipient for t in targets))
        if edited.quarantine is not None:
            log.info("%s", kv(event="filter.quarantined", id=message_id, sender=sender, reason=edited.quarantine))
        return replace(incoming, envelope=envelope, targets=targets, data=edited.data), filtered.junk

    async def _store(self, incoming: Incoming, envelope: EnvelopeRecord, data: bytes | Content, mailbox: str,
                     now: datetime, message_id: str, checks: str = "") -> Outcome:  # fmt: skip
        recipients = envelope.recipients
        received = b""
        if incoming.arrival is not None:
            received = format_received(incoming.arrival, hostname=self.hostname, message_id=message_id,
                                       recipient=recipients[0].address if len(recipients) == 1 else None,
                                       date=now)  # fmt: skip
        targets = self._without_loops(incoming.targets, _head(data), message_id)
        if not targets:
            return Refused(replies.MAIL_LOOP, "loop")
        account_ids = [a for t in targets if not t.is_remote for a in t.account_ids]
        remote = tuple(t.recipient for t in targets if t.is_remote)
        deliveries: list[Delivery] = []
        notes: dict[str, str] = {}  # queue entries that are forwarded copies: why, for the trace
        queue_id = None
        timestamp = envelope.received_at
        plans = await self._plans(targets, envelope, data, now) if account_ids and self.rules is not None else []
        plans = _redirects_capped(plans, message_id)
        forwarding = any(t.forward_to for t in targets if not t.is_remote)
        if plans and not forwarding and (refusal := _refusal_in_reply(plans, envelope, account_ids, remote)):
            log.info("%s", kv(event="sieve.rejected", id=message_id, sender=f"<{envelope.sender}>",
                              to=plans[0].recipient.address))  # fmt: skip
            return refusal
        if account_ids:  # final delivery: Return-Path goes first (RFC 5321 §4.4)
            trace = format_return_path(envelope.sender) + received
            scripted = {p.recipient.account_id for p in plans}
            stored_in = list(as_targets([a for a in account_ids if a not in scripted], mailbox))
            edited: list[tuple[bytes, DeliveryTarget]] = []
            for plan in plans:
                for kept in plan.copies:
                    box = mailbox if kept.keep else kept.mailbox  # a keep goes where the checks said (Junk)
                    where = DeliveryTarget(plan.recipient.account_id, box, kept.flags)
                    if kept.header is None:
                        stored_in.append(where)
                    else:
                        edited.append((kept.header, where))
            if stored_in:
                deliveries.append(Delivery(message_id, _prepend(trace, data), tuple(stored_in), timestamp, envelope))
            for header, where in edited:  # editheader: a copy of its own
                blob_id = new_message_id() if deliveries else message_id
                deliveries.append(Delivery(blob_id, _prepend(trace, _with_header(data, header)), (where,), timestamp,
                                           envelope))  # fmt: skip
            redirects = self._redirects(plans, envelope, data, received, incoming)
            deliveries += [d for d, _ in redirects]
            notes.update((d.blob_id, f"redirected by the rules of {a}") for d, a in redirects)
        if remote:  # relayed on: no Return-Path, the final MTA adds its own
            head = _head(data)
            outbound = Outbound(
                sender=envelope.sender,
                recipients=remote,
                expires_at=timestamp + int(self.queue_lifetime_s),
                ret=envelope.ret,
                envid=envelope.envid,
                smtputf8=envelope.smtputf8,
                body_8bit=incoming.body_8bit or not head.isascii() or _tail_is_8bit(data),
            )
            queue_id = message_id if not deliveries else new_message_id()
            deliveries.append(Delivery(queue_id, _prepend(received, data), (), timestamp, envelope, outbound))
        budget = MAX_FORWARDS
        sent = {r.address.lower() for r in remote}  # each address gets one copy, however many aliases lead there
        for target in targets:
            if not target.forward_to or target.is_remote:
                continue
            new = tuple(d for d in target.forward_to if d.lower() not in sent)
            sent.update(d.lower() for d in new)
            if len(new) > budget:
                log.warning("%s", kv(event="intake.forward_limit", id=message_id, rcpt=target.recipient.address,
                                     dropped=",".join(new[budget:]), limit=MAX_FORWARDS))  # fmt: skip
            destinations = new[:budget]
            budget -= len(destinations)
            if destinations:
                copy = self.forwarded(envelope, _prepend(received, data), destinations, target.recipient.address,
                                      notify=target.recipient.notify, body_8bit=incoming.body_8bit,
                                      blob_id=None if deliveries else message_id)  # fmt: skip
                queue_id = queue_id or copy.blob_id
                deliveries.append(copy)
                notes[copy.blob_id] = f"forwarded for {target.recipient.address}"
        if not deliveries:
            if plans and account_ids and not remote:  # every copy discarded, rejected or redirected away
                self._later(self._after_rules(plans, envelope, data, message_id, junk=mailbox != INBOX))
                return Stored(message_id, None, "discarded by the users' rules")
            return Refused(replies.LOCAL_ERROR, "no recipient left")
        path: list[TraceEvent] = []
        if self.trace is not None:
            path = self._path(incoming, envelope, message_id, checks, targets, plans, mailbox, deliveries, notes)
        try:
            # One group: the local copies and the queue entry commit together or not at all (and the
            # message's trace events with them).
            await settled(self.store.deliver_group(deliveries, path), self.store_deadline_s, "store commit")
        except Exception as exc:
            log.error("%s", kv(event="intake.store_failed", id=message_id, detail=str(exc)))
            return Refused(replies.LOCAL_ERROR, "store failed")
        metrics.delivered("local", sum(len(d.targets) for d in deliveries))
        if plans:
            self._later(self._after_rules(plans, envelope, data, message_id, junk=mailbox != INBOX))
        return Stored(message_id, queue_id)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Work after the 250 (replies a user's rules asked for): a task of its own, so the client's
        answer never waits for it and a session that ends cannot cut it off; `drain` awaits them."""
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait (at shutdown, in tests) for the work `_later` started, and write the trace events that
        wait for their batch."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)
        if self._trace_buffer:
            await self._flush_trace()

    # -- the message trace (kartero.mail.trace) -------------------------------------------------------

    def _path(self, incoming: Incoming, envelope: EnvelopeRecord, message_id: str, checks: str,
              targets: tuple[Target, ...], plans: list[Plan], mailbox: str, deliveries: list[Delivery],
              notes: dict[str, str]) -> list[TraceEvent]:  # fmt: skip
        """The message's trace as far as intake takes it, to be kept with its commit: received, stored
        (each mailbox copy, with the account when an alias led there), queued (each remote recipient;
        forwarded and redirected copies say why)."""
        at = time.time()
        path = [self._opening(TraceKind.RECEIVED, incoming, envelope, message_id, at, checks=checks or None)]
        done = {p.recipient.account_id for p in plans}  # their copies are the plans' own
        for target in targets:
            for account_id in () if target.is_remote else target.account_ids:
                if account_id not in done:
                    done.add(account_id)
                    path.append(TraceEvent(TraceKind.STORED, at, message_id, recipient=target.recipient.address,
                                           account=self._account_name(target.recipient.address, account_id),
                                           mailbox=mailbox))  # fmt: skip
        for plan in plans:
            rcpt = plan.recipient
            for kept in plan.copies:
                path.append(TraceEvent(TraceKind.STORED, at, message_id, recipient=rcpt.envelope_to,
                                       account=rcpt.address if rcpt.address != _address_key(rcpt.envelope_to) else None,
                                       mailbox=mailbox if kept.keep else kept.mailbox,
                                       note=None if kept.keep else "filed by the user's rules"))  # fmt: skip
        for delivery in deliveries:
            for r in delivery.outbound.recipients if delivery.outbound is not None else ():
                path.append(TraceEvent(TraceKind.QUEUED, at, message_id, delivery.blob_id, recipient=r.address,
                                       note=notes.get(delivery.blob_id)))  # fmt: skip
        return path

    def _opening(self, kind: TraceKind, incoming: Incoming, envelope: EnvelopeRecord, message_id: str,
                 at: float | None = None, **detail: Any) -> TraceEvent:  # fmt: skip
        """The event that opens a message's path (received, refused, discarded): who sent it to whom,
        from where, how."""
        arrival = incoming.arrival
        smtp = arrival if isinstance(arrival, SmtpArrival) else None
        return TraceEvent(
            kind, time.time() if at is None else at, message_id, sender=envelope.sender,
            recipients=tuple(r.address for r in envelope.recipients), origin=envelope.origin.value,
            listener=smtp.listener or None if smtp else None, client=envelope.client_ip,
            client_name=smtp.client_name if smtp else None, helo=envelope.helo, tls=smtp.tls if smtp else None,
            user=envelope.user or (arrival.user if isinstance(arrival, LocalArrival) else None),
            size=len(incoming.data), **detail,
        )  # fmt: skip

    def _account_name(self, recipient: str, account_id: int) -> str | None:
        """The address of the account a recipient reached, when it is not the recipient itself (an alias,
        a catch-all, a plus address); read from the directory snapshot, its reverse made once per snapshot."""
        snapshot = self.directory.current()
        if snapshot.accounts.get(recipient.lower()) == account_id or (  # most are canonical already
                snapshot.accounts.get(_address_key(recipient)) == account_id):
            return None
        seen, names = self._account_names
        if seen is not snapshot:
            names = {i: a for a, i in snapshot.accounts.items()}
            self._account_names = (snapshot, names)
        return names.get(account_id)

    def _trace_later(self, event: TraceEvent) -> None:
        """Keep the event of a message that has no commit (refused, discarded) with the next batch."""
        if len(self._trace_buffer) >= MAX_TRACE_BUFFER:
            self._trace_dropped += 1
            return
        self._trace_buffer.append(event)
        if len(self._trace_buffer) == 1:
            asyncio.get_running_loop().call_later(TRACE_FLUSH_S, lambda: self._later(self._flush_trace()))

    async def _flush_trace(self) -> None:
        events, self._trace_buffer = self._trace_buffer, []
        dropped, self._trace_dropped = self._trace_dropped, 0
        if dropped:
            log.warning("%s", kv(event="trace.dropped", events=dropped, detail="too many refusals at once"))
        if not events or self.trace is None:
            return
        try:
            await self.blocking(self.check_deadline_s, self.trace.record, events)
        except Exception as exc:  # the database away: the events are lost, the log still has the messages
            log.warning("%s", kv(event="trace.record_failed", events=len(events), detail=str(exc)))

    # -- mail rules (kartero.rules) -------------------------------------------------------------------

    async def _plans(self, targets: tuple[Target, ...], envelope: EnvelopeRecord, data: bytes | Content,
                     now: datetime) -> list[Plan]:  # fmt: skip
        """The Sieve plans of the local accounts with an active script; none (plain delivery, logged)
        when the scripts cannot be run in time: a message is never lost to its rules."""
        rules = self.rules
        assert rules is not None
        try:
            if rules.needs_refresh():
                await self.blocking(self.check_deadline_s, rules.refresh)
            wanted: list[tuple[int, str, str]] = []
            planned: set[int] = set()
            for target in targets:
                if target.is_remote:
                    continue
                rcpt = target.recipient
                orcpt = rcpt.orcpt or ""
                original = orcpt.partition(";")[2] if orcpt.lower().startswith("rfc822;") else ""
                for account_id in rules.scripted(target.account_ids):
                    if account_id not in planned:  # each account once
                        planned.add(account_id)
                        wanted.append((account_id, rcpt.address, original or rcpt.address))
            if not wanted:
                return []
            message = await self.blocking(self.check_deadline_s, _rules_message, data, envelope, rules.limits.max_body)
            snapshot = self.directory.current()
            return await self.blocking(self.check_deadline_s, rules.plan, message, wanted, snapshot.accounts, now)
        except Exception as exc:
            log.error("%s", kv(event="sieve.not_run", sender=f"<{envelope.sender}>", detail=str(exc) or repr(exc)),
                      exc_info=exc)  # fmt: skip
            return []

    def _redirects(self, plans: list[Plan], envelope: EnvelopeRecord, data: bytes | Content, received: bytes,
                   incoming: Incoming) -> list[tuple[Delivery, str]]:  # fmt: skip
        """Sieve `redirect`: a queue entry per redirected copy, as an alias forwards (`forwarded`: marked
        with `Delivered-To:` of the account, the envelope sender rewritten by SRS), each with the account
        whose rules redirected it."""
        deliveries = []
        for plan in plans:
            for forward in plan.forwards:
                copy = data if forward.header is None else _with_header(data, forward.header)
                # Delivered-To names the address the mail came to (as an alias forward does): a redirect
                # that comes back to that address stops there (`_without_loops`), whichever alias it was.
                deliveries.append((self.forwarded(envelope, _prepend(received, copy), (forward.address,),
                                                  plan.recipient.envelope_to, body_8bit=incoming.body_8bit),
                                   plan.recipient.address))  # fmt: skip
                log.info("%s", kv(event="sieve.redirected", account=plan.recipient.address, to=forward.address))
        return deliveries

    async def _after_rules(self, plans: list[Plan], envelope: EnvelopeRecord, data: bytes | Content,
                           message_id: str, *, junk: bool) -> None:  # fmt: skip
        """Once the message is stored: duplicate ids remembered, vacation replies and rejection notices sent
        (each with the null sender; none for mail the checks put in Junk, whose sender is likely forged:
        no backscatter). Each step fails alone, logged; the message itself is delivered."""
        rules = self.rules
        assert rules is not None
        now = int(time.time())
        for plan in plans:
            account = plan.recipient.address
            if plan.duplicates:
                with self._logged_failure(message_id, account, "duplicate"):
                    await self.blocking(self.check_deadline_s, rules.remember_duplicates, plan.recipient,
                                        plan.duplicates, now)  # fmt: skip
            if junk and (plan.reject is not None or plan.vacation is not None):
                log.info("%s", kv(event="sieve.reply_skipped", id=message_id, account=account, reason="junk"))
                continue
            if plan.reject is not None and envelope.sender:
                with self._logged_failure(message_id, account, "reject notice"):
                    head = _head(data)
                    original_header = head[: find_body_start(head)[0]]
                    notice = build_rejection(
                        original_header=original_header, header=parse_header_block(original_header),
                        sender=envelope.sender, recipient=account, original_recipient=plan.recipient.original,
                        reason=plan.reject.reason, now=datetime.now(UTC), hostname=self.hostname,
                    )  # fmt: skip
                    await self._send_generated(envelope.sender, notice, "sieve.reject_notice", message_id)
            if plan.vacation is not None:
                with self._logged_failure(message_id, account, "vacation"):
                    if await self.blocking(self.check_deadline_s, rules.remember_vacation, plan.recipient,
                                           plan.vacation, now):  # fmt: skip
                        await self._send_generated(plan.vacation.reply.recipient, plan.vacation.reply.data,
                                                   "sieve.vacation_sent", message_id)  # fmt: skip
                    else:
                        log.info("%s", kv(event="sieve.vacation_skipped", account=account,
                                          reason="already replied within the period"))  # fmt: skip

    @contextlib.contextmanager
    def _logged_failure(self, message_id: str, account: str, step: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            log.error("%s", kv(event="sieve.after_delivery_failed", id=message_id, account=account, step=step,
                               detail=str(exc) or repr(exc)), exc_info=exc)  # fmt: skip

    async def _send_generated(self, recipient: str, data: bytes, event: str, message_id: str) -> None:
        """A message Kartero wrote for a user's rules, with the null sender, to a local or remote address."""
        try:
            address = parse_address(recipient)
        except DirectoryError:
            log.warning("%s", kv(event=event, id=message_id, to=recipient, detail="unusable address"))
            return
        target = await self.resolve(address)
        if target is None:
            log.warning("%s", kv(event=event, id=message_id, to=address, detail="no such local address"))
            return
        if target.is_remote:  # NOTIFY=NEVER: no DSN about a reply to mail (RFC 3461 §6.2)
            target = Target(EnvelopeRecipient(target.recipient.address, ("NEVER",)), is_remote=True)
        envelope = EnvelopeRecord(Origin.SIEVE, "", (target.recipient,), smtputf8=not address.isascii())
        outcome = await self.accept(Incoming(envelope, data, (target,), sign=True, body_8bit=not data.isascii()))
        if isinstance(outcome, Refused):
            log.error("%s", kv(event=event, id=message_id, to=address, detail=outcome.reason))
        else:
            log.info("%s", kv(event=event, id=message_id, to=address, reply_id=outcome.message_id))
    def forwarded(self, envelope: EnvelopeRecord, data: bytes | Content, destinations: Sequence[str], sent_to: str,
                  *, notify: tuple[str, ...] = (), body_8bit: bool = False,
                  blob_id: str | None = None) -> Delivery:  # fmt: skip
        """The queued copy of a message forwarded to the remote `destinations` on behalf of our address
        `sent_to` (an alias with remote destinations, or Sieve `redirect` of that account): `data` as
        relayed (trace fields, no Return-Path) after `Delivered-To: sent_to` (what stops a loop when it
        comes back, see `_without_loops`), its envelope sender rewritten by `forward_sender`. Store it
        in the same `deliver_group` as the message's other copies, so that all or none are kept."""
        timestamp = envelope.received_at or int(time.time())
        sender = self.forward_sender(envelope.sender, sent_to, float(timestamp))
        copy = _prepend(f"Delivered-To: {sent_to}\r\n".encode(), data)
        head = _head(copy)
        outbound = Outbound(
            sender=sender,
            recipients=tuple(EnvelopeRecipient(d, notify) for d in destinations),
            expires_at=timestamp + int(self.queue_lifetime_s),
            ret=envelope.ret,
            envid=envelope.envid,
            smtputf8=envelope.smtputf8 or not (sender + "".join(destinations) + sent_to).isascii(),
            body_8bit=body_8bit or not head.isascii() or _tail_is_8bit(copy),
        )
        return Delivery(blob_id or new_message_id(), copy, (), timestamp, envelope, outbound)

    def forward_sender(self, sender: str, sent_to: str, now: float) -> str:
        """The envelope sender of a copy forwarded for our address `sent_to`: the null sender stays null
        (a bounce is never bounced); a sender in one of our domains stays as it is (our SPF covers us,
        and its bounces come home anyway); any other becomes an SRS address in `sent_to`'s domain (whose
        MX is us, so the bounce comes back to be reversed). A sender SRS cannot carry (a quoted local
        part, a local part past 64 octets once rewritten) is forwarded with the null sender, logged."""
        if not sender or self.srs is None:
            return sender
        if _domain_of(sender) in self.directory.domains:
            return sender
        forwarder = _domain_of(sent_to)
        if forwarder not in self.directory.domains:
            forwarder = min(self.directory.domains)
        try:
            return self.srs.forward(sender, forwarder, now)
        except SRSError as exc:
            log.warning("%s", kv(event="intake.srs_unrewritable", sender=f"<{sender}>", detail=str(exc)))
            return ""

    def _without_loops(self, targets: tuple[Target, ...], head: bytes, message_id: str) -> tuple[Target, ...]:
        """The targets whose address is not in a Delivered-To field of the message already: mail that has
        been here for that address (it was forwarded from here and came back) is not delivered again
        for it (logged); the other recipients still get it."""
        seen = delivered_to(head)
        if not seen:
            return targets
        kept = []
        for target in targets:
            if target.recipient.address.lower() in seen:
                log.warning("%s", kv(event="intake.loop", id=message_id, rcpt=target.recipient.address))
            else:
                kept.append(target)
        return tuple(kept)

    def _signed(self, signer: Signer, data: bytes | Content) -> bytes | Content:
        """The message with its DKIM signatures when its From: domain is local and has keys; unsigned
        (logged) if signing fails: mail still goes out. Blocking."""
        head = _head(data)
        header = parse_header_block(head[: find_body_start(head)[0]])
        addresses = getaddresses([v.decode("utf-8", "replace") for v in header.get_all("from")])
        try:
            domain = canonical_domain(addresses[0][1].rpartition("@")[2]) if addresses else ""
        except DomainError:
            return data
        if domain not in self.directory.domains or not signer.keys_for(domain):
            return data  # nothing to sign with: a large message is never read whole
        try:
            if isinstance(data, Content):
                with self._large:
                    signature = signer.sign(domain, read_whole(data))
                return Content(signature + data.head, data.tail)
            return signer.sign(domain, data) + data
        except DKIMError as exc:
            log.error("%s", kv(event="dkim.sign_failed", domain=domain, detail=str(exc)))
            return data

    def _missing_fields(self, head: bytes, sender: str, now: datetime) -> bytes:
        """From:, Date: and Message-ID: when the header lacks them (what a mail user agent would have
        written; RFC 6409 §8.2, §8.3). Submission refuses a message without From: before this."""
        header = parse_header_block(head[: find_body_start(head)[0]])
        added = b""
        if header.get("from") is None:
            added += f"From: <{sender}>\r\n".encode() if sender else b"From: MAILER-DAEMON\r\n"
        if header.get("date") is None:
            added += f"Date: {format_datetime(now)}\r\n".encode()
        if header.get("message-id") is None:
            added += f"Message-ID: <{secrets.token_hex(12)}@{self.hostname}>\r\n".encode()
        return added


def _refusal_in_reply(plans: list[Plan], envelope: EnvelopeRecord, account_ids: list[int],
                      remote: tuple[EnvelopeRecipient, ...]) -> Refused | None:  # fmt: skip
    """Sieve `reject` answered in the SMTP reply (RFC 5429 §2.1): on the MX listener, when the message
    has one recipient and every account it reaches rejects it. Otherwise a notice is sent instead."""
    if envelope.origin != Origin.SMTP or len(envelope.recipients) != 1 or remote:
        return None
    rejects = {p.recipient.account_id: p.reject for p in plans if p.reject is not None}
    if not rejects or set(account_ids) - rejects.keys():
        return None
    reason = next(iter(rejects.values()))
    assert reason is not None
    text = " ".join(reason.reason.split())
    text = "".join(c if " " <= c <= "~" else "?" for c in text)[:200]
    return Refused(replies.SIEVE_REJECTED.with_text(text) if text else replies.SIEVE_REJECTED, "sieve reject")


def _redirects_capped(plans: list[Plan], message_id: str) -> list[Plan]:
    """At most MAX_REDIRECTS_PER_MESSAGE redirects over all the message's scripts; a plan that loses
    redirects to the cap and stores nothing keeps the message in INBOX instead (never lost to a cap)."""
    budget = MAX_REDIRECTS_PER_MESSAGE
    capped = []
    for plan in plans:
        if len(plan.forwards) > budget:
            log.warning("%s", kv(event="sieve.redirect_limit", id=message_id, account=plan.recipient.address,
                                 dropped=",".join(f.address for f in plan.forwards[budget:])))  # fmt: skip
            copies = plan.copies or (Copy(INBOX, keep=True),)
            plan = replace(plan, forwards=plan.forwards[:budget], copies=copies)
        budget -= len(plan.forwards)
        capped.append(plan)
    return capped


def _rules_message(data: bytes | Content, envelope: EnvelopeRecord, max_body: int) -> Message:
    """The message for the scripts: its header block and at most `max_body` octets of body (blocking:
    a spooled body is read from its file)."""
    head = _head(data)
    end, body_start = find_body_start(head)
    body = head[body_start:]
    if isinstance(data, Content) and len(body) < max_body:
        tail = data.tail
        if isinstance(tail, FileSpan):
            with tail.path.open("rb") as file:
                file.seek(tail.offset)
                body += file.read(min(tail.length, max_body - len(body)))
        else:
            body += tail[: max_body - len(body)]
    # No remote-host: the HELO name is the client's claim, not a verified name (RFC 5183 §4).
    return Message(head[:end], body[:max_body], envelope.sender, envelope.user, envelope.client_ip, None, len(data))


def _with_header(message: bytes | Content, header: bytes) -> bytes | Content:
    """The message with its header block replaced (editheader), the body untouched."""
    head = _head(message)
    rest = head[find_body_start(head)[1] :]
    if isinstance(message, Content):
        return Content(header + rest, message.tail)
    return header + rest
_DELIVERED_TO = re.compile(rb"^delivered-to:", re.IGNORECASE | re.MULTILINE)  # a literal: linear


def delivered_to(head: bytes) -> frozenset[str]:
    """The addresses in the Delivered-To fields of a message's header, lower-cased, angle brackets gone
    (Postfix writes none, some write them). The header is parsed only when such a field is there."""
    block = head[: find_body_start(head)[0]]
    if _DELIVERED_TO.search(block) is None:
        return frozenset()
    values = parse_header_block(block).get_all("delivered-to")
    return frozenset(v.decode("utf-8", "replace").strip().strip("<>").strip().lower() for v in values)


def _address_key(address: str) -> str:
    """An address as filters' recipient changes are matched: lower-case, the domain in A-label form."""
    local, at, _ = address.rpartition("@")
    return f"{local.lower()}{at}{_domain_of(address).lower()}" if at else address.lower()


def _domain_of(address: str) -> str:
    """The domain of an address, canonical where it can be (else as written: then it is not ours)."""
    domain = address.rpartition("@")[2]
    try:
        return canonical_domain(domain)
    except DomainError:
        return domain


def _prepend(fields: bytes, message: bytes | Content) -> bytes | Content:
    """Fields before a message, without copying a spooled message's body."""
    if not fields:
        return message
    if isinstance(message, Content):
        return Content(fields + message.head, message.tail)
    return fields + message


def _head(message: bytes | Content) -> bytes:
    return message.head if isinstance(message, Content) else message


def _tail_is_8bit(message: bytes | Content) -> bool:
    tail = message.tail if isinstance(message, Content) else b""
    return isinstance(tail, bytes) and not tail.isascii()


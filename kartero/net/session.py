"""The asyncio adapter of one SMTP session: socket bytes in and out of the sans-I/O core.

Callback-driven (like uvicorn's h11 protocol): `data_received` feeds the core and drains its events on
the spot, so a command whose decision needs no I/O is answered without a task switch. Decisions that do
need I/O — storing a message, reloading the directory after an admin change — come back as
`concurrent.futures.Future`s; the session stops draining the core until the answer arrives on the loop,
and stops reading once READ_AHEAD_BYTES wait in the core (back-pressure: a client streaming behind a
pending decision fills its own socket buffers, not our memory). The deadlines (idle, command, login:
see deadlines.py) are one timer per session, moved earlier when a command starts and otherwise re-armed
lazily when it fires.

The adapter never parses a command or picks a reply code; the core and the policy do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

from kartero.auth.accounts import Authenticator
from kartero.auth.throttle import AuthThrottle
from kartero.log import kv
from kartero.mail import replies
from kartero.mail.replies import Reply
from kartero.mime.headers import find_body_start
from kartero.net.deadlines import Deadline, Deadlines, DeadlineSettings
from kartero.policy.decisions import Accept, AcceptMessage, Decision, MessageDecision, Policy, RcptContext
from kartero.policy.limits import Admission, Ticket
from kartero.smtp.events import (
    AuthRequested,
    Body,
    ConnectionClosed,
    Envelope,
    Hello,
    MailFrom,
    MessageData,
    MessageReceived,
    MessageRefused,
    OutputReady,
    RcptTo,
    ScramFinished,
    ScramRequested,
    StartTLSRequested,
)
from kartero.smtp.received import format_received, format_return_path, with_protocol
from kartero.smtp.server import ServerConnection, ServerSettings
from kartero.store.ids import new_message_id
from kartero.store.interface import Content, Delivery, FileSpan, Outbound, OutboundRecipient, Store, as_targets
from kartero.store.spool import IncomingSpool
from kartero.tls import describe

log = logging.getLogger("kartero.smtp")

# Stop reading from a peer that sends faster than the core consumes (e.g. while a decision is pending):
# the core holds no more than this plus one read (256 KiB) of unprocessed input.
READ_AHEAD_BYTES = 64 * 1024
TLS_HANDSHAKE_TIMEOUT_S = 30.0
# Of a message that spills to a spool file, this much of its start stays in memory to find the header
# (which policy reads and changes); a message whose header does not end within it is refused (552 5.3.4):
# forged Authentication-Results fields must never be left in a header too large to clean.
HEADER_LIMIT = 2 * 1024 * 1024

# The 421 4.4.2 for each deadline (RFC 5321 §4.5.3.2; 421 before closing, §3.8), and the reason logged.
DEADLINE_REPLIES = {
    Deadline.IDLE: (replies.TIMEOUT, "timeout"),
    Deadline.COMMAND: (replies.TIMEOUT.with_text("Command not completed in time, closing connection"),
                       "command deadline"),
    Deadline.LOGIN: (replies.TIMEOUT.with_text("Login not completed in time, closing connection"), "login deadline"),
}  # fmt: skip


@dataclass(slots=True)
class SessionContext:
    """What every session of one listener shares; built by server.py."""

    listener: str
    settings: ServerSettings
    policy: Policy
    store: Store
    tls_context: Callable[[], Any]  # the current ssl.SSLContext (reloaded on SIGHUP), or None
    spawn: Callable[[Coroutine[Any, Any, None]], None]  # runs a coroutine in the server's TaskGroup
    sessions: set[SMTPSession]
    on_session_end: Callable[[], None]
    is_stopping: Callable[[], bool]
    implicit_tls: bool = False
    authenticator: Authenticator | None = None
    throttle: AuthThrottle | None = None
    queue_lifetime_s: float = 5 * 86400.0
    admission: Admission | None = None  # the server's connection caps; None: unlimited (unit tests)
    deadlines: DeadlineSettings = field(default_factory=lambda: DeadlineSettings(login_s=None))
    spool_dir: Path | None = None  # where messages too large for memory go while they arrive

    @property
    def service(self) -> str:
        return self.listener.rstrip("s")  # submissions -> submission


class SMTPSession(asyncio.Protocol):
    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.id = new_message_id()[-10:]
        self.conn = ServerConnection(ctx.settings, is_tls=ctx.implicit_tls, sasl_nonce=secrets.token_urlsafe(18))
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.proxied_peer: tuple[str, int] | None = None  # the client a PROXY header named (listener.py)
        self.admitted: Ticket | None = None  # counted by the caps before the TLS handshake (listener.py)
        self.client_ip = "?"
        self._mail_from = ""
        self._ticket: Ticket | None = None  # how the connection caps counted this session
        self._is_logged_in = False
        self._busy = False  # an asynchronous decision or the TLS handshake is under way
        self._can_write = True
        self._reading_paused = False
        self._finished = False
        self._lost = False
        self._stopping = False
        self._tls_early: list[bytes] | None = None  # application data that arrives during the handshake
        self._tls_info: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadlines = Deadlines(ctx.deadlines, self.loop.time())
        self._started_at = time.monotonic()
        self._recipients: dict[str, Accept] = {}  # accepted RCPT path -> its decision, this transaction
        self._spool = IncomingSpool(ctx.spool_dir)  # the message being received, once it spilled out of memory
        self._spool_start = b""  # its first octets (the header is read from them)

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        via = None
        if self.proxied_peer is not None:
            via, peer = str(peer[0]) if peer else "?", self.proxied_peer
        self.client_ip = str(peer[0]) if peer else "?"
        if self.ctx.implicit_tls:
            self._tls_info = describe(transport.get_extra_info("ssl_object"))
        self.ctx.sessions.add(self)
        log.info("%s", kv(event="smtp.connect", session=self.id, listener=self.ctx.listener, client=self.client_ip,
                          via=via))  # fmt: skip
        refusal = None
        if self.admitted is not None:
            self._ticket = self.admitted
        elif self.ctx.admission is not None:
            self._ticket = self.ctx.admission.open(self.ctx.service, self.client_ip)
            limited = self._ticket.refusal
            if limited is not None:
                reason = limited.reason
                refusal = replies.TOO_MANY_CONNECTIONS
                if limited.is_per_address:
                    refusal = replies.CLIENT_LIMITED.with_text(f"Too many connections from your address ({reason})")
                log.info("%s", kv(event="smtp.limited", session=self.id, client=self.client_ip, reason=reason))
        if refusal is None and self.ctx.is_stopping():
            refusal = replies.SHUTTING_DOWN
        self.conn.start(refusal)
        self._process()

    def data_received(self, data: bytes) -> None:
        if self._tls_early is not None:
            self._tls_early.append(data)
            return
        self.conn.receive_data(data)
        self._deadlines.received(len(data), self.loop.time())
        self._process()
        self._regulate_reading()  # also while a decision is pending, when _process did nothing

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._process()
        return True  # keep our side open until the last replies are written

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.receive_data(b"")
        self._lost = True
        if self._busy:
            return  # the pending decision's callback carries on and then sees the close
        self._process()
        self._finish("connection lost")

    def pause_writing(self) -> None:
        self._can_write = False

    def resume_writing(self) -> None:
        self._can_write = True
        self._process()

    # -- driving the core ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Shutdown: end the session at the next point where nothing acknowledged is at stake."""
        self._stopping = True
        self._process()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _process(self) -> None:
        """Drain the core until it needs more input or an asynchronous decision is pending.

        A bug anywhere below ends this session only: the peer gets `451 4.3.0` (never the exception
        text), the log gets the traceback.
        """
        if self._busy or self._finished:
            return
        try:
            self._drain()
        except Exception:
            log.exception("%s", kv(event="smtp.session_failed", session=self.id, client=self.client_ip))
            self._busy = False
            with contextlib.suppress(Exception):
                self.conn.close(replies.LOCAL_ERROR, "internal error")
                self._flush()
            self._finish("internal error")
        if not self._busy and not self._finished:
            self._arm_timer()

    def _drain(self) -> None:
        conn = self.conn
        # Writes paused by flow control stop the draining; a lost connection drains to its close event.
        while self._can_write or self._lost or conn.is_closed:
            if self._lost and not conn.is_closed:
                # Nobody can read our replies: what the peer pipelined before it went is not worked
                # through (megabytes of it held the loop for seconds).
                conn.abandon("connection lost")
            if conn.authenticated_as is not None and not self._is_logged_in:
                self._logged_in(conn.authenticated_as)
            event = conn.next_event()
            if event is None:
                if self._stopping and conn.is_idle and not conn.is_closed:
                    conn.close(replies.SHUTTING_DOWN, "server shutting down")
                    continue
                break
            match event:
                case Hello():
                    pass
                case MailFrom():
                    self._drop_spool()  # a transaction reset by RSET or EHLO may have left one
                    self._recipients = {}
                    self._mail_from = str(event.path)[1:-1]
                    conn.answer(self.ctx.policy.check_mail(event.path, conn.authenticated_as).reply)
                case RcptTo():
                    decision = self.ctx.policy.check_rcpt(event.path, RcptContext(self.client_ip, self._mail_from))
                    if isinstance(decision, Future):
                        self._wait(decision, partial(self._answer_rcpt_later, event))
                        break
                    self._answer_rcpt(event, decision)
                case MessageData(data=data):
                    self._spill(data)
                case OutputReady():
                    # Send, and go on in a later loop iteration (others get their turn): unless the
                    # transport paused writing meanwhile, which waits for resume_writing.
                    self._flush()
                    self._regulate_reading()
                    if self._can_write:
                        self.loop.call_soon(self._process)
                    return
                case MessageReceived():
                    self._store(event)
                    break
                case MessageRefused():
                    self._drop_spool()
                    self._log_message(event.envelope, event.size, f"refused: {event.reason}", None, 0.0)
                case AuthRequested():
                    self._authenticate(event)
                    break
                case ScramRequested():
                    self._scram(event)
                    break
                case ScramFinished(user=user, ok=True):
                    self._auth_succeeded(user, "SCRAM-SHA-256")
                case ScramFinished(user=user, ok=False):
                    self._auth_failed(user, "SCRAM-SHA-256")
                    break
                case StartTLSRequested():
                    self._busy = True
                    self._flush()
                    self.ctx.spawn(self._start_tls())
                    return
                case ConnectionClosed(reason=reason):
                    self._flush()
                    self._finish(reason)
                    return
        self._flush()
        self._regulate_reading()

    def _wait(self, future: Future[Any] | asyncio.Future[Any], on_done: Callable[[Any], None]) -> None:
        """Stop draining the core until `future` (done in any thread) is handled on the loop."""
        self._busy = True

        def resume(done: Any) -> None:
            self._busy = False
            self._deadlines.replied(self.loop.time())  # the peer's clocks run from our answer
            if self._finished:
                return
            try:
                on_done(done)
            except Exception:
                log.exception("%s", kv(event="smtp.session_failed", session=self.id, client=self.client_ip))
                with contextlib.suppress(Exception):
                    self.conn.close(replies.LOCAL_ERROR, "internal error")
                    self._flush()
                self._finish("internal error")
                return
            self._process()

        future.add_done_callback(lambda done: self.loop.call_soon_threadsafe(resume, done))

    def _may_try(self, user: str) -> bool:
        """Whether an AUTH attempt for `user` goes on to be checked. It counts as a failure with the
        throttle before the check runs, so parallel guesses cannot all be checked; when refused, the core
        has its answer (535 without an authenticator, 454 when throttled)."""
        throttle = self.ctx.throttle
        if self.ctx.authenticator is None:
            self.conn.auth_result(None)
            return False
        if throttle is not None and (lockout := throttle.reserve(self.client_ip, user)) is not None:
            log.info("%s", kv(event="smtp.auth_throttled", session=self.id, client=self.client_ip, user=user,
                              reason=lockout))  # fmt: skip
            self.conn.auth_result(None, replies.AUTH_THROTTLED)
            return False
        return True

    def _authenticate(self, event: AuthRequested) -> None:
        if not self._may_try(event.user):
            return
        assert self.ctx.authenticator is not None
        self._wait(self.loop.run_in_executor(None, self.ctx.authenticator.verify, event.user, event.password),
                   partial(self._authenticated, event))  # fmt: skip

    def _authenticated(self, event: AuthRequested, done: Future[Any]) -> None:
        account = done.result()
        if account is not None:
            self._auth_succeeded(account.address, event.mechanism)
        else:
            self._auth_failed(event.user, event.mechanism)

    def _auth_succeeded(self, user: str, mechanism: str) -> None:
        """Clears the throttle's failures of this address for this account only."""
        if self.ctx.throttle is not None:
            self.ctx.throttle.succeeded(self.client_ip, user)
        log.info("%s", kv(event="smtp.auth", session=self.id, client=self.client_ip, user=user, mechanism=mechanism))
        self.conn.auth_result(user)

    def _auth_failed(self, user: str, mechanism: str) -> None:
        """535 after a delay that grows with each failure of this account from this address (the
        failure itself was recorded when the attempt started)."""
        delay = self.ctx.throttle.failed(self.client_ip, user) if self.ctx.throttle is not None else 0.0
        log.info("%s", kv(event="smtp.auth_failed", session=self.id, client=self.client_ip, user=user,
                          mechanism=mechanism, delay_s=delay))  # fmt: skip
        waiter: Future[None] = Future()
        self.loop.call_later(delay, waiter.set_result, None)
        self._wait(waiter, lambda _: self.conn.auth_result(None))

    def _scram(self, event: ScramRequested) -> None:
        """SCRAM keys for the exchange; the attempt is reserved with the throttle now, because the proof
        is checked by the core (ScramFinished settles it: success clears it, anything else leaves it)."""
        if not self._may_try(event.user):
            return
        assert self.ctx.authenticator is not None
        self._wait(self.loop.run_in_executor(None, self.ctx.authenticator.scram, event.user),
                   lambda done: self.conn.scram_credentials(done.result()[0]))  # fmt: skip

    def _answer_rcpt_later(self, event: RcptTo, done: Future[Decision]) -> None:
        self._answer_rcpt(event, done.result())

    def _answer_rcpt(self, event: RcptTo, decision: Decision) -> None:
        if isinstance(decision, Accept):
            self._recipients[str(event.path)] = decision
        else:
            log.info(
                "%s",
                kv(
                    event="smtp.rcpt_rejected",
                    session=self.id,
                    client=self.client_ip,
                    rcpt=str(event.path),
                    result=str(decision.reply),
                ),
            )
        self.conn.answer(decision.reply)

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self._deadlines.replied(self.loop.time())
            self.transport.write(out)

    def _regulate_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self._tls_early is not None:
            return
        if not self._reading_paused and self.conn.buffered_bytes > READ_AHEAD_BYTES:
            self._reading_paused = True
            transport.pause_reading()
        elif self._reading_paused and self.conn.buffered_bytes < READ_AHEAD_BYTES // 2:
            self._reading_paused = False
            transport.resume_reading()

    def _logged_in(self, user: str) -> None:
        """AUTH succeeded: the login deadline is met, and the session counts per account and address."""
        self._is_logged_in = True
        self._deadlines.logged_in()
        admission, ticket = self.ctx.admission, self._ticket
        if admission is None or ticket is None:
            return
        refusal = admission.log_in(ticket, user)
        if refusal is not None:
            log.info("%s", kv(event="smtp.limited", session=self.id, client=self.client_ip, user=user,
                              reason=refusal.reason))  # fmt: skip
            text = f"Too many connections for this account from your address ({refusal.reason})"
            self.conn.close(replies.CLIENT_LIMITED.with_text(text), "connection limit")

    def _finish(self, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            if self._can_write:
                self.transport.close()
            else:  # close() would wait for a peer that reads nothing to take our output
                self.transport.abort()
        self.ctx.sessions.discard(self)
        if not self._busy:  # a pending store still reads the spool file; its callback drops it
            self._drop_spool()
        if self.ctx.admission is not None and self._ticket is not None:
            self.ctx.admission.close(self._ticket)
        log.info(
            "%s",
            kv(
                event="smtp.disconnect",
                session=self.id,
                client=self.client_ip,
                reason=reason,
                ms=round((time.monotonic() - self._started_at) * 1000),
            ),
        )
        self.ctx.on_session_end()

    # -- deadlines (RFC 5321 §4.5.3.2 for the idle ones) ---------------------------------------------

    def _arm_timer(self) -> None:
        """Make the timer fire no later than the earliest deadline (a later one is re-armed lazily)."""
        at, _ = self._deadlines.next(self.conn.timeout_s)
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._finished or self._busy:
            return  # we owe the peer an answer; the timer is armed again once it is given
        expired = self._deadlines.expired(self.conn.timeout_s, self.loop.time())
        if expired is None:
            self._arm_timer()
            return
        reply, reason = DEADLINE_REPLIES[expired]
        if expired is not Deadline.IDLE:
            log.info("%s", kv(event="smtp.deadline", session=self.id, client=self.client_ip, deadline=expired))
        self.conn.close(reply, reason)
        self._process()

    # -- decisions that need I/O ---------------------------------------------------------------------

    # -- messages too large for memory (issue 8, finding 6) -------------------------------------------

    def _spill(self, data: bytes) -> None:
        """Write the next piece of a large message to this session's spool file (page cache: fast; the
        bytes become durable when the store copies them into a segment, before the 250)."""
        failed_before = self._spool.error is not None
        if not self._spool.write(data):
            if not failed_before:
                log.error("%s", kv(event="smtp.spool_failed", session=self.id, detail=self._spool.error))
            return
        if len(self._spool_start) < HEADER_LIMIT:
            self._spool_start += data[: HEADER_LIMIT - len(self._spool_start)]

    def _spooled(self, event: MessageReceived) -> Content | Reply:
        """The whole message as head (its header block) + a span of the spool file, or the refusal."""
        self._spill(event.data)
        whole = self._spool.finish()
        if whole is None:
            return replies.STORAGE_FULL  # spooling failed (logged)
        size = whole.length
        if size != event.spilled + len(event.data):  # a bug, never a message made of two
            log.error("%s", kv(event="smtp.spool_failed", session=self.id, detail=f"{size} octets spooled, "
                               f"{event.spilled + len(event.data)} expected"))  # fmt: skip
            return replies.LOCAL_ERROR
        header_end, _ = find_body_start(self._spool_start)
        if header_end >= len(self._spool_start) and size > len(self._spool_start):
            # No end of header within HEADER_LIMIT: policy could not read (or clean) the header.
            return replies.HEADER_TOO_LARGE
        head = self._spool_start[:header_end]
        self._spool_start = b""
        return Content(head, FileSpan(whole.path, header_end, size - header_end))

    def _drop_spool(self) -> None:
        self._spool.reset()
        self._spool_start = b""

    # -- storing -------------------------------------------------------------------------------------

    def _store(self, event: MessageReceived) -> None:
        started = time.monotonic()
        data: bytes | Content = event.data
        if event.spilled:
            spooled = self._spooled(event)
            if not isinstance(spooled, Content):
                self._drop_spool()
                self._log_message(event.envelope, event.spilled, f"refused: {spooled}", None, started)
                self.conn.answer(spooled)
                self._process()
                return
            data = spooled
        checked = self.ctx.policy.check_message(event.envelope, data, self.client_ip)
        if isinstance(checked, Future):  # the policy works in a thread (DKIM signing, DNS checks)
            self._wait(checked, lambda done: self._store_checked(event, done.result(), started))
            return
        self._store_checked(event, checked, started)

    def _store_checked(self, event: MessageReceived, checked: MessageDecision, started: float) -> None:
        envelope = event.envelope
        size = event.spilled + len(event.data)
        if not isinstance(checked, AcceptMessage):
            self._drop_spool()
            self._log_message(envelope, size, f"refused: {checked.reply}", None, started)
            self.conn.answer(checked.reply)
            self._process()
            return
        body = checked.data
        account_ids = [
            account
            for r in envelope.recipients
            if (decision := self._recipients.get(str(r.path))) is not None
            for account in decision.account_ids
        ]
        remote = [
            OutboundRecipient(
                decision.address,
                tuple(sorted(n.value for n in r.params.notify)),
                f"{r.params.orcpt[0]};{r.params.orcpt[1]}" if r.params.orcpt else None,
            )
            for r in envelope.recipients
            if (decision := self._recipients.get(str(r.path))) is not None and decision.is_remote
        ]
        message_id = new_message_id()
        now = datetime.now(UTC)
        received = format_received(
            helo=envelope.helo,
            client_ip=self.client_ip,
            hostname=self.ctx.settings.hostname,
            protocol=with_protocol(
                is_esmtp=envelope.is_esmtp,
                is_tls=envelope.is_tls,
                is_authenticated=envelope.authenticated_as is not None,
                is_utf8=envelope.mail_params.smtputf8,
            ),
            message_id=message_id,
            recipient=str(envelope.recipients[0].path)[1:-1] if len(envelope.recipients) == 1 else None,
            tls=self._tls_info,
            authenticated_as=envelope.authenticated_as,
            date=now,
        )
        sender = str(envelope.mail_from)[1:-1]
        outbound = None
        if remote:
            params = envelope.mail_params
            outbound = Outbound(
                sender=sender,
                recipients=tuple(remote),
                expires_at=int(now.timestamp() + self.ctx.queue_lifetime_s),
                ret=params.ret.value if params.ret else None,
                envid=params.envid,
                smtputf8=params.smtputf8,
                body_8bit=params.body is Body.EIGHT_BIT_MIME or event.is_8bit or not _head(body).isascii(),
            )
        record = _envelope_record(envelope, self.client_ip)
        deliveries = []
        queue_id = None
        if account_ids:  # final delivery: Return-Path goes first (RFC 5321 §4.4)
            targets = as_targets(account_ids, checked.mailbox)
            deliveries.append(Delivery(message_id, _prepend(format_return_path(sender) + received, body), targets,
                                       int(now.timestamp()), record))  # fmt: skip
        if outbound is not None:  # relayed on: no Return-Path, the final MTA adds its own
            queue_id = message_id if not account_ids else new_message_id()
            deliveries.append(Delivery(queue_id, _prepend(received, body), (), int(now.timestamp()), record,
                                       outbound))  # fmt: skip

        def stored(done: Future[Any]) -> None:
            self._drop_spool()
            error = done.exception()
            if error is not None:
                log.error("%s", kv(event="smtp.store_failed", session=self.id, id=message_id, detail=str(error)))
                reply = replies.LOCAL_ERROR
            else:
                reply = replies.MESSAGE_ACCEPTED.with_text(f"Message accepted as {message_id}")
            self._log_message(envelope, size, str(reply), message_id, started, queue_id)
            self.conn.answer(reply)

        try:
            # One group: the local copies and the queue entry commit together or not at all, so a 451
            # never leaves half the message stored (a retry would duplicate that half).
            future = self.ctx.store.mail.deliver_group(deliveries)
        except Exception as exc:
            self._drop_spool()
            log.error("%s", kv(event="smtp.store_failed", session=self.id, id=message_id, detail=str(exc)))
            self.conn.answer(replies.LOCAL_ERROR)
            self._process()
            return
        self._wait(future, stored)

    def _log_message(
        self, envelope: Envelope, size: int, result: str, message_id: str | None, started: float,
        queue_id: str | None = None,
    ) -> None:  # fmt: skip
        if not log.isEnabledFor(logging.INFO):
            return
        log.info(
            "%s",
            kv(
                event="smtp.message",
                session=self.id,
                client=self.client_ip,
                helo=envelope.helo,
                tls=envelope.is_tls,
                mail_from=str(envelope.mail_from),
                rcpt=",".join(str(r.path) for r in envelope.recipients),
                size=size,
                id=message_id,
                queued=queue_id,
                result=result,
                ms=round((time.monotonic() - started) * 1000, 1) if started else None,
            ),
        )

    async def _start_tls(self) -> None:
        context = self.ctx.tls_context()
        transport = self.transport
        if context is None or transport is None or transport.is_closing():
            self._busy = False
            self._finish("TLS unavailable")
            return
        self._tls_early = []
        try:
            new_transport = await self.loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            log.info("%s", kv(event="smtp.tls_failed", session=self.id, client=self.client_ip, detail=str(exc)))
            transport.abort()
            self._busy = False
            self._finish("TLS handshake failed")
            return
        if new_transport is None:
            self._busy = False
            self._finish("TLS handshake failed")
            return
        self.transport = new_transport
        self._tls_info = describe(new_transport.get_extra_info("ssl_object"))
        early, self._tls_early = self._tls_early, None
        self.conn.tls_established()
        for data in early:
            self.conn.receive_data(data)
        self._busy = False
        self._deadlines.replied(self.loop.time())
        self._process()


def _envelope_record(envelope: Envelope, client_ip: str) -> dict[str, Any]:
    """The envelope as stored beside the message (JSON): sender, recipients with DSN, session facts."""
    params = envelope.mail_params
    return {
        "mail_from": str(envelope.mail_from)[1:-1],
        "recipients": [
            {
                "address": str(r.path)[1:-1],
                "notify": sorted(n.value for n in r.params.notify),
                "orcpt": list(r.params.orcpt) if r.params.orcpt else None,
            }
            for r in envelope.recipients
        ],
        "ret": params.ret.value if params.ret else None,
        "envid": params.envid,
        "body": params.body.value if params.body else None,
        "smtputf8": params.smtputf8,
        "size": params.size,
        "helo": envelope.helo,
        "client_ip": client_ip,
        "tls": envelope.is_tls,
    }


def _prepend(fields: bytes, message: bytes | Content) -> bytes | Content:
    """Trace fields before a message, without copying a spooled message's body."""
    if isinstance(message, Content):
        return Content(fields + message.head, message.tail)
    return fields + message


def _head(message: bytes | Content) -> bytes:
    return message.head if isinstance(message, Content) else message

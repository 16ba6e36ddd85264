"""The asyncio adapter of one SMTP session: socket bytes in and out of the sans-I/O core.

Callback-driven (like uvicorn's h11 protocol) over the Channel every session uses (net/channel.py): the
channel's `feed` hands received bytes to the core and the session drains its events on the spot.
Decisions are coroutines (policy checks, intake, AUTH) started eagerly (kartero/concurrency.py), so one
that needs no I/O is answered without a task switch; one that does (storing a message, a DNS lookup, a
directory reload after an admin change) goes on in a Task, and the session stops draining the core until
it is done; the channel stops reading once READ_AHEAD_BYTES wait in the core (back-pressure: a client
streaming behind a pending decision fills its own socket buffers, not our memory). Every decision has
a deadline (`check_deadline_s`): one that raises or passes it answers that command or message
`451 4.3.0` (logged with the traceback) and the session goes on. The deadlines of
the peer (idle, command, login: see deadlines.py) are one timer per session, moved earlier when a
command starts and otherwise re-armed lazily when it fires.

The adapter never parses a command or picks a reply code; the core and the policy do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from kartero import metrics
from kartero.auth.accounts import Authenticator
from kartero.concurrency import DeadlineExceeded, Finished, start_eagerly
from kartero.dns.resolver import ClientName
from kartero.filters.chain import ChainSession, Filtered, Filters
from kartero.filters.model import ClientInfo, Transaction
from kartero.intake import Incoming, Intake, Refused, SmtpArrival, Stored, Target, with_protocol
from kartero.log import kv
from kartero.mail import replies
from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.mail.replies import Reply
from kartero.mime.headers import find_body_start
from kartero.net.channel import Channel, ListenerContext
from kartero.net.deadlines import Deadline, DeadlineSettings
from kartero.policy.decisions import Accept, Decision, Policy, RcptContext, Reject
from kartero.policy.limits import Ticket
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
    Recipient,
    ScramFinished,
    ScramRequested,
    StartTLSRequested,
)
from kartero.smtp.server import ServerConnection, ServerSettings
from kartero.store.ids import new_message_id
from kartero.store.interface import Content, FileSpan
from kartero.store.spool import IncomingSpool
from kartero.tls import describe

log = logging.getLogger("kartero.smtp")
T = TypeVar("T")

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


@dataclass(slots=True, kw_only=True)
class SessionContext(ListenerContext[ServerSettings]):
    """What every SMTP session of one listener shares besides what every listener has: its policy,
    intake, and (submission) the password check; built by server.py."""

    policy: Policy
    intake: Intake
    authenticator: Authenticator | None = None
    filters: Filters | None = None  # the listener's content filters (milters, hooks)
    # the client's verified reverse name, for the filters (looked up only when there are some)
    client_name: Callable[[str], Coroutine[Any, Any, ClientName]] | None = None
    deadlines: DeadlineSettings = field(default_factory=lambda: DeadlineSettings(login_s=None))

    @property
    def log_prefix(self) -> str:
        return "smtp"  # smtp.limited for the MX and the submission listeners alike


class SMTPSession:
    """One SMTP session over a Channel (net/channel.py), which moves the bytes, keeps the deadlines'
    clocks, pauses reading and upgrades to TLS for the SMTP, IMAP and POP3 sessions alike."""

    def __init__(self, ctx: SessionContext, channel: Channel) -> None:
        self.ctx = ctx
        self.channel = channel
        self.id = new_message_id()[-10:]
        self.conn = ServerConnection(ctx.settings, is_tls=ctx.implicit_tls, sasl_nonce=secrets.token_urlsafe(18))
        self.loop = channel.loop
        self.client_ip = channel.client_ip
        self._mail_from = ""
        self._declared_size: int | None = None  # MAIL FROM's SIZE=
        self._ticket: Ticket | None = None  # how the connection caps counted this session
        self._is_logged_in = False
        self._busy = False  # an asynchronous decision or the TLS handshake is under way
        self._finished = False
        self._stopping = False
        self._tls_info: str | None = None
        self._client_name: str | None = None  # verified reverse name, when looked up (for the filters)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadlines = channel.deadlines
        self._started_at = time.monotonic()
        self._recipients: dict[str, Accept] = {}  # accepted RCPT path -> its decision, this transaction
        self._spool = IncomingSpool(ctx.spool_dir)  # the message being received, once it spilled out of memory
        self._spool_start = b""  # its first octets (the header is read from them)
        self._filters: ChainSession | None = ctx.filters.session() if ctx.filters is not None else None
        self._mail_params: tuple[str, ...] = ()
        self._counters = metrics.for_listener(ctx.listener)

    @classmethod
    def factory(cls, ctx: SessionContext) -> Callable[[], Channel]:
        """The protocol factory of an SMTP listener."""
        return lambda: Channel(lambda channel: cls(ctx, channel).start(), ctx.deadlines, pull=False)

    def start(self) -> None:
        channel = self.channel
        channel.feed = self._received
        channel.on_writable = self._process
        if self.ctx.implicit_tls and channel.transport is not None:
            self._tls_info = describe(channel.transport.get_extra_info("ssl_object"))
        self.ctx.sessions.add(self)
        log.info("%s", kv(event="smtp.connect", session=self.id, listener=self.ctx.listener, client=self.client_ip,
                          via=channel.via))  # fmt: skip
        refusal = None
        self._ticket = self.ctx.admit(channel, self.id)
        limited = self._ticket.refusal if self._ticket is not None else None
        if limited is not None:
            refusal = replies.TOO_MANY_CONNECTIONS
            if limited.is_per_address:
                refusal = replies.CLIENT_LIMITED.with_text(f"Too many connections from your address ({limited.reason})")
        if refusal is None and self.ctx.is_stopping():
            refusal = replies.SHUTTING_DOWN
        if refusal is None and self._filters is not None:  # the greeting waits for the filters' word
            if self._decide(self._connect_filters(self._filters), lambda _: self.conn.start(),
                            self._filters_failed, "connect"):  # fmt: skip
                return
            self._process()
            return
        self.conn.start(refusal)
        self._process()

    async def _connect_filters(self, filters: ChainSession) -> None:
        """The client's reverse name (forward-confirmed, as Postfix gives it to milters), then the
        filters' connect phase; the greeting waits for both."""
        name = ClientName("unknown", "", "FAIL")
        if self.ctx.client_name is not None:
            name = await self.ctx.client_name(self.client_ip)
            self._client_name = name.name if name.status == "OK" else None
        transport = self.channel.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        local = transport.get_extra_info("sockname") if transport is not None else None
        listener = "smtp" if self.ctx.listener == "smtp" else "submission"
        await filters.connect(ClientInfo(
            self.id, listener, self.ctx.settings.hostname, self.client_ip, int(peer[1]) if peer else 0, name.name,
            str(local[0]) if local else "", int(local[1]) if local else 0, name.ptr, name.status))  # fmt: skip

    def _filters_failed(self) -> None:
        """A bug or the backstop deadline in the filter chain at connect (each filter answers its own
        failures): the peer is told to come back later."""
        self.conn.start(replies.FILTERS_FAILED)

    def _transaction(self, recipients: tuple[str, ...] = (), queue_id: str = "") -> Transaction:
        ssl = self.channel.transport.get_extra_info("ssl_object") if self.channel.transport is not None else None
        cipher = ssl.cipher() if ssl is not None else None
        return Transaction(self.conn.helo or "", ssl.version() if ssl is not None else None,
                           cipher[0] if cipher else None, self.conn.authenticated_as, self._mail_from,
                           self._mail_params, recipients, queue_id)  # fmt: skip

    async def _check_mail(self, event: MailFrom, filters: ChainSession) -> Decision:
        decision = await self.ctx.policy.check_mail(event.path, self.conn.authenticated_as)
        if isinstance(decision, Accept) and (refusal := await filters.mail_from(self._transaction())) is not None:
            return Reject(refusal, "filter")
        return decision

    async def _check_rcpt(self, event: RcptTo, context: RcptContext, filters: ChainSession) -> Decision:
        decision = await self.ctx.policy.check_rcpt(event.path, context)
        if isinstance(decision, Accept):
            recipients = (*(p[1:-1] for p in self._recipients), str(event.path)[1:-1])
            params = _rcpt_params(event)
            if (refusal := await filters.rcpt_to(self._transaction(recipients), recipients[-1], params)) is not None:
                return Reject(refusal, "filter")
        return decision

    async def _filter_message(self, filters: ChainSession, recipients: tuple[str, ...], data: bytes | Content,
                              message_id: str) -> Filtered:  # fmt: skip
        return await filters.message(self._transaction(recipients, message_id), data)

    def _received(self, data: bytes) -> None:
        """Input from the channel; b"" when the peer closed its side or is gone."""
        self.conn.receive_data(data)
        if data:
            self._process()
            self.channel.regulate(self.conn.buffered_bytes)  # also while a decision is pending
            return
        if not self.channel.is_lost:  # EOF: keep our side open until the last replies are written
            self._process()
            return
        if self._busy:
            return  # the pending decision's callback carries on and then sees the close
        self._process()
        self._finish("connection lost")

    # -- driving the core ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Shutdown: end the session at the next point where nothing acknowledged is at stake."""
        self._stopping = True
        self._process()

    def abort(self) -> None:
        self.channel.abort()

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
        channel = self.channel
        while channel.can_write or channel.is_lost or conn.is_closed:
            if channel.is_lost and not conn.is_closed:
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
                    if self._filters is not None:
                        self._filters.helo(event.name)
                case MailFrom():
                    self._drop_spool()  # a transaction reset by RSET or EHLO may have left one
                    self._recipients = {}
                    self._mail_from = str(event.path)[1:-1]
                    self._declared_size = event.params.size
                    if self._filters is None:
                        mail_check = self.ctx.policy.check_mail(event.path, conn.authenticated_as)
                    else:
                        self._mail_params = _mail_params(event)
                        mail_check = self._check_mail(event, self._filters)
                    if self._decide(mail_check, self._answer_mail, self._decision_failed, "MAIL"):
                        break
                case RcptTo():
                    context = RcptContext(self.client_ip, self._mail_from, self._declared_size)
                    if self._filters is None:
                        check = self.ctx.policy.check_rcpt(event.path, context)
                    else:
                        check = self._check_rcpt(event, context, self._filters)
                    if self._decide(check, partial(self._answer_rcpt, event), self._decision_failed, "RCPT"):
                        break
                case MessageData(data=data):
                    self._spill(data)
                case OutputReady():
                    # Send, and go on in a later loop iteration (others get their turn): unless the
                    # transport paused writing meanwhile, which waits for resume_writing.
                    self._flush()
                    channel.regulate(conn.buffered_bytes)
                    if channel.can_write:
                        self.loop.call_soon(self._process)
                    return
                case MessageReceived():
                    if self._store(event):
                        break
                case MessageRefused():
                    self._drop_spool()
                    self._count_refused(event.envelope, _CORE_REFUSALS.get(event.reason, "format"))
                    self._log_message(event.envelope, event.size, f"refused: {event.reason}", None, 0.0)
                case AuthRequested():
                    if self._authenticate(event):
                        break
                case ScramRequested():
                    if self._scram(event):
                        break
                case ScramFinished(user=user, ok=True):
                    self._auth_succeeded(user, "SCRAM-SHA-256")
                case ScramFinished(user=user, ok=False):
                    if self._auth_failed(user, "SCRAM-SHA-256"):
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
        channel.regulate(conn.buffered_bytes)

    def _decide(self, decision: Coroutine[Any, Any, T], on_done: Callable[[T], None],
                on_error: Callable[[], None], what: str, deadline_s: float | None = None) -> bool:  # fmt: skip
        """Run a decision; True when it is still pending (the core waits, draining stops until then).

        It runs eagerly: when it needs no I/O, `on_done` has already been called on return. Otherwise
        it goes on in a Task with the session's deadline; past it, or when it raises, `on_error` gives
        the peer its temporary failure and the log gets the traceback.
        """
        started = start_eagerly(decision)
        if isinstance(started, Finished):
            self._settle(started, on_done, on_error, what)
            return self._busy  # on_done may have started a decision of its own (the delay after a failed AUTH)
        self._busy = True
        deadline_s = self.ctx.check_deadline_s if deadline_s is None else deadline_s
        timer = self.loop.call_later(deadline_s, self._overdue, started, what, deadline_s)

        def resume(task: asyncio.Task[T]) -> None:
            timer.cancel()
            self._busy = False
            self._deadlines.replied(self.loop.time())  # the peer's clocks run from our answer
            if self._finished:
                self._drop_spool()  # the session ended meanwhile; nothing reads the message any more
                return
            if task.cancelled():
                overdue = DeadlineExceeded(f"{what} did not finish within {deadline_s:g} s")
                finished: Finished[T] = Finished(None, overdue)
            elif (error := task.exception()) is not None:
                finished = Finished(None, error)
            else:
                finished = Finished(task.result())
            try:
                self._settle(finished, on_done, on_error, what)
            except Exception:  # a bug in the adapter or the core, not in the decision: this session ends
                log.exception("%s", kv(event="smtp.session_failed", session=self.id, client=self.client_ip))
                with contextlib.suppress(Exception):
                    self.conn.close(replies.LOCAL_ERROR, "internal error")
                    self._flush()
                self._finish("internal error")
                return
            self._process()

        started.add_done_callback(resume)
        return True

    def _overdue(self, task: asyncio.Task[Any], what: str, deadline_s: float) -> None:
        log.error("%s", kv(event="smtp.decision_overdue", session=self.id, client=self.client_ip, decision=what,
                           deadline_s=deadline_s))  # fmt: skip
        task.cancel()

    def _settle(self, finished: Finished[T], on_done: Callable[[T], None], on_error: Callable[[], None],
                what: str) -> None:  # fmt: skip
        if finished.error is None:
            on_done(finished.result())
            return
        error = finished.error
        log.error("%s", kv(event="smtp.decision_failed", session=self.id, client=self.client_ip, decision=what,
                           detail=str(error) or error.__class__.__name__), exc_info=error)  # fmt: skip
        on_error()

    def _decision_failed(self) -> None:
        self.conn.answer(replies.LOCAL_ERROR)

    def _answer_mail(self, decision: Decision) -> None:
        if isinstance(decision, Reject):
            metrics.sender_refused(self.ctx.listener, decision.reason)
        self.conn.answer(decision.reply)

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
            metrics.auth_throttled("smtp")
            self.conn.auth_result(None, replies.AUTH_THROTTLED)
            return False
        return True

    def _authenticate(self, event: AuthRequested) -> bool:
        if not self._may_try(event.user):
            return False
        assert self.ctx.authenticator is not None
        check = self.ctx.blocking(self.ctx.check_deadline_s, self.ctx.authenticator.verify, event.user, event.password)
        return self._decide(check, partial(self._authenticated, event), self._auth_unavailable, "AUTH")

    def _authenticated(self, event: AuthRequested, account: Any) -> None:
        if account is not None:
            self._auth_succeeded(account.address, event.mechanism)
        else:
            self._auth_failed(event.user, event.mechanism)

    def _auth_unavailable(self) -> None:
        self.conn.auth_result(None, replies.AUTH_TEMPORARY)

    def _auth_succeeded(self, user: str, mechanism: str) -> None:
        """Clears the throttle's failures of this address for this account only."""
        if self.ctx.throttle is not None:
            self.ctx.throttle.succeeded(self.client_ip, user)
        log.info("%s", kv(event="smtp.auth", session=self.id, client=self.client_ip, user=user, mechanism=mechanism))
        metrics.login("smtp")
        self.conn.auth_result(user)

    def _auth_failed(self, user: str, mechanism: str) -> bool:
        """535 after a delay that grows with each failure of this account from this address (the
        failure itself was recorded when the attempt started)."""
        delay = self.ctx.throttle.failed(self.client_ip, user) if self.ctx.throttle is not None else 0.0
        log.info("%s", kv(event="smtp.auth_failed", session=self.id, client=self.client_ip, user=user,
                          mechanism=mechanism, delay_s=delay))  # fmt: skip
        metrics.auth_failed("smtp")
        if delay <= 0:
            self.conn.auth_result(None)
            return False
        return self._decide(asyncio.sleep(delay), lambda _: self.conn.auth_result(None), self._auth_unavailable,
                            "AUTH delay", delay + 1.0)  # fmt: skip

    def _scram(self, event: ScramRequested) -> bool:
        """SCRAM keys for the exchange; the attempt is reserved with the throttle now, because the proof
        is checked by the core (ScramFinished settles it: success clears it, anything else leaves it)."""
        if not self._may_try(event.user):
            return False
        assert self.ctx.authenticator is not None
        keys = self.ctx.blocking(self.ctx.check_deadline_s, self.ctx.authenticator.scram, event.user)
        return self._decide(keys, lambda found: self.conn.scram_credentials(found[0]), self._auth_unavailable,
                            "SCRAM keys")  # fmt: skip

    def _answer_rcpt(self, event: RcptTo, decision: Decision) -> None:
        if isinstance(decision, Accept):
            self._recipients[str(event.path)] = decision
        else:
            metrics.recipient_refused(self.ctx.listener, decision.reason)
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
        if out:
            self.channel.write(out)

    def _logged_in(self, user: str) -> None:
        """AUTH succeeded: the login deadline is met, and the session counts per account and address."""
        self._is_logged_in = True
        refusal = self.ctx.admit_login(self._ticket, self.channel, self.id, user)
        if refusal is not None:
            text = f"Too many connections for this account from your address ({refusal.reason})"
            self.conn.close(replies.CLIENT_LIMITED.with_text(text), "connection limit")

    def _finish(self, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        self._counters.count_replies(self.conn.take_reply_counts())
        self.channel.close()  # aborts instead when the peer reads nothing of our output
        self.ctx.sessions.discard(self)
        if not self._busy:  # a pending store still reads the spool file; its callback drops it
            self._drop_spool()
        self.ctx.release(self._ticket)
        if self._filters is not None:
            self.ctx.spawn(self._filters.close())
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

    def _store(self, event: MessageReceived) -> bool:
        """Hand the message to intake; True while that is pending."""
        started = time.monotonic()
        data: bytes | Content = event.data
        if event.spilled:
            spooled = self._spooled(event)
            if not isinstance(spooled, Content):
                self._drop_spool()
                self._count_refused(event.envelope, "size" if spooled is replies.HEADER_TOO_LARGE else "error")
                self._log_message(event.envelope, event.spilled, f"refused: {spooled}", None, started)
                self.conn.answer(spooled)
                return False
            data = spooled
        envelope = event.envelope
        params = envelope.mail_params
        targets = tuple(
            Target(_recipient(r, decision), decision.account_ids, decision.is_remote, decision.forward_to)
            for r in envelope.recipients
            if (decision := self._recipients.get(str(r.path))) is not None
        )
        ctx = self.ctx
        is_submission = envelope.authenticated_as is not None
        record = EnvelopeRecord(
            origin=Origin.SUBMISSION if is_submission else Origin.SMTP,
            sender=str(envelope.mail_from)[1:-1],
            recipients=tuple(t.recipient for t in targets),
            received_at=int(time.time()),
            user=envelope.authenticated_as,
            helo=envelope.helo,
            client_ip=self.client_ip,
            tls=envelope.is_tls,
            ret=params.ret.value if params.ret else None,
            envid=params.envid,
            body=params.body.value if params.body else None,
            smtputf8=params.smtputf8,
            size=params.size,
        )
        arrival = SmtpArrival(
            helo=envelope.helo,
            client_ip=self.client_ip,
            protocol=with_protocol(
                is_esmtp=envelope.is_esmtp, is_tls=envelope.is_tls, is_authenticated=is_submission,
                is_utf8=params.smtputf8,
            ),
            tls=self._tls_info,
            authenticated_as=envelope.authenticated_as,
            listener=ctx.listener,
            client_name=self._client_name,
        )
        incoming = Incoming(
            envelope=record,
            data=data,
            targets=targets,
            arrival=arrival,
            check=partial(ctx.policy.check_message, envelope, client_ip=self.client_ip),
            filter=None if self._filters is None else partial(
                self._filter_message, self._filters, tuple(t.recipient.address for t in targets)),
            complete_header=is_submission,
            sign=is_submission,
            body_8bit=params.body is Body.EIGHT_BIT_MIME or event.is_8bit,
        )
        size = event.spilled + len(event.data)

        def stored(outcome: Stored | Refused) -> None:
            self._drop_spool()
            # The replies so far, once per message (and at the end of the session): not a lookup per reply.
            self._counters.count_replies(self.conn.take_reply_counts())
            if isinstance(outcome, Stored):
                self._log_message(envelope, size, str(outcome.reply), outcome.message_id, started, outcome.queue_id)
                self.conn.answer(outcome.reply)
            else:
                self._log_message(envelope, size, f"refused: {outcome.reply}", None, started)
                self.conn.answer(outcome.reply)

        def failed() -> None:
            self._drop_spool()
            self._log_message(envelope, size, f"refused: {replies.LOCAL_ERROR}", None, started)
            self.conn.answer(replies.LOCAL_ERROR)

        # The intake gives its check, the signing and the commit deadlines of their own; this one is the
        # backstop, past all three.
        backstop = 2 * ctx.intake.check_deadline_s + ctx.intake.store_deadline_s + 1.0
        return self._decide(ctx.intake.accept(incoming), stored, failed, "message", backstop)

    def _count_refused(self, envelope: Envelope, reason: str) -> None:
        """A message the core or the spool refused (intake counts the ones it is handed)."""
        origin = Origin.SUBMISSION if envelope.authenticated_as is not None else Origin.SMTP
        metrics.message_received(origin)
        metrics.message_refused(origin, reason)

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
        """The handshake, through the channel (it drops nothing the core has not dropped already and
        holds what arrives during the handshake until the core knows TLS is up)."""
        context = self.ctx.tls_context()
        if context is None:
            self._busy = False
            self._finish("TLS unavailable")
            return
        failure = await self.channel.start_tls(context, self.conn.tls_established)
        self._busy = False
        if failure is not None:
            log.info("%s", kv(event="smtp.tls_failed", session=self.id, client=self.client_ip, detail=failure))
            self._finish("TLS handshake failed")
            return
        transport = self.channel.transport
        self._tls_info = describe(transport.get_extra_info("ssl_object") if transport is not None else None)
        self._deadlines.replied(self.loop.time())
        self._process()


# What the metrics count a message the SMTP core refused as (MessageRefused.reason is the reply's text).
_CORE_REFUSALS = {replies.SIZE_EXCEEDED.text: "size", replies.HEADER_TOO_LARGE.text: "size"}


def _mail_params(event: MailFrom) -> tuple[str, ...]:
    """MAIL FROM's parameters as the client gave them, for the filters (ENVID decoded)."""
    p = event.params
    words = [f"SIZE={p.size}" if p.size is not None else "", f"BODY={p.body.value}" if p.body else "",
             "SMTPUTF8" if p.smtputf8 else "", f"RET={p.ret.value}" if p.ret else "",
             f"ENVID={p.envid}" if p.envid else ""]  # fmt: skip
    return tuple(w for w in words if w)


def _rcpt_params(event: RcptTo) -> tuple[str, ...]:
    p = event.params
    words = [f"NOTIFY={','.join(sorted(n.value for n in p.notify))}" if p.notify else "",
             f"ORCPT={p.orcpt[0]};{p.orcpt[1]}" if p.orcpt else ""]  # fmt: skip
    return tuple(w for w in words if w)


def _recipient(r: Recipient, decision: Accept) -> EnvelopeRecipient:
    """A remote recipient is queued as policy wrote it (the domain canonical: routes and MTA-STS are looked
    up by it, and the next hop gets an A-label), a local one as the client wrote it."""
    return EnvelopeRecipient(
        decision.address if decision.is_remote else str(r.path)[1:-1],
        tuple(sorted(n.value for n in r.params.notify)),
        f"{r.params.orcpt[0]};{r.params.orcpt[1]}" if r.params.orcpt else None,
    )

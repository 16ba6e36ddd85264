"""The asyncio adapter of one IMAP session.

A task per connection drives the sans-I/O core over a Channel: it waits for input (with the autologout
timeout), runs each command's handler generator in a worker thread one batch at a time (so a 100 MB
FETCH streams with flow control instead of being built in memory), checks passwords off the loop,
upgrades to TLS, turns on DEFLATE compression, and during IDLE pushes the changes the store announces.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from kartero import metrics
from kartero.imap.commands import notify as notify_events
from kartero.imap.commands import run as run_command
from kartero.imap.commands.view import CHUNK, Done, Session, chunked, mailbox_deleted, sync
from kartero.imap.connection import (
    AppendData,
    CommandReady,
    CompressRequested,
    ConnectionClosed,
    IdleDone,
    IdleStarted,
    ImapConnection,
    ImapSettings,
    LoginRequested,
    OutputReady,
    StartTLSRequested,
    Unauthenticated,
)
from kartero.imap.response import Status
from kartero.imap.syntax import Append
from kartero.log import kv
from kartero.net.channel import DEADLINE_TEXTS, AccessContext, Channel, refusal_text
from kartero.net.deadlines import Deadline
from kartero.store.ids import new_message_id
from kartero.store.interface import MetadataChange, StoreUnavailable
from kartero.store.spool import IncomingSpool

log = logging.getLogger("kartero.imap")

# RFC 9051 §5.4: an autologout timer of at least 30 minutes once logged in.
AUTHENTICATED_TIMEOUT_S = 31 * 60.0
# A handler runs in a worker thread until it has this much to send (its batches are about CHUNK each).
STEP_BYTES = CHUNK
UNAUTHENTICATED_TIMEOUT_S = 120.0


ImapContext = AccessContext[ImapSettings]


class ImapSession:
    def __init__(self, ctx: ImapContext, channel: Channel) -> None:
        self.ctx = ctx
        self.channel = channel
        self.id = new_message_id()[-10:]
        self.conn = ImapConnection(ctx.settings, is_tls=ctx.implicit_tls, is_loopback=channel.is_loopback)
        self.session: Session | None = None
        self._notified = False
        self._pending = notify_events.PendingChanges()  # what NOTIFY is still to report
        self._spool = IncomingSpool(ctx.spool_dir)  # the APPEND message being received, once it is large
        self._stopping = False
        self._started_at = time.monotonic()
        self._ticket = ctx.admit(channel, self.id)
        channel.feed = self.conn.receive_data
        ctx.sessions.add(self)
        ctx.spawn(self.run())

    @classmethod
    def factory(cls, ctx: ImapContext) -> Callable[[], Channel]:
        return lambda: Channel(lambda channel: cls(ctx, channel), ctx.deadlines)

    # -- called by the server ------------------------------------------------------------------------

    def notify(self, mailbox_ids: frozenset[int] = frozenset()) -> None:
        """A mailbox this session shows or watches changed (called on the loop by the server's store
        listener)."""
        session = self.session
        if session is not None and session.notify is not None:
            self._pending.add(mailbox_ids & session.notify.watched)
        self._notified = True
        if self.conn.is_idling or self._pushes_now():
            self.channel.wake()

    def notify_names(self) -> None:
        """The account's mailboxes or subscriptions changed (for NOTIFY MailboxName/SubscriptionChange)."""
        self._pending.names = True
        self.notify()

    def notify_metadata(self, change: MetadataChange) -> None:
        """METADATA entries changed (for NOTIFY MailboxMetadataChange/ServerMetadataChange): passed on when
        they are this session's account's and another session's doing (RFC 5465 §5)."""
        if self.session is not None and notify_events.metadata_concerns(self.session, change):
            self._pending.add_metadata(change.mailbox_id, change.names)
            self.notify()

    def watches(self, mailbox_ids: frozenset[int]) -> bool:
        """Whether a change to these mailboxes concerns this session: its selected mailbox, or one its
        NOTIFY SET watches."""
        session = self.session
        if session is None:
            return False
        if session.selected is not None and session.selected.mailbox_id in mailbox_ids:
            return True
        return session.notify is not None and not session.notify.watched.isdisjoint(mailbox_ids)

    def watches_names(self, account_id: int) -> bool:
        session = self.session
        if session is None or session.account_id != account_id or session.notify is None:
            return False
        return session.notify.follows_names

    def _pushes_now(self) -> bool:
        """NOTIFY (RFC 5465): changes go out between commands too, not only during IDLE."""
        return self.session is not None and self.session.notify is not None and self.conn.is_idle

    def stop(self) -> None:
        """Shutdown: end the session with BYE at the next point between commands (or in IDLE)."""
        self._stopping = True
        self.channel.wake()

    def abort(self) -> None:
        self.channel.abort()

    # -- the session task ----------------------------------------------------------------------------

    async def run(self) -> None:
        conn = self.conn
        channel = self.channel
        reason = "?"
        try:
            log.info("%s", kv(event="imap.connect", session=self.id, listener=self.ctx.listener,
                              client=channel.client_ip, via=channel.via))  # fmt: skip
            if self._ticket is not None and self._ticket.refusal is not None:
                conn.close(refusal_text(self._ticket.refusal), "connection limit")
            elif self.ctx.is_stopping():
                conn.close("Too many connections, try later", "connection limit")
            else:
                conn.start()
            reason = await self._loop()
        except Exception:
            reason = "internal error"
            log.exception("%s", kv(event="imap.session_failed", session=self.id, client=channel.client_ip))
            if not conn.is_closed:
                conn.close("Internal error", "internal error")
                await channel.send(conn.data_to_send())
        finally:
            metrics.imap_commands(conn.take_command_counts())
            self._drop_spool()
            if self.session is not None:
                self.session.notify = None  # nothing to watch any more: no STATUS read on the way out
                self.session.select(None)  # lets go of messages expunged elsewhere that it still showed
            self.ctx.sessions.discard(self)
            self.ctx.release(self._ticket)
            channel.close()
            log.info("%s", kv(event="imap.disconnect", session=self.id, client=channel.client_ip, user=conn.user,
                              reason=reason, ms=round((time.monotonic() - self._started_at) * 1000)))  # fmt: skip
            self.ctx.on_session_end()

    async def _loop(self) -> str:
        conn, channel = self.conn, self.channel
        while True:
            if self._notified and (conn.is_idling or self._pushes_now()):
                # Before the next command too, however soon it came: a NOOP sent after another session's
                # change hears of it before its OK (RFC 5465 §4, RFC 3501 §6.1.2).
                await channel.send(conn.data_to_send())
                try:
                    await self._push_updates()
                except StoreUnavailable as exc:  # told again when the store is back (its feed resyncs)
                    log.warning("%s", kv(event="imap.store_unavailable", session=self.id, command="push",
                                         detail=str(exc)))  # fmt: skip
                continue
            event = conn.next_event()
            if event is None:
                if counts := conn.take_command_counts():
                    metrics.imap_commands(counts)
                await channel.send(conn.data_to_send())
                if channel.is_lost:
                    return "connection lost"
                if self._stopping and conn.is_idle:
                    conn.close("Server shutting down", "server shutting down")
                    continue
                timeout = AUTHENTICATED_TIMEOUT_S if conn.user is not None else UNAUTHENTICATED_TIMEOUT_S
                expired = await channel.wait(timeout)
                if expired is not None:
                    self._expire(expired)
                continue
            match event:
                case AppendData(data=data, is_first=is_first):
                    if is_first:
                        self._drop_spool()  # left by an APPEND the core refused after its message
                    self._spill(data)
                case OutputReady():
                    await channel.send(conn.data_to_send())  # waits while the peer reads nothing
                case CommandReady(tag=tag, command=command):
                    await self._run_command(tag, command)
                case LoginRequested(tag=tag, user=user, password=password):
                    await self._login(tag, user, password)
                case StartTLSRequested():
                    await channel.send(conn.data_to_send())
                    failure = await channel.start_tls(self.ctx.tls_context(), conn.tls_established)
                    if failure is not None:
                        log.info("%s", kv(event="imap.tls_failed", session=self.id, client=channel.client_ip,
                                          detail=failure))  # fmt: skip
                        return "TLS handshake failed"
                case CompressRequested():
                    await channel.send(conn.data_to_send())
                    channel.compress()
                case IdleStarted():
                    self._notified = True  # report anything pending right away
                case IdleDone(tag=tag):
                    conn.finish(tag, Status.OK, "IDLE terminated")
                case Unauthenticated():
                    if self.session is not None:
                        self.session.notify = None
                        self.session.select(None)
                    self.session = None
                    # What NOTIFY had still to report was the old user's: none of it goes to the next one.
                    self._pending = notify_events.PendingChanges()
                    self._notified = False
                    log.info("%s", kv(event="imap.unauthenticate", session=self.id, client=channel.client_ip))
                case ConnectionClosed(reason=reason):
                    await channel.send(conn.data_to_send())
                    return reason

    def _expire(self, deadline: Deadline) -> None:
        text, reason = DEADLINE_TEXTS[deadline]
        if deadline is not Deadline.IDLE:
            log.info("%s", kv(event="imap.deadline", session=self.id, client=self.channel.client_ip,
                              deadline=deadline))  # fmt: skip
        self.conn.close(text, reason)

    async def _drive(self, handler: Generator[bytes, None, Done]) -> Done:
        """Run a handler generator in worker threads, writing each batch as it comes."""
        while True:
            step = await self.channel.loop.run_in_executor(None, _step, handler)
            if step.data:
                self.conn.send(step.data)
                await self.channel.send(self.conn.data_to_send())
            if step.error is not None:
                raise step.error
            if step.done is not None:
                return step.done

    # -- large APPEND messages (issue 8, finding 6) -----------------------------------------------------

    def _spill(self, data: bytes) -> None:
        """Write the next piece of a large APPEND message to this session's spool file (page cache; the
        bytes become durable when the store copies them into a segment, before the tagged OK)."""
        failed_before = self._spool.error is not None
        if not self._spool.write(data) and not failed_before:
            log.error("%s", kv(event="imap.spool_failed", session=self.id, detail=self._spool.error))

    def _drop_spool(self) -> None:
        self._spool.reset()

    async def _run_command(self, tag: str, command: Any) -> None:
        session = self.session
        assert session is not None
        started = time.monotonic()
        if isinstance(command, Append) and command.spooled:
            session.spooled_message = self._spool.finish()
        else:
            self._drop_spool()  # pieces of an APPEND the core refused after all: not wanted
        try:
            done = await self._drive(run_command(session, tag, command, append_limit=self.ctx.settings.append_limit))
        except StoreUnavailable as exc:  # the database is away (PostgreSQL): the client retries later
            log.warning("%s", kv(event="imap.store_unavailable", session=self.id, command=type(command).__name__,
                                 detail=str(exc)))  # fmt: skip
            done = Done(Status.NO, "Mail store unavailable, try again later", "UNAVAILABLE")
        except Exception:
            # A bug (or a failed disk) in one command: the client gets NO [SERVERBUG], never the exception
            # text, and the session goes on.
            log.exception("%s", kv(event="imap.command_failed", session=self.id, command=type(command).__name__))
            done = Done(Status.NO, "Internal error, try again", "SERVERBUG")
        finally:
            session.spooled_message = None
            self._drop_spool()
        self.conn.finish(tag, done.status, done.text, done.code, done.state, done.bye)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s", kv(event="imap.command", session=self.id, command=type(command).__name__,
                               result=done.status, ms=round((time.monotonic() - started) * 1000, 1)))  # fmt: skip

    async def _push_updates(self) -> None:
        self._notified = False
        pending = self._pending.take()
        session = self.session
        if session is None:
            return
        is_idling = self.conn.is_idling

        def updates() -> Generator[bytes, None, Done]:
            if session.notify is not None:  # what NOTIFY asked for, in IDLE too (RFC 5465 §4)
                yield from chunked(notify_events.updates(session, pending, is_idling=is_idling))
            if session.notify is None and is_idling:  # also right after a NOTIFICATIONOVERFLOW
                yield from chunked(sync(session, allow_expunge=True))
            return mailbox_deleted(session) or Done(Status.OK, "")

        done = await self._drive(updates())
        if done.bye is not None:
            self.conn.close(done.bye, "selected mailbox deleted")

    async def _login(self, tag: str, user: str, password: str) -> None:
        try:
            account = await self.ctx.check_login(self.channel, self.id, user, password)
        except StoreUnavailable as exc:
            log.warning("%s", kv(event="imap.store_unavailable", session=self.id, command="LOGIN", detail=str(exc)))
            self.conn.login_result(tag, None, unavailable=True)
            return
        if account is None:
            self.conn.login_result(tag, None)
            return
        refusal = self.ctx.admit_login(self._ticket, self.channel, self.id, account.address)
        if refusal is not None:
            self.conn.close(f"Too many connections for this account from your address ({refusal.reason})",
                            "connection limit")  # fmt: skip
            return
        self.session = Session(self.ctx.store.mail, account.id, account.address, self.conn.enabled,
                               spool_dir=self.ctx.spool_dir,
                               default_quota=self.ctx.settings.default_quota,
                               spam_reports=self.ctx.spam_reports)  # fmt: skip
        self.conn.login_result(tag, account.address)


@dataclass(frozen=True, slots=True)
class _Step:
    data: bytes  # what the handler yielded, to send
    done: Done | None = None  # the handler ended
    error: Exception | None = None  # the handler failed after yielding `data`


def _step(handler: Generator[bytes, None, Done]) -> _Step:
    """Run the handler until it has STEP_BYTES to send or ends: most commands take one trip to a worker
    thread and back, not one per batch (under 50 sessions each trip waits for the GIL and a free worker).
    What was yielded before a failure is still sent: the view already counts it as told (EXPUNGE)."""
    pieces: list[bytes] = []
    size = 0
    try:
        while size < STEP_BYTES:
            piece = next(handler)
            pieces.append(piece)
            size += len(piece)
    except StopIteration as stop:
        return _Step(b"".join(pieces), done=stop.value)
    except Exception as exc:
        return _Step(b"".join(pieces), error=exc)
    return _Step(b"".join(pieces))

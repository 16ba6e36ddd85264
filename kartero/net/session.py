"""The asyncio adapter of one SMTP session: socket bytes in and out of the sans-I/O core.

It owns reads (with the core's timeouts), writes with flow control, the STARTTLS upgrade, and the
I/O behind each decision: policy lookups and the store run in worker threads, never on the loop. It
never parses a command or picks a reply code; the core and the policy do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from kartero.log import kv
from kartero.policy.inbound import Accept, InboundPolicy
from kartero.smtp import replies
from kartero.smtp.events import (
    ConnectionClosed,
    Envelope,
    Hello,
    MailFrom,
    MessageReceived,
    MessageRefused,
    RcptTo,
    StartTLSRequested,
)
from kartero.smtp.received import format_received, format_return_path, with_protocol
from kartero.smtp.server import ServerConnection, ServerSettings
from kartero.store.files import new_blob_id
from kartero.store.interface import Delivery, Store, StoreError, as_targets
from kartero.tls import describe

log = logging.getLogger("kartero.smtp")

# Stop reading from a peer that sends faster than the core consumes (e.g. while a decision is pending).
READ_PAUSE_BYTES = 1 << 20
TLS_HANDSHAKE_TIMEOUT_S = 30.0


@dataclass(slots=True)
class SessionContext:
    """What every session of one listener shares; built by server.py."""

    listener: str
    settings: ServerSettings
    policy: InboundPolicy
    store: Store
    tls_context: Callable[[], Any]  # the current ssl.SSLContext (reloaded on SIGHUP), or None
    spawn: Callable[[SMTPSession], None]  # starts the session task in the server's TaskGroup
    sessions: set[SMTPSession]
    max_connections: int
    is_stopping: Callable[[], bool]


class SMTPSession(asyncio.Protocol):
    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.id = new_blob_id()[-10:]
        self.conn = ServerConnection(ctx.settings)
        self.transport: asyncio.Transport | None = None
        self.client_ip = "?"
        self._wakeup = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._is_lost = False
        self._is_paused = False
        self._tls_early: list[bytes] | None = None  # app data that arrives during the handshake
        self._tls_info: str | None = None
        self._deadline: asyncio.Timeout | None = None
        self._is_stopping = False
        self._started_at = time.monotonic()
        self._recipients: dict[str, Accept] = {}  # accepted RCPT path -> its decision, this transaction
        self.task: asyncio.Task[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else "?"
        self.ctx.spawn(self)

    def data_received(self, data: bytes) -> None:
        if self._tls_early is not None:
            self._tls_early.append(data)
            return
        self.conn.receive_data(data)
        self._wakeup.set()
        if self.conn.buffered_bytes > READ_PAUSE_BYTES and not self._is_paused and self.transport:
            self._is_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._wakeup.set()
        return True  # keep our side open until the last replies are written

    def connection_lost(self, exc: Exception | None) -> None:
        self._is_lost = True
        self.conn.receive_data(b"")
        self._wakeup.set()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- session loop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Shutdown: end the session at the next point where nothing acknowledged is at stake."""
        self._is_stopping = True
        if self.conn.is_idle and self._deadline is not None:
            self._deadline.reschedule(asyncio.get_running_loop().time())

    async def run(self) -> None:
        self.ctx.sessions.add(self)
        reason = "?"
        try:
            refusal = None
            if len(self.ctx.sessions) > self.ctx.max_connections:
                refusal = replies.TOO_MANY_CONNECTIONS
            elif self.ctx.is_stopping():
                refusal = replies.SHUTTING_DOWN
            self.conn.start(refusal)
            log.info("%s", kv(event="smtp.connect", session=self.id, listener=self.ctx.listener, client=self.client_ip))
            reason = await self._loop()
        except Exception:
            reason = "internal error"
            log.exception("%s", kv(event="smtp.session_failed", session=self.id, client=self.client_ip))
        finally:
            self.ctx.sessions.discard(self)
            if self.transport is not None:
                self.transport.close()
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

    async def _loop(self) -> str:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is None:
                await self._flush()
                if self._is_lost:
                    return "connection lost"
                if self._is_paused and conn.buffered_bytes < READ_PAUSE_BYTES // 2 and self.transport:
                    self._is_paused = False
                    self.transport.resume_reading()
                if not self._wakeup.is_set():
                    await self._wait_for_input()
                self._wakeup.clear()
                continue
            match event:
                case Hello():
                    pass
                case MailFrom():
                    self._recipients = {}
                    decision = await self._in_thread(self.ctx.policy.check_mail, event.path)
                    conn.answer(decision.reply)
                case RcptTo():
                    decision = await self._in_thread(self.ctx.policy.check_rcpt, event.path)
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
                    conn.answer(decision.reply)
                case MessageReceived():
                    conn.answer(await self._store(event))
                case MessageRefused():
                    self._log_message(event.envelope, event.size, f"refused: {event.reason}", None, 0.0)
                case StartTLSRequested():
                    if not await self._start_tls():
                        return "TLS handshake failed"
                case ConnectionClosed(reason=reason):
                    await self._flush()
                    return reason

    async def _wait_for_input(self) -> None:
        conn = self.conn
        if self._is_stopping and conn.is_idle:
            conn.close(replies.SHUTTING_DOWN, "server shutting down")
            return
        try:
            async with asyncio.timeout(conn.timeout_s) as self._deadline:
                await self._wakeup.wait()
        except TimeoutError:
            if self._is_stopping:
                conn.close(replies.SHUTTING_DOWN, "server shutting down")
            else:
                conn.close(replies.TIMEOUT, "timeout")
        finally:
            self._deadline = None

    async def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self._is_lost:
            self.transport.write(out)
        await self._can_write.wait()

    async def _in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    # -- decisions that need I/O ---------------------------------------------------------------------

    async def _store(self, event: MessageReceived) -> replies.Reply:
        started = time.monotonic()
        envelope = event.envelope
        decisions = [self._recipients[str(r.path)] for r in envelope.recipients if str(r.path) in self._recipients]
        account_ids = [a for d in decisions for a in d.account_ids]
        message_id = new_blob_id()
        now = datetime.now(UTC)
        sender = str(envelope.mail_from)[1:-1]
        received = format_received(
            helo=envelope.helo,
            client_ip=self.client_ip,
            hostname=self.ctx.settings.hostname,
            protocol=with_protocol(
                is_esmtp=envelope.is_esmtp,
                is_tls=envelope.is_tls,
                is_authenticated=False,
                is_utf8=envelope.mail_params.smtputf8,
            ),
            message_id=message_id,
            recipient=str(envelope.recipients[0].path)[1:-1] if len(envelope.recipients) == 1 else None,
            tls=self._tls_info,
            authenticated_as=None,
            date=now,
        )
        delivery = Delivery(
            blob_id=message_id,
            data=format_return_path(sender) + received + event.data,
            targets=as_targets(account_ids),
            internal_date=int(now.timestamp()),
            envelope=_envelope_record(envelope, self.client_ip),
        )
        try:
            await asyncio.wrap_future(self.ctx.store.deliver(delivery))
        except StoreError as exc:
            log.error("%s", kv(event="smtp.store_failed", session=self.id, id=message_id, detail=str(exc)))
            reply = replies.LOCAL_ERROR
        else:
            reply = replies.MESSAGE_ACCEPTED.with_text(f"Message accepted as {message_id}")
        self._log_message(envelope, len(event.data), str(reply), message_id, started)
        return reply

    def _log_message(self, envelope: Envelope, size: int, result: str, message_id: str | None, started: float) -> None:
        log.info(
            "%s",
            kv(
                event="smtp.message",
                session=self.id,
                client=self.client_ip,
                helo=envelope.helo,
                tls=self._tls_info is not None,
                mail_from=str(envelope.mail_from),
                rcpt=",".join(str(r.path) for r in envelope.recipients),
                size=size,
                id=message_id,
                result=result,
                ms=round((time.monotonic() - started) * 1000, 1) if started else None,
            ),
        )

    async def _start_tls(self) -> bool:
        await self._flush()
        context = self.ctx.tls_context()
        transport = self.transport
        if context is None or transport is None or self._is_lost:
            return False
        self._tls_early = []
        loop = asyncio.get_running_loop()
        try:
            new_transport = await loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            log.info("%s", kv(event="smtp.tls_failed", session=self.id, client=self.client_ip, detail=str(exc)))
            transport.abort()
            return False
        if new_transport is None:
            return False
        self.transport = new_transport
        self._tls_info = describe(new_transport.get_extra_info("ssl_object"))
        early, self._tls_early = self._tls_early, None
        self.conn.tls_established()
        for data in early:
            self.data_received(data)
        return True


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

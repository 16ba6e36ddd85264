"""The asyncio adapter of one POP3 session: drives the core over a Channel, checks passwords, loads
the maildrop, reads messages and expunges at QUIT in worker threads, upgrades to TLS."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from kartero.log import kv
from kartero.net.channel import DEADLINE_TEXTS, AccessContext, Channel, refusal_text
from kartero.net.deadlines import Deadline
from kartero.pop3.connection import (
    ConnectionClosed,
    LoginRequested,
    MaildropEntry,
    MessageWanted,
    OutputReady,
    Pop3Connection,
    Pop3Settings,
    StartTLSRequested,
    UpdateRequested,
)
from kartero.store.ids import new_message_id
from kartero.store.interface import INBOX, FlagOp, MessageReader, StoreError, StoreUnavailable

log = logging.getLogger("kartero.pop3")

READ_CHUNK = 256 * 1024  # octets of a message read and sent at a time

# RFC 1939 §3: an inactivity autologout timer of at least 10 minutes.
TIMEOUT_S = 10 * 60.0 + 30


Pop3Context = AccessContext[Pop3Settings]


class Pop3Session:
    def __init__(self, ctx: Pop3Context, channel: Channel) -> None:
        self.ctx = ctx
        self.channel = channel
        self.id = new_message_id()[-10:]
        self.conn = Pop3Connection(ctx.settings, is_tls=ctx.implicit_tls, is_loopback=channel.is_loopback)
        self._stopping = False
        self._mailbox_id: int | None = None
        self._started_at = time.monotonic()
        self._ticket = ctx.admit(channel, self.id)
        channel.feed = self.conn.receive_data
        ctx.sessions.add(self)
        ctx.spawn(self.run())

    @classmethod
    def factory(cls, ctx: Pop3Context) -> Callable[[], Channel]:
        return lambda: Channel(lambda channel: cls(ctx, channel), ctx.deadlines)

    def stop(self) -> None:
        self._stopping = True
        self.channel.wake()

    def abort(self) -> None:
        self.channel.abort()

    async def run(self) -> None:
        conn, channel = self.conn, self.channel
        reason = "?"
        try:
            log.info("%s", kv(event="pop3.connect", session=self.id, listener=self.ctx.listener,
                              client=channel.client_ip, via=channel.via))  # fmt: skip
            if self._ticket is not None and self._ticket.refusal is not None:
                conn.close(f"[SYS/TEMP] {refusal_text(self._ticket.refusal)}", "connection limit")
            elif self.ctx.is_stopping():
                conn.close("[SYS/TEMP] Too many connections, try later", "connection limit")
            else:
                conn.start()
            reason = await self._loop()
        except StoreUnavailable as exc:  # the database is away (PostgreSQL): RFC 3206 SYS/TEMP, try later
            reason = "store unavailable"
            log.warning("%s", kv(event="pop3.store_unavailable", session=self.id, detail=str(exc)))
            conn.close("[SYS/TEMP] Mail store unavailable, try again later", reason)
            with contextlib.suppress(Exception):
                await channel.send(conn.data_to_send())
        except Exception:
            reason = "internal error"
            log.exception("%s", kv(event="pop3.session_failed", session=self.id, client=channel.client_ip))
        finally:
            self.ctx.sessions.discard(self)
            self.ctx.release(self._ticket)
            channel.close()
            log.info("%s", kv(event="pop3.disconnect", session=self.id, client=channel.client_ip, user=conn.user,
                              reason=reason, ms=round((time.monotonic() - self._started_at) * 1000)))  # fmt: skip
            self.ctx.on_session_end()

    async def _loop(self) -> str:
        conn, channel = self.conn, self.channel
        loop = channel.loop
        while True:
            event = conn.next_event()
            if event is None:
                await channel.send(conn.data_to_send())
                if channel.is_lost:
                    return "connection lost"
                if self._stopping and conn.is_idle:
                    conn.close("[SYS/TEMP] Server shutting down", "server shutting down")
                    continue
                expired = await channel.wait(TIMEOUT_S)
                if expired is not None:
                    self._expire(expired)
                continue
            match event:
                case LoginRequested(user=user, password=password):
                    await self._login(user, password)
                case MessageWanted(uid=uid):
                    await self._send_message(uid)
                case OutputReady():
                    await channel.send(conn.data_to_send())  # waits while the peer reads nothing
                case UpdateRequested(deleted_uids=uids):
                    conn.update_result(await loop.run_in_executor(None, self._expunge, uids))
                case StartTLSRequested():
                    await channel.send(conn.data_to_send())
                    failure = await channel.start_tls(self.ctx.tls_context(), conn.tls_established)
                    if failure is not None:
                        log.info("%s", kv(event="pop3.tls_failed", session=self.id, client=channel.client_ip,
                                          detail=failure))  # fmt: skip
                        return "TLS handshake failed"
                case ConnectionClosed(reason=reason):
                    await channel.send(conn.data_to_send())
                    return reason

    def _expire(self, deadline: Deadline) -> None:
        text, reason = DEADLINE_TEXTS[deadline]
        if deadline is not Deadline.IDLE:
            log.info("%s", kv(event="pop3.deadline", session=self.id, client=self.channel.client_ip,
                              deadline=deadline))  # fmt: skip
        self.conn.close(text, reason)

    async def _login(self, user: str, password: str) -> None:
        loop = self.channel.loop
        account = await self.ctx.check_login(self.channel, self.id, user, password)
        if account is None:
            self.conn.login_result(None)
            return
        refusal = self.ctx.admit_login(self._ticket, self.channel, self.id, account.address)
        if refusal is not None:
            self.conn.close(f"[SYS/TEMP] Too many connections for this account from your address ({refusal.reason})",
                            "connection limit")  # fmt: skip
            return
        maildrop = await loop.run_in_executor(None, self._maildrop, account.id)
        if maildrop is None:
            self.conn.login_result(None)
            return
        self.conn.login_result(account.address, maildrop)

    def _maildrop(self, account_id: int) -> list[MaildropEntry] | None:
        """INBOX as it is now: the snapshot this session works on until QUIT."""
        mailbox = self.ctx.store.mail.get_mailbox(account_id, INBOX)
        if mailbox is None:
            return None
        self._mailbox_id = mailbox.id
        return [MaildropEntry(r.uid, r.size) for r in self.ctx.store.mail.message_rows(mailbox.id)]

    async def _send_message(self, uid: int) -> None:
        """RETR/TOP: the message read and sent a chunk at a time with flow control, so memory stays a
        constant whatever its size (issue 8, finding 6); its bytes are held open from the start, so an
        IMAP expunge meanwhile cannot cut the response short."""
        conn, loop = self.conn, self.channel.loop
        reader = await loop.run_in_executor(None, self._open, uid)
        if reader is None:
            conn.message_result(None)
            return
        try:
            conn.message_start()
            position = 0
            while position < reader.size and conn.wants_message_data:
                chunk = await loop.run_in_executor(None, reader.read, position, READ_CHUNK)
                if not chunk:
                    raise StoreError(f"message {uid} ends before its size")
                conn.message_chunk(chunk)
                position += len(chunk)
                await self.channel.send(conn.data_to_send())
            conn.message_end()
        finally:
            reader.close()

    def _open(self, uid: int) -> MessageReader | None:
        """The maildrop message's bytes, held open; None when it is gone."""
        assert self._mailbox_id is not None
        rows = self.ctx.store.mail.message_rows(self._mailbox_id, [uid])
        if not rows:
            return None
        try:
            return self.ctx.store.mail.open_message(rows[0].blob_id)
        except (StoreError, OSError):
            return None

    def _expunge(self, uids: tuple[int, ...]) -> bool:
        if not uids:
            return True
        assert self._mailbox_id is not None
        store = self.ctx.store.mail
        try:
            store.update_flags(self._mailbox_id, uids, FlagOp.ADD, frozenset({"\\Deleted"}), None)
            gone = store.expunge(self._mailbox_id, uids)
        except StoreError:
            log.exception("%s", kv(event="pop3.update_failed", session=self.id))
            return False
        return set(gone) == set(uids)

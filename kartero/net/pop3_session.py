"""The asyncio adapter of one POP3 session: feeds the core, checks passwords, loads the maildrop, reads
messages and expunges at QUIT in worker threads, upgrades to TLS."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from kartero.auth.accounts import Authenticator
from kartero.log import kv
from kartero.pop3.connection import (
    ConnectionClosed,
    LoginRequested,
    MaildropEntry,
    MessageWanted,
    Pop3Connection,
    Pop3Settings,
    StartTLSRequested,
    UpdateRequested,
    top,
)
from kartero.store.ids import new_message_id
from kartero.store.interface import INBOX, FlagOp, Store, StoreError

log = logging.getLogger("kartero.pop3")

# RFC 1939 §3: an inactivity autologout timer of at least 10 minutes.
TIMEOUT_S = 10 * 60.0 + 30
LOGIN_FAILURE_DELAY_S = 0.5


@dataclass(slots=True)
class Pop3Context:
    listener: str
    settings: Pop3Settings
    store: Store
    authenticator: Authenticator
    tls_context: Callable[[], Any]
    implicit_tls: bool
    spawn: Callable[[Any], None]
    sessions: set[Any]
    on_session_end: Callable[[], None]
    max_connections: int
    is_stopping: Callable[[], bool]


class Pop3Session(asyncio.Protocol):
    def __init__(self, ctx: Pop3Context) -> None:
        self.ctx = ctx
        self.id = new_message_id()[-10:]
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn: Pop3Connection | None = None
        self.client_ip = "?"
        self._wakeup = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._is_lost = False
        self._stopping = False
        self._tls_early: list[bytes] | None = None
        self._mailbox_id: int | None = None
        self._started_at = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else "?"
        try:
            is_loopback = ipaddress.ip_address(self.client_ip.split("%")[0]).is_loopback
        except ValueError:
            is_loopback = False
        self.conn = Pop3Connection(self.ctx.settings, is_tls=self.ctx.implicit_tls, is_loopback=is_loopback)
        self.ctx.sessions.add(self)
        self.ctx.spawn(self.run())

    def data_received(self, data: bytes) -> None:
        if self._tls_early is not None:
            self._tls_early.append(data)
            return
        assert self.conn is not None
        self.conn.receive_data(data)
        self._wakeup.set()

    def eof_received(self) -> bool:
        if self.conn is not None:
            self.conn.receive_data(b"")
        self._wakeup.set()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._is_lost = True
        if self.conn is not None:
            self.conn.receive_data(b"")
        self._wakeup.set()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def run(self) -> None:
        conn = self.conn
        assert conn is not None
        reason = "?"
        try:
            if len(self.ctx.sessions) > self.ctx.max_connections or self.ctx.is_stopping():
                conn.close("[SYS/TEMP] Too many connections, try later", "connection limit")
            else:
                conn.start()
            log.info("%s", kv(event="pop3.connect", session=self.id, listener=self.ctx.listener, client=self.client_ip))
            reason = await self._loop(conn)
        except Exception:
            reason = "internal error"
            log.exception("%s", kv(event="pop3.session_failed", session=self.id, client=self.client_ip))
        finally:
            self.ctx.sessions.discard(self)
            if self.transport is not None:
                self.transport.close()
            log.info("%s", kv(event="pop3.disconnect", session=self.id, client=self.client_ip, user=conn.user,
                              reason=reason, ms=round((time.monotonic() - self._started_at) * 1000)))  # fmt: skip
            self.ctx.on_session_end()

    async def _loop(self, conn: Pop3Connection) -> str:
        while True:
            event = conn.next_event()
            if event is None:
                await self._flush()
                if self._is_lost:
                    return "connection lost"
                if self._stopping and conn.is_idle:
                    conn.close("[SYS/TEMP] Server shutting down", "server shutting down")
                    continue
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(TIMEOUT_S):
                        await self._wakeup.wait()
                except TimeoutError:
                    conn.close("Autologout; idle for too long", "timeout")
                continue
            match event:
                case LoginRequested(user=user, password=password):
                    await self._login(conn, user, password)
                case MessageWanted(uid=uid, top_lines=lines):
                    conn.message_result(await self.loop.run_in_executor(None, self._read, uid, lines))
                case UpdateRequested(deleted_uids=uids):
                    conn.update_result(await self.loop.run_in_executor(None, self._expunge, uids))
                case StartTLSRequested():
                    if not await self._start_tls(conn):
                        return "TLS handshake failed"
                case ConnectionClosed(reason=reason):
                    await self._flush()
                    return reason

    async def _flush(self) -> None:
        assert self.conn is not None
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self._is_lost:
            self.transport.write(data)
        await self._can_write.wait()

    async def _login(self, conn: Pop3Connection, user: str, password: str) -> None:
        account = await self.loop.run_in_executor(None, self.ctx.authenticator.verify, user, password)
        if account is None:
            log.info("%s", kv(event="pop3.login_failed", session=self.id, client=self.client_ip, user=user))
            await asyncio.sleep(LOGIN_FAILURE_DELAY_S)
            conn.login_result(None)
            return
        maildrop = await self.loop.run_in_executor(None, self._maildrop, account.id)
        if maildrop is None:
            conn.login_result(None)
            return
        log.info("%s", kv(event="pop3.login", session=self.id, client=self.client_ip, user=account.address))
        conn.login_result(account.address, maildrop)

    def _maildrop(self, account_id: int) -> list[MaildropEntry] | None:
        """INBOX as it is now: the snapshot this session works on until QUIT."""
        mailbox = self.ctx.store.get_mailbox(account_id, INBOX)
        if mailbox is None:
            return None
        self._mailbox_id = mailbox.id
        return [MaildropEntry(r.uid, r.size) for r in self.ctx.store.message_rows(mailbox.id)]

    def _read(self, uid: int, lines: int | None) -> bytes | None:
        assert self._mailbox_id is not None
        rows = self.ctx.store.message_rows(self._mailbox_id, [uid])
        if not rows:
            return None
        try:
            data = self.ctx.store.read_message(rows[0].blob_id)
        except (StoreError, OSError):
            return None
        return data if lines is None else top(data, lines)

    def _expunge(self, uids: tuple[int, ...]) -> bool:
        if not uids:
            return True
        assert self._mailbox_id is not None
        store = self.ctx.store
        try:
            store.update_flags(self._mailbox_id, uids, FlagOp.ADD, frozenset({"\\Deleted"}), None)
            gone = store.expunge(self._mailbox_id, uids)
        except StoreError:
            log.exception("%s", kv(event="pop3.update_failed", session=self.id))
            return False
        return set(gone) == set(uids)

    async def _start_tls(self, conn: Pop3Connection) -> bool:
        await self._flush()
        context = self.ctx.tls_context()
        transport = self.transport
        if context is None or transport is None or self._is_lost:
            return False
        self._tls_early = []
        try:
            new_transport = await self.loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=30.0
            )
        except (OSError, TimeoutError) as exc:
            log.info("%s", kv(event="pop3.tls_failed", session=self.id, client=self.client_ip, detail=str(exc)))
            transport.abort()
            return False
        if new_transport is None:
            return False
        self.transport = new_transport
        early, self._tls_early = self._tls_early, None
        conn.tls_established()
        for data in early:
            self.data_received(data)
        return True

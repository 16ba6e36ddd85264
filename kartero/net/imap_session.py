"""The asyncio adapter of one IMAP session.

A task per connection drives the sans-I/O core: it waits for input (with the autologout timeout), runs
each command's handler generator in a worker thread one batch at a time (so a 100 MB FETCH streams with
flow control instead of being built in memory), checks passwords off the loop, upgrades to TLS, turns
on DEFLATE compression, and during IDLE pushes the changes the store announces.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import zlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, cast

from kartero.auth.accounts import Authenticator
from kartero.imap.commands import run as run_command
from kartero.imap.commands.view import Done, Session, chunked, sync
from kartero.imap.connection import (
    CommandReady,
    CompressRequested,
    ConnectionClosed,
    IdleDone,
    IdleStarted,
    ImapConnection,
    ImapSettings,
    LoginRequested,
    StartTLSRequested,
)
from kartero.imap.response import Status
from kartero.log import kv
from kartero.store.ids import new_message_id
from kartero.store.interface import Store
from kartero.tls import describe

log = logging.getLogger("kartero.imap")

READ_PAUSE_BYTES = 1 << 20
TLS_HANDSHAKE_TIMEOUT_S = 30.0
# RFC 9051 §5.4: an autologout timer of at least 30 minutes once logged in.
AUTHENTICATED_TIMEOUT_S = 31 * 60.0
UNAUTHENTICATED_TIMEOUT_S = 120.0
# A wrong password costs the client this long before the NO (slows guessing; issue 5 adds throttling).
LOGIN_FAILURE_DELAY_S = 0.5


@dataclass(slots=True)
class ImapContext:
    listener: str
    settings: ImapSettings
    store: Store
    authenticator: Authenticator
    tls_context: Callable[[], Any]
    implicit_tls: bool
    spawn: Callable[[Any], None]
    sessions: set[ImapSession]
    on_session_end: Callable[[], None]
    max_connections: int
    is_stopping: Callable[[], bool]


class ImapSession(asyncio.Protocol):
    def __init__(self, ctx: ImapContext) -> None:
        self.ctx = ctx
        self.id = new_message_id()[-10:]
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn: ImapConnection | None = None
        self.session: Session | None = None
        self.client_ip = "?"
        self._wakeup = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._is_lost = False
        self._is_paused = False
        self._notified = False
        self._stopping = False
        self._tls_early: list[bytes] | None = None
        self._inflate: Any = None
        self._deflate: Any = None
        self._started_at = time.monotonic()

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else "?"
        try:
            is_loopback = ipaddress.ip_address(self.client_ip.split("%")[0]).is_loopback
        except ValueError:
            is_loopback = False
        self.conn = ImapConnection(self.ctx.settings, is_tls=self.ctx.implicit_tls, is_loopback=is_loopback)
        self.ctx.sessions.add(self)
        self.ctx.spawn(self.run())

    def data_received(self, data: bytes) -> None:
        if self._tls_early is not None:
            self._tls_early.append(data)
            return
        assert self.conn is not None
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error:
                self.conn.close("Bad compressed data", "bad deflate stream")
                self._wakeup.set()
                return
        self.conn.receive_data(data)
        self._wakeup.set()
        if self.conn.buffered_bytes > READ_PAUSE_BYTES and not self._is_paused and self.transport:
            self._is_paused = True
            self.transport.pause_reading()

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

    # -- lifecycle -----------------------------------------------------------------------------------

    def notify(self) -> None:
        """The selected mailbox changed (called on the loop by the server's store listener)."""
        self._notified = True
        if self.conn is not None and self.conn.is_idling:
            self._wakeup.set()

    def stop(self) -> None:
        """Shutdown: end the session with BYE at the next point between commands (or in IDLE)."""
        self._stopping = True
        self._wakeup.set()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def selected_mailbox(self) -> int | None:
        if self.session is None or self.session.selected is None:
            return None
        return self.session.selected.mailbox_id

    async def run(self) -> None:
        conn = self.conn
        assert conn is not None
        reason = "?"
        try:
            if len(self.ctx.sessions) > self.ctx.max_connections or self.ctx.is_stopping():
                conn.close("Too many connections, try later", "connection limit")
            else:
                conn.start()
            log.info("%s", kv(event="imap.connect", session=self.id, listener=self.ctx.listener, client=self.client_ip))
            reason = await self._loop(conn)
        except Exception:
            reason = "internal error"
            log.exception("%s", kv(event="imap.session_failed", session=self.id, client=self.client_ip))
            if not conn.is_closed:
                conn.close("Internal error", "internal error")
                await self._flush()
        finally:
            self.ctx.sessions.discard(self)
            if self.transport is not None:
                self.transport.close()
            log.info("%s", kv(event="imap.disconnect", session=self.id, client=self.client_ip, user=conn.user,
                              reason=reason, ms=round((time.monotonic() - self._started_at) * 1000)))  # fmt: skip
            self.ctx.on_session_end()

    async def _loop(self, conn: ImapConnection) -> str:
        while True:
            event = conn.next_event()
            if event is None:
                await self._flush()
                if self._is_lost:
                    return "connection lost"
                if self._is_paused and conn.buffered_bytes < READ_PAUSE_BYTES // 2 and self.transport:
                    self._is_paused = False
                    self.transport.resume_reading()
                if conn.is_idling and self._notified:
                    await self._push_updates()
                    continue
                if self._stopping and conn.is_idle:
                    conn.close("Server shutting down", "server shutting down")
                    continue
                await self._wait_for_input(conn)
                continue
            match event:
                case CommandReady(tag=tag, command=command):
                    await self._run_command(conn, tag, command)
                case LoginRequested(tag=tag, user=user, password=password):
                    await self._login(conn, tag, user, password)
                case StartTLSRequested():
                    if not await self._start_tls(conn):
                        return "TLS handshake failed"
                case CompressRequested():
                    await self._flush()
                    self._inflate = zlib.decompressobj(-15)
                    self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
                case IdleStarted():
                    self._notified = True  # report anything pending right away
                case IdleDone(tag=tag):
                    conn.finish(tag, Status.OK, "IDLE terminated")
                case ConnectionClosed(reason=reason):
                    await self._flush()
                    return reason

    async def _wait_for_input(self, conn: ImapConnection) -> None:
        self._wakeup.clear()
        timeout = AUTHENTICATED_TIMEOUT_S if conn.user is not None else UNAUTHENTICATED_TIMEOUT_S
        try:
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
        except TimeoutError:
            conn.close("Autologout; idle for too long", "timeout")

    async def _flush(self) -> None:
        assert self.conn is not None
        self._write(self.conn.data_to_send())
        await self._can_write.wait()

    def _write(self, data: bytes) -> None:
        if not data or self.transport is None or self._is_lost:
            return
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.transport.write(data)

    async def _drive(self, handler: Generator[bytes, None, Done]) -> Done:
        """Run a handler generator in worker threads, writing each batch as it comes."""
        assert self.conn is not None
        while True:
            done, chunk = await self.loop.run_in_executor(None, _step, handler)
            if done is not None:
                return done
            self.conn.send(chunk)
            await self._flush()

    async def _run_command(self, conn: ImapConnection, tag: str, command: Any) -> None:
        session = self.session
        assert session is not None
        started = time.monotonic()
        done = await self._drive(run_command(session, tag, command, append_limit=self.ctx.settings.append_limit))
        conn.finish(tag, done.status, done.text, done.code, done.state)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s", kv(event="imap.command", session=self.id, command=type(command).__name__,
                               result=done.status, ms=round((time.monotonic() - started) * 1000, 1)))  # fmt: skip

    async def _push_updates(self) -> None:
        assert self.conn is not None and self.session is not None
        self._notified = False
        session = self.session

        def updates() -> Generator[bytes, None, Done]:
            yield from chunked(sync(session, allow_expunge=True))
            return Done(Status.OK, "")

        await self._drive(updates())

    async def _login(self, conn: ImapConnection, tag: str, user: str, password: str) -> None:
        account = await self.loop.run_in_executor(None, self.ctx.authenticator.verify, user, password)
        if account is None:
            log.info("%s", kv(event="imap.login_failed", session=self.id, client=self.client_ip, user=user))
            await asyncio.sleep(LOGIN_FAILURE_DELAY_S)
            conn.login_result(tag, None)
            return
        self.session = Session(self.ctx.store, account.id, account.address, conn.enabled)
        log.info("%s", kv(event="imap.login", session=self.id, client=self.client_ip, user=account.address))
        conn.login_result(tag, account.address)

    async def _start_tls(self, conn: ImapConnection) -> bool:
        await self._flush()
        context = self.ctx.tls_context()
        transport = self.transport
        if context is None or transport is None or self._is_lost:
            return False
        self._tls_early = []
        try:
            new_transport = await self.loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            log.info("%s", kv(event="imap.tls_failed", session=self.id, client=self.client_ip, detail=str(exc)))
            transport.abort()
            return False
        if new_transport is None:
            return False
        self.transport = new_transport
        early, self._tls_early = self._tls_early, None
        conn.tls_established()
        log.debug("%s", kv(event="imap.tls", session=self.id, tls=describe(new_transport.get_extra_info("ssl_object"))))
        for data in early:
            self.data_received(data)
        return True


def _step(handler: Generator[bytes, None, Done]) -> tuple[Done | None, bytes]:
    try:
        return None, next(handler)
    except StopIteration as stop:
        return stop.value, b""

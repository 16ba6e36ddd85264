"""The socket side of a task-driven session (IMAP, POP3): one asyncio protocol that moves bytes and
nothing else.

It hands received bytes to the session's core, wakes the session's task, writes with flow control,
upgrades to TLS without letting plaintext sent before the handshake through (CVE-2011-0411), optionally
compresses (IMAP COMPRESS=DEFLATE), and pauses reading while the core holds too much unprocessed input.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from kartero.auth.accounts import Authenticator
from kartero.auth.throttle import AuthThrottle
from kartero.log import kv
from kartero.store.interface import Account, Store

log = logging.getLogger("kartero.net")

# Without a throttle, a wrong password still costs the client this long before the refusal.
LOGIN_FAILURE_DELAY_S = 0.5

READ_PAUSE_BYTES = 1 << 20
TLS_HANDSHAKE_TIMEOUT_S = 30.0

SettingsT = TypeVar("SettingsT")


@dataclass(slots=True)
class AccessContext(Generic[SettingsT]):
    """What every IMAP or POP3 session of one listener shares; built by server.py."""

    listener: str
    settings: SettingsT
    store: Store
    authenticator: Authenticator
    tls_context: Callable[[], Any]
    implicit_tls: bool
    spawn: Callable[[Any], None]
    sessions: set[Any]
    on_session_end: Callable[[], None]
    max_connections: int
    is_stopping: Callable[[], bool]
    throttle: AuthThrottle | None = None  # shared with SMTP AUTH: failures count per client address

    async def check_login(self, channel: Channel, session_id: str, user: str, password: str) -> Account | None:
        """The account for a password login, or None after the throttle's delay (refused at once, and
        unchecked, while the throttle locks this address or account out). The attempt counts as a failure
        before the password is checked (see auth/throttle.py). Logs `<listener>.login`, `.login_failed`,
        `.login_throttled`."""
        protocol = self.listener.rstrip("s")  # imaps -> imap, pop3s -> pop3
        client, throttle = channel.client_ip, self.throttle
        if throttle is not None and (lockout := throttle.reserve(client, user)) is not None:
            log.info("%s", kv(event=f"{protocol}.login_throttled", session=session_id, client=client, user=user,
                              reason=lockout))  # fmt: skip
            return None
        account = await channel.loop.run_in_executor(None, self.authenticator.verify, user, password)
        if account is None:
            delay = throttle.failed(client, user) if throttle is not None else LOGIN_FAILURE_DELAY_S
            log.info("%s", kv(event=f"{protocol}.login_failed", session=session_id, client=client, user=user,
                              delay_s=delay))  # fmt: skip
            await asyncio.sleep(delay)
            return None
        if throttle is not None:
            throttle.succeeded(client, user)
        log.info("%s", kv(event=f"{protocol}.login", session=session_id, client=client, user=account.address))
        return account


class Channel(asyncio.Protocol):
    """`on_connect(channel)` runs when the connection is made and must set `feed` (where received bytes
    go; b"" means the peer is gone) and `buffered` (how much input the core still holds)."""

    def __init__(self, on_connect: Callable[[Channel], object]) -> None:
        self._on_connect = on_connect
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client_ip = "?"
        self.is_loopback = False
        self.feed: Callable[[bytes], None] = lambda data: None
        self.buffered: Callable[[], int] = lambda: 0
        self.is_lost = False
        self._wakeup = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._is_paused = False
        self._tls_early: list[bytes] | None = None
        self._inflate: Any = None
        self._deflate: Any = None

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else "?"
        try:
            self.is_loopback = ipaddress.ip_address(self.client_ip.split("%")[0]).is_loopback
        except ValueError:
            self.is_loopback = False
        self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        if self._tls_early is not None:
            self._tls_early.append(data)
            return
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error:
                self.abort()
                return
        self.feed(data)
        self.wake()
        if not self._is_paused and self.buffered() > READ_PAUSE_BYTES and self.transport is not None:
            self._is_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.feed(b"")
        self.wake()
        return True  # keep our side open until the last responses are written

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_lost = True
        self.feed(b"")
        self.wake()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- for the session's task ----------------------------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    async def wait(self, timeout_s: float) -> bool:
        """Wait for input (or `wake()`); False when `timeout_s` passed first."""
        if self._is_paused and self.buffered() < READ_PAUSE_BYTES // 2 and self.transport is not None:
            self._is_paused = False
            self.transport.resume_reading()
        self._wakeup.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._wakeup.wait()
        except TimeoutError:
            return False
        return True

    async def send(self, data: bytes) -> None:
        """Write and wait until the transport's buffer is below its high-water mark."""
        if data and self.transport is not None and not self.is_lost:
            if self._deflate is not None:
                data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
            self.transport.write(data)
        await self._can_write.wait()

    def compress(self) -> None:
        """From now on both directions are raw DEFLATE (RFC 4978)."""
        self._inflate = zlib.decompressobj(-15)
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)

    async def start_tls(self, context: ssl.SSLContext, established: Callable[[], None]) -> str | None:
        """Upgrade to TLS; None on success, else why it failed (the connection is then aborted).

        Bytes that arrived in clear before this call belong to the core, which dropped them on STARTTLS.
        Data decrypted during the handshake is held until `established()` has told the core.
        """
        transport = self.transport
        if transport is None or self.is_lost:
            return "connection gone"
        self._tls_early = []
        try:
            new_transport = await self.loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            transport.abort()
            return str(exc) or type(exc).__name__
        if new_transport is None:
            return "handshake failed"
        self.transport = new_transport
        early, self._tls_early = self._tls_early, None
        established()
        for data in early:
            self.data_received(data)
        return None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

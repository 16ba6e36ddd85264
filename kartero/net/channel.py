"""The socket side of a task-driven session (IMAP, POP3): one asyncio protocol that moves bytes and
nothing else.

It hands received bytes to the session's core, wakes the session's task, writes with flow control,
upgrades to TLS without letting plaintext sent before the handshake through (CVE-2011-0411), optionally
compresses (IMAP COMPRESS=DEFLATE), and keeps the session's deadlines (see deadlines.py).

Back-pressure: the session asks for input with `wait()`; between two such calls (while it runs a
command, checks a password, sleeps a login delay) at most READ_AHEAD_BYTES more are read, then reading
pauses until it asks again. Compressed input is inflated INFLATE_CHUNK_BYTES at a time, one chunk per
`wait()`: a deflate bomb inflates no faster than its own session consumes it, in short steps between
everyone else's, and never holds more than a chunk in memory.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from kartero import metrics
from kartero.auth.accounts import Authenticator
from kartero.auth.throttle import AuthThrottle, reserve_login
from kartero.concurrency import Blocking, DeadlineExceeded
from kartero.intake import CHECK_DEADLINE_S
from kartero.log import kv
from kartero.net.deadlines import Deadline, Deadlines, DeadlineSettings
from kartero.policy.limits import Admission, Refusal, Ticket
from kartero.store.interface import Account, SpamReports, Store

log = logging.getLogger("kartero.net")

# Without a throttle, a wrong password still costs the client this long before the refusal.
LOGIN_FAILURE_DELAY_S = 0.5

# Input read while the session is not asking for any; one read of the event loop may bring 256 KiB.
READ_AHEAD_BYTES = 64 * 1024
INFLATE_CHUNK_BYTES = 64 * 1024
INFLATE_INPUT_BYTES = 16 * 1024  # compressed octets handed to zlib per call (bounds the tail it copies)
TLS_HANDSHAKE_TIMEOUT_S = 30.0
# A peer that reads none of our output for this long is gone (or attacking with slow reads).
SEND_STALL_S = 300.0

SettingsT = TypeVar("SettingsT")


@dataclass(slots=True, kw_only=True)
class ListenerContext(Generic[SettingsT]):
    """What every session of one listener shares, whatever its protocol (SMTP, IMAP, POP3); built by
    server.py. The connection caps, the TLS context and the deadlines are kept here once for all three."""

    listener: str
    settings: SettingsT
    tls_context: Callable[[], Any]  # the current ssl.SSLContext (reloaded on SIGHUP), or None
    spawn: Callable[[Any], None]  # runs a coroutine in the server's TaskGroup
    sessions: set[Any]
    on_session_end: Callable[[], None]
    is_stopping: Callable[[], bool]
    implicit_tls: bool = False
    throttle: AuthThrottle | None = None  # one for every listener: failures count per client address
    admission: Admission | None = None  # the server's connection caps; None: unlimited (unit tests)
    deadlines: DeadlineSettings = field(default_factory=DeadlineSettings)
    spool_dir: Path | None = None  # where messages too large for memory go while they arrive
    blocking: Blocking = field(default_factory=Blocking)  # argon2 and SCRAM key reads, in the worker pool
    check_deadline_s: float = CHECK_DEADLINE_S  # for each of them, and for every decision a session waits for

    @property
    def protocol(self) -> str:
        """The service the caps count: smtp, submission, imap, pop3 (submissions -> submission)."""
        return self.listener.rstrip("s")

    @property
    def log_prefix(self) -> str:
        return self.protocol

    def admit(self, channel: Channel, session_id: str) -> Ticket | None:
        """Count a new session against the server's connection caps; a refused one (its ticket says
        why) is logged as `<protocol>.limited`. Every session calls it once, and `release` once."""
        counters = metrics.for_listener(self.listener)
        counters.open.inc()
        if channel.admitted is not None or self.admission is None:
            if channel.admitted is None:  # no caps (unit tests): counted here, else by the listener
                counters.opened.inc()
            return channel.admitted
        counters.opened.inc()
        ticket = self.admission.open(self.protocol, channel.client_ip)
        if ticket.refusal is not None:
            counters.refused.inc()
            log.info("%s", kv(event=f"{self.log_prefix}.limited", session=session_id, client=channel.client_ip,
                              reason=ticket.refusal.reason))  # fmt: skip
        return ticket

    def admit_login(self, ticket: Ticket | None, channel: Channel, session_id: str, user: str) -> Refusal | None:
        """The session logged in as `user`: count it per account and address from now on (a refusal,
        logged, means the session must end); its login deadline no longer applies."""
        channel.deadlines.logged_in()
        if ticket is None or self.admission is None:
            return None
        refusal = self.admission.log_in(ticket, user)
        if refusal is not None:
            log.info("%s", kv(event=f"{self.log_prefix}.limited", session=session_id, client=channel.client_ip,
                              user=user, reason=refusal.reason))  # fmt: skip
        return refusal

    def release(self, ticket: Ticket | None) -> None:
        metrics.for_listener(self.listener).open.dec()
        if ticket is not None and self.admission is not None:
            self.admission.close(ticket)


@dataclass(slots=True, kw_only=True)
class AccessContext(ListenerContext[SettingsT]):
    """What every IMAP or POP3 session of one listener shares besides: the mail and the password check."""

    store: Store
    authenticator: Authenticator
    spam_reports: SpamReports | None = None  # IMAP moves into/out of Junk ([spam] learn); None: not learning

    async def check_login(self, channel: Channel, session_id: str, user: str, password: str) -> Account | None:
        """The account for a password login, or None after the throttle's delay (refused at once, and
        unchecked, while the throttle locks this address or account out). The attempt counts as a failure
        before the password is checked (see auth/throttle.py); one held while others of its address are
        checked waits for them. Logs `<listener>.login`, `.login_failed`, `.login_throttled`."""
        protocol = self.listener.rstrip("s")  # imaps -> imap, pop3s -> pop3
        client, throttle = channel.client_ip, self.throttle
        if throttle is not None and (lockout := await reserve_login(throttle, client, user)) is not None:
            log.info("%s", kv(event=f"{protocol}.login_throttled", session=session_id, client=client, user=user,
                              reason=lockout))  # fmt: skip
            metrics.auth_throttled(protocol)
            return None
        try:
            account = await self.blocking(self.check_deadline_s, self.authenticator.verify, user, password)
        except DeadlineExceeded as exc:  # a hung check: this login fails, the session goes on
            log.error("%s", kv(event=f"{protocol}.login_check_failed", session=session_id, client=client, user=user,
                               detail=str(exc)))  # fmt: skip
            account = None
        except BaseException:  # cancelled (the session ended) or failed: settle it as a failure
            if throttle is not None:
                throttle.failed(client, user)
            raise
        if account is None:
            delay = throttle.failed(client, user) if throttle is not None else LOGIN_FAILURE_DELAY_S
            metrics.auth_failed(protocol)
            log.info("%s", kv(event=f"{protocol}.login_failed", session=session_id, client=client, user=user,
                              delay_s=delay))  # fmt: skip
            await asyncio.sleep(delay)
            return None
        if throttle is not None:
            throttle.succeeded(client, user)
        log.info("%s", kv(event=f"{protocol}.login", session=session_id, client=client, user=account.address))
        metrics.login(protocol)
        return account


def refusal_text(refusal: Refusal) -> str:
    """What an IMAP `BYE` or a POP3 `-ERR` says to a session refused by the connection caps."""
    if refusal.is_per_address:
        return f"Too many connections from your address ({refusal.reason})"
    return "Too many connections, try later"


# What an IMAP `BYE` or a POP3 `-ERR` says when a deadline passed, and the reason logged.
DEADLINE_TEXTS = {
    Deadline.IDLE: ("Autologout; idle for too long", "timeout"),
    Deadline.COMMAND: ("Command not completed in time", "command deadline"),
    Deadline.LOGIN: ("Login not completed in time", "login deadline"),
}


class Channel(asyncio.Protocol):
    """`on_connect(channel)` runs when the connection is made and must set `feed` (where received bytes
    go; b"" means the peer closed its side or is gone: `is_lost` tells which).

    Two kinds of session drive a channel. A task (IMAP, POP3) asks for input with `wait()` and writes
    with `send()`; reading pauses once READ_AHEAD_BYTES came since it last asked. A callback-driven one
    (SMTP, `pull=False`) handles its input inside `feed`, writes with `write()`, hears of a drained
    write buffer through `on_writable`, and tells the channel how much input its core still holds
    (`regulate`): reading pauses above READ_AHEAD_BYTES and resumes below half of it.
    """

    def __init__(self, on_connect: Callable[[Channel], object], deadlines: DeadlineSettings, *,
                 pull: bool = True) -> None:  # fmt: skip
        self._on_connect = on_connect
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.proxied_peer: tuple[str, int] | None = None  # the client a PROXY header named (listener.py)
        self.admitted: Ticket | None = None  # counted by the caps before the TLS handshake (listener.py)
        self.client_ip = "?"
        self.via: str | None = None  # the proxy's address, when a PROXY header named the client
        self.is_loopback = False
        self.feed: Callable[[bytes], None] = lambda data: None
        self.on_writable: Callable[[], None] = lambda: None
        self._pull = pull
        self.deadlines = Deadlines(deadlines, self.loop.time())
        self.is_lost = False
        self._wakeup = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._is_paused = False
        self._read_ahead = 0  # octets fed to the core since the session last asked for input
        self._tls_early: list[bytes] | None = None
        self._inflate: Any = None
        self._deflate: Any = None
        self._compressed = bytearray()  # received, not yet inflated
        self._is_inflate_full = False  # the last inflate call filled its chunk: more may be ready
        self._is_eof_pending = False  # the peer closed its side behind compressed input not yet inflated

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if self.proxied_peer is not None:
            self.via = str(peer[0]) if peer else "?"
            peer = self.proxied_peer
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
        self.deadlines.received(len(data), self.loop.time())
        if self._inflate is not None:
            self._compressed += data
            if self._read_ahead < READ_AHEAD_BYTES:
                self._inflate_step()
        else:
            self.feed(data)
            if not self._pull:
                return
            self._read_ahead += len(data)
        self.wake()
        if self._read_ahead >= READ_AHEAD_BYTES or len(self._compressed) >= READ_AHEAD_BYTES:
            self._pause()

    def eof_received(self) -> bool:
        if self._has_compressed_input():
            self._is_eof_pending = True
        else:
            self.feed(b"")
        self.wake()
        return True  # keep our side open until the last responses are written

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_lost = True
        self._compressed.clear()
        self.feed(b"")
        self.wake()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()
        self.on_writable()

    @property
    def can_write(self) -> bool:
        """False while the transport's buffer is above its high-water mark (the peer reads slowly)."""
        return self._can_write.is_set()

    # -- for the session's task ----------------------------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    async def wait(self, idle_s: float) -> Deadline | None:
        """Wait for input (or `wake()`); None when it came, else the deadline that passed first (idle
        for `idle_s`, a command left unfinished, no login in time)."""
        self._read_ahead = 0
        at, which = self.deadlines.next(idle_s)
        if self.loop.time() >= at:  # also when input is waiting: a steady stream of commands must not
            return which  # keep a session that never logs in
        if self._has_compressed_input() and self._inflate_step():
            await asyncio.sleep(0)  # the core has more input without reading: let the others run first
            return None
        if self._is_eof_pending and not self._has_compressed_input():
            self._is_eof_pending = False
            self.feed(b"")
            return None
        if self._is_paused and len(self._compressed) < READ_AHEAD_BYTES and self.transport is not None:
            self._is_paused = False
            self.transport.resume_reading()
        if not self._wakeup.is_set():
            try:
                async with asyncio.timeout_at(at):
                    await self._wakeup.wait()
            except TimeoutError:
                return which
        self._wakeup.clear()
        return None

    def write(self, data: bytes) -> None:
        """Write at once (the peer's clocks run from our answer: see deadlines.py)."""
        transport = self.transport
        if data and transport is not None and not self.is_lost and not transport.is_closing():
            self.deadlines.replied(self.loop.time())
            if self._deflate is not None:
                data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
            transport.write(data)

    def regulate(self, buffered: int) -> None:
        """A callback-driven session's core holds `buffered` octets of input it has not handled: pause
        reading above READ_AHEAD_BYTES, resume below half of it (a client streaming behind a pending
        decision fills its own socket buffers, not our memory)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._tls_early is not None:
            return
        if not self._is_paused and buffered > READ_AHEAD_BYTES:
            self._is_paused = True
            transport.pause_reading()
        elif self._is_paused and buffered < READ_AHEAD_BYTES // 2:
            self._is_paused = False
            transport.resume_reading()

    async def send(self, data: bytes) -> None:
        """Write and wait until the transport's buffer is below its high-water mark (aborting the
        connection when the peer reads nothing for SEND_STALL_S)."""
        self.write(data)
        if not self._can_write.is_set():
            try:
                async with asyncio.timeout(SEND_STALL_S):
                    await self._can_write.wait()
            except TimeoutError:
                self.abort()
                self.is_lost = True

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
        if self._is_paused:  # the handshake must be read
            self._is_paused = False
            transport.resume_reading()
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
            if self._can_write.is_set():
                self.transport.close()
            else:  # close() would wait for a peer that reads nothing to take our output
                self.transport.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- inside ----------------------------------------------------------------------------------------

    def _pause(self) -> None:
        if not self._is_paused and self.transport is not None and self._tls_early is None:
            self._is_paused = True
            self.transport.pause_reading()

    def _has_compressed_input(self) -> bool:
        inflate = self._inflate
        if inflate is None or self.is_lost:
            return False
        return bool(self._compressed or inflate.unconsumed_tail or self._is_inflate_full)

    def _inflate_step(self) -> bool:
        """Inflate at most INFLATE_CHUNK_BYTES and feed them to the core; False when nothing came out
        of all the compressed input at hand."""
        inflate = self._inflate
        while self._has_compressed_input():
            source = inflate.unconsumed_tail
            if not source:
                source = bytes(self._compressed[:INFLATE_INPUT_BYTES])
                del self._compressed[:INFLATE_INPUT_BYTES]
            try:
                out = inflate.decompress(source, INFLATE_CHUNK_BYTES)
            except zlib.error:
                self._compressed.clear()
                self._is_inflate_full = False
                self.abort()
                return False
            # A full chunk may leave output inside zlib even when all input was taken.
            self._is_inflate_full = len(out) == INFLATE_CHUNK_BYTES
            if out:
                self._read_ahead += len(out)
                self.feed(out)
                return True
        return False

"""What happens on a listener before a session starts: the PROXY header and the implicit TLS handshake.

Listeners with `[listen] proxy_from`: connections from the trusted proxies must open with a PROXY
protocol header (proxy_header.py), and nobody else's may; the session then sees the client the header
names (limits, SPF, Received, the loopback login rule and the logs all use it). The header is read
within `command_deadline`, through a BufferedProtocol that asks for no more octets than the header can
still have, so the client's first bytes stay in the socket for the session or for the TLS handshake.
A missing, invalid or late header from a trusted proxy drops the connection (`proxy.refused`); a
header from anyone else is just the first bytes of the protocol, which answers it as the nonsense it is.

Implicit-TLS listeners (submissions, imaps, pop3s): the handshake is started here, after the PROXY
header if any, and only once the connection caps admitted the client: a handshake
holds a socket for up to 30 s, so a flood of connections that never finish one must count against the
caps like any session. A client refused by the caps is disconnected before the handshake (there is no
channel yet to tell it why: doing a handshake just to refuse would be work for an attacker to order).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ipaddress
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from kartero import metrics
from kartero.log import kv
from kartero.net.proxy_header import NotProxyHeader, ProxyHeaderParser
from kartero.policy.limits import Admission, Ticket, in_networks

log = logging.getLogger("kartero.net")

TLS_HANDSHAKE_TIMEOUT_S = 30.0

try:  # on uvloop, its own TLS protocol (the stdlib one calls a private method its transports lack)
    import uvloop.loop

    _UVLOOP_SSL_PROTOCOL: Any = vars(uvloop.loop).get("SSLProtocol")
except ImportError:
    _UVLOOP_SSL_PROTOCOL = None

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


class SessionProtocol(Protocol):
    """A session's asyncio protocol that can be told the client a PROXY header named, and the ticket
    of the connection caps it was admitted with before the handshake."""

    proxied_peer: tuple[str, int] | None
    admitted: Ticket | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """What every connection of one listener shares; built by server.py."""

    listener: str
    protocol: str  # smtp, imap or pop3: the prefix of its log events
    service: str  # smtp, submission, imap or pop3: its pool in the connection caps
    session: Callable[[], SessionProtocol]
    trusted: Networks  # proxy_from: these must send a PROXY header, nobody else may
    header_deadline_s: float
    tls_context: Callable[[], ssl.SSLContext | None] | None = None  # implicit TLS: the handshake is ours
    admission: Admission | None = None


class Handover(asyncio.BufferedProtocol):
    """One accepted connection until its session takes over."""

    def __init__(self, settings: ListenerSettings) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._peer = "?"
        self._parser: ProxyHeaderParser | None = None
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else "?"
        if not in_networks(self._peer, self.settings.trusted):
            self._hand_over(None)
            return
        self._parser = ProxyHeaderParser()
        self._timer = self.loop.call_later(self.settings.header_deadline_s, self._refuse, "no PROXY header in time")

    def get_buffer(self, sizehint: int) -> memoryview:
        wanted = self._parser.wanted if self._parser is not None else 1
        self._buffer = bytearray(wanted)
        return memoryview(self._buffer)

    def buffer_updated(self, nbytes: int) -> None:
        parser = self._parser
        if parser is None:
            return
        result = parser.receive(bytes(self._buffer[:nbytes]))
        if result is None:
            return
        if isinstance(result, NotProxyHeader):
            self._refuse(result.reason)
            return
        if self._timer is not None:
            self._timer.cancel()
        self._parser = None
        log.debug("%s", kv(event="proxy.header", listener=self.settings.listener, peer=self._peer,
                           client=result.source[0] if result.source else None, version=result.version))  # fmt: skip
        self._hand_over(result.source)

    def eof_received(self) -> bool:
        if self._parser is not None:
            self._refuse("closed before the PROXY header")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._parser = None

    def _refuse(self, reason: str) -> None:
        if self._parser is None or self.transport is None:
            return
        self._parser = None
        log.info("%s", kv(event="proxy.refused", listener=self.settings.listener, peer=self._peer, reason=reason))
        self.transport.abort()

    def _hand_over(self, client: tuple[str, int] | None) -> None:
        transport, settings = self.transport, self.settings
        assert transport is not None
        session = settings.session()
        session.proxied_peer = client
        if settings.tls_context is None:
            transport.set_protocol(cast(asyncio.BaseProtocol, session))
            session.connection_made(transport)
            return
        ticket = None
        if settings.admission is not None:
            client_ip = client[0] if client is not None else self._peer
            counters = metrics.for_listener(settings.listener)
            counters.opened.inc()  # here, not by the session: a connection refused now never gets one
            ticket = settings.admission.open(settings.service, client_ip)
            if ticket.refusal is not None:
                counters.refused.inc()
                log.info("%s", kv(event=f"{settings.protocol}.limited", listener=settings.listener, client=client_ip,
                                  reason=ticket.refusal.reason))  # fmt: skip
                transport.abort()
                return
        session.admitted = ticket
        context = settings.tls_context()
        if context is None:
            self._handshake_failed(ticket, "no TLS certificate")
            transport.abort()
            return
        # The TLS protocol goes in at once, not through loop.start_tls (a task that starts later): uvloop
        # resumes reading right after connection_made, and the ClientHello must reach nobody else.
        handshake: asyncio.Future[None] = self.loop.create_future()
        handshake.add_done_callback(lambda done: self._handshake_done(done, ticket))
        tls = _tls_protocol(self.loop, session, context, handshake)
        transport.set_protocol(tls)
        tls.connection_made(transport)  # the handshake starts; the session's connection_made follows it

    def _handshake_done(self, done: asyncio.Future[None], ticket: Ticket | None) -> None:
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:
            self._handshake_failed(ticket, str(error) or type(error).__name__)

    def _handshake_failed(self, ticket: Ticket | None, detail: str) -> None:
        log.info("%s", kv(event="tls.handshake_failed", listener=self.settings.listener, peer=self._peer,
                          detail=detail))  # fmt: skip
        if ticket is not None and self.settings.admission is not None:
            self.settings.admission.close(ticket)  # no session will


def _tls_protocol(loop: asyncio.AbstractEventLoop, session: SessionProtocol, context: ssl.SSLContext,
                  handshake: asyncio.Future[None]) -> asyncio.BaseProtocol:  # fmt: skip
    """The server side of TLS over a plain transport, made by the SSLProtocol class of the running loop
    (the one `loop.start_tls` would use): it calls the session's connection_made after the handshake."""
    protocol_class: Any = asyncio.sslproto.SSLProtocol
    if _UVLOOP_SSL_PROTOCOL is not None and type(loop).__module__.startswith("uvloop"):
        protocol_class = _UVLOOP_SSL_PROTOCOL
    return cast(asyncio.BaseProtocol, protocol_class(
        loop, session, context, handshake, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S
    ))  # fmt: skip


def handover_factory(settings: ListenerSettings) -> Callable[[], asyncio.BaseProtocol]:
    return lambda: Handover(settings)

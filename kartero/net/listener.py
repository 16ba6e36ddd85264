"""What happens on a listener with `[listen] proxy_from` before a session starts.

Connections from the trusted proxies must open with a PROXY protocol header (proxy_header.py), and
nobody else's may: the session then sees the client the header names (limits, SPF, Received, the
loopback login rule and the logs all use it). The header is read within `command_deadline`, through a
BufferedProtocol that asks for no more octets than the header can still have, so the client's first
bytes stay in the socket for the session, or for the TLS handshake: on an implicit-TLS listener the
header comes before the handshake, so TLS is started here (`loop.start_tls`) rather than by the
listening socket. A missing, invalid or late header from a trusted proxy drops the connection
(`proxy.refused`); a header from anyone else is just the first bytes of the protocol, which answers
it as the nonsense it is.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from kartero.log import kv
from kartero.net.proxy_header import NotProxyHeader, ProxyHeaderParser
from kartero.policy.limits import in_networks

log = logging.getLogger("kartero.net")

TLS_HANDSHAKE_TIMEOUT_S = 30.0

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


class SessionProtocol(Protocol):
    """A session's asyncio protocol that can be told the client a PROXY header named."""

    proxied_peer: tuple[str, int] | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...


class ListenerSettings:
    """What every connection of one listener with proxy_from shares; built by server.py."""

    def __init__(self, listener: str, session: Callable[[], SessionProtocol], trusted: Networks,
                 tls_context: Callable[[], ssl.SSLContext | None] | None,
                 spawn: Callable[[Coroutine[Any, Any, None]], None], header_deadline_s: float) -> None:  # fmt: skip
        self.listener = listener
        self.session = session
        self.trusted = trusted
        self.tls_context = tls_context  # set on implicit-TLS listeners: the handshake happens here
        self.spawn = spawn
        self.header_deadline_s = header_deadline_s  # a proxy sends the header at once


class ProxiedConnection(asyncio.BufferedProtocol):
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
        transport = self.transport
        assert transport is not None
        session = self.settings.session()
        session.proxied_peer = client
        if self.settings.tls_context is None:
            transport.set_protocol(cast(asyncio.BaseProtocol, session))
            session.connection_made(transport)
            return
        transport.pause_reading()  # the handshake reads what follows, not us
        self.settings.spawn(self._start_tls(transport, session, self.settings.tls_context()))

    async def _start_tls(self, transport: asyncio.Transport, session: SessionProtocol,
                         context: ssl.SSLContext | None) -> None:  # fmt: skip
        """Runs in the server's TaskGroup: whatever one handshake does, it ends this connection only."""
        early = _Early()
        try:
            if context is None:
                raise OSError("no TLS certificate")
            tls = await self.loop.start_tls(transport, early, context, server_side=True,
                                            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)  # fmt: skip
        except Exception as exc:  # OSError, ssl.SSLError, TimeoutError, ...: a failed handshake
            log.info("%s", kv(event="tls.handshake_failed", listener=self.settings.listener, peer=self._peer,
                              detail=str(exc) or type(exc).__name__))  # fmt: skip
            transport.abort()
            return
        if tls is None or early.is_lost:
            transport.abort()
            return
        try:
            tls.set_protocol(cast(asyncio.BaseProtocol, session))
            session.connection_made(tls)
            for data in early.data:
                session.data_received(data)
            if early.is_eof:
                session.eof_received()
        except Exception:
            log.exception("%s", kv(event="session.start_failed", listener=self.settings.listener, peer=self._peer))
            tls.abort()


class _Early(asyncio.Protocol):
    """Holds what the client sends between the end of the handshake and the session taking over."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.is_eof = False
        self.is_lost = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.is_eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_lost = True


def listener_factory(settings: ListenerSettings) -> Callable[[], asyncio.BaseProtocol]:
    return lambda: ProxiedConnection(settings)

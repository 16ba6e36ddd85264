"""Serving the HTTP application on the `[listen] http/https` addresses, in the server's event loop.

Each connection passes the server's admission first (the `http` service's cap, the per-address cap,
the total), like every other listener; aiohttp bounds what one connection may send (request line and
header fields 8 KiB, bodies `app.MAX_BODY`) and closes idle keep-alive connections. https uses a
context whose SNI callback moves each handshake to the server's current certificate (replaced on SIGHUP
and by ACME renewals, kartero/acme) or to an ACME tls-alpn-01 challenge's.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiohttp import web

from kartero import metrics
from kartero.config import ListenAddress
from kartero.log import kv
from kartero.policy.limits import Admission, Ticket

log = logging.getLogger("kartero.web")

KEEPALIVE_S = 15.0
MAX_LINE = 8190
MAX_FIELD = 8190


class _Admitted(asyncio.Protocol):
    """aiohttp's protocol behind the admission check: a refused connection is closed before a byte is
    read; an admitted one is handed over as is and counted until it ends."""

    def __init__(self, inner: asyncio.Protocol, admission: Admission | None, listener: str) -> None:
        self._inner = inner
        self._admission = admission
        self._ticket: Ticket | None = None
        self._counters = metrics.for_listener(listener)
        self._is_open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._counters.opened.inc()
        if self._admission is not None:
            peer: Any = transport.get_extra_info("peername")
            ip = peer[0] if isinstance(peer, tuple) else ""
            self._ticket = self._admission.open("http", ip)
            if self._ticket.refusal is not None:
                log.info("%s", kv(event="http.refused", client=ip, reason=self._ticket.refusal.reason))
                self._counters.refused.inc()
                self._ticket = None
                transport.close()
                return
        self._is_open = True
        self._counters.open.inc()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ticket is not None and self._admission is not None:
            self._admission.close(self._ticket)
            self._ticket = None
        if self._is_open:
            self._is_open = False
            self._counters.open.dec()
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class HttpServer:
    """The aiohttp runner and its listening sockets."""

    def __init__(self, app: web.Application, admission: Admission | None, shutdown_grace_s: float = 10.0) -> None:
        # At shutdown, requests still running get `[limits] shutdown_grace_s` (aiohttp's own default: 60 s).
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_S,
                                    max_line_size=MAX_LINE, max_field_size=MAX_FIELD,
                                    shutdown_timeout=shutdown_grace_s)  # fmt: skip
        self.admission = admission
        self.servers: list[asyncio.Server] = []

    async def start(self) -> None:
        await self.runner.setup()

    async def listen(self, listener: str, address: ListenAddress, tls: ssl.SSLContext | None, *,
                     reuse_port: bool) -> asyncio.Server:  # fmt: skip
        handler = self.runner.server
        assert handler is not None
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Admitted(handler(), self.admission, listener), address.host,
                                          address.port, ssl=tls, reuse_address=True, reuse_port=reuse_port,
                                          backlog=512)  # fmt: skip
        self.servers.append(server)
        return server

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        await self.runner.cleanup()

"""A browser-like HTTP client for the web tests: aiohttp's client with a cookie jar, reading the forms'
CSRF tokens the way a browser submits them."""

from __future__ import annotations

import re
import ssl
from typing import Any

import aiohttp

_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found is not None, f"no CSRF field in {page[:300]!r}"
    return found.group(1)


class Browser:
    """One browser: cookies kept (also for IP-address hosts), redirects not followed unless asked."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        self.tls = tls

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.session.close()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        kwargs.setdefault("allow_redirects", False)
        async with self.session.get(self.base + path, ssl=self.tls, **kwargs) as response:
            return response.status, await response.text(), response

    async def post(self, path: str, data: dict[str, str], **kwargs: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        kwargs.setdefault("allow_redirects", False)
        async with self.session.post(self.base + path, data=data, ssl=self.tls, **kwargs) as response:
            return response.status, await response.text(), response

    async def login(self, address: str, password: str, *,
                    admin: bool = True) -> tuple[int, str, aiohttp.ClientResponse]:  # fmt: skip
        path = "/admin/login" if admin else "/"
        _, page, _ = await self.get(path)
        action = "/admin/login" if admin else "/login"
        return await self.post(action, {"csrf": csrf_of(page), "address": address, "password": password})

    def cookie(self, name: str) -> str | None:
        for cookie in self.session.cookie_jar:
            if cookie.key == name:
                return cookie.value
        return None


class StubMX:
    """A remote MX on loopback that answers every RCPT with `reply` (e.g. a 451 with markup in its text,
    to see how the admin pages show a remote server's words); after a 2xx it takes the message too."""

    def __init__(self, reply: bytes, host: str = "127.0.0.1") -> None:
        import socket
        import threading

        self.reply = reply
        self.listener = socket.create_server((host, 0))
        self.host, self.port = host, int(self.listener.getsockname()[1])
        self.rcpts = 0
        self.messages = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> StubMX:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.listener.close()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: Any) -> None:
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 stub.remote.test ESMTP\r\n")
            for line in lines:
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250 stub.remote.test\r\n")
                elif verb == b"RCPT":
                    self.rcpts += 1
                    conn.sendall(self.reply + b"\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
                elif verb == b"DATA" and self.reply.startswith(b"2"):  # took a recipient: take the message
                    conn.sendall(b"354 go ahead\r\n")
                    for data in lines:
                        if data == b".\r\n":
                            break
                    self.messages += 1
                    conn.sendall(b"250 2.0.0 Ok: queued as STUB1\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"554 5.5.1 No valid recipients\r\n")
                else:
                    conn.sendall(b"250 2.0.0 OK\r\n")

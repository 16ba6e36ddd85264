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

"""The JSON API under /api/v1/: what the web admin does, for scripts, with bearer tokens.

401 (and `WWW-Authenticate: Bearer`) without valid credentials, 403 for an admin call by a non-admin,
errors as `{"error": "..."}`. A browser session works too, with its CSRF token in `X-CSRF-Token` on
every call that changes something.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from kartero.web import auth

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/api/v1"
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def setup(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/me", me)


def error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="kartero"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


async def caller(request: web.Request, *, admin: bool = True) -> auth.Principal | web.Response:
    """The authenticated caller, or the error answer (401, 403, or 403 for a missing CSRF token)."""
    who = await auth.principal(request)
    if who is None:
        return error(401, "a valid bearer token (kartero token create) or session is needed")
    if request.method not in _SAFE and not auth.check_csrf(request, who, request.headers.get(auth.CSRF_HEADER, "")):
        return error(403, f"a browser session must send its CSRF token in {auth.CSRF_HEADER}")
    if admin and not who.is_admin:
        return error(403, "this needs an administrator")
    return who


async def me(request: web.Request) -> web.StreamResponse:
    who = await caller(request, admin=False)
    if isinstance(who, web.Response):
        return who
    return web.json_response({"name": who.name, "admin": who.is_admin, "via": who.via})

"""The web admin's pages under /admin/: each needs a signed-in admin session."""

from __future__ import annotations

from aiohttp import web

from kartero.web import auth
from kartero.web.app import render
from kartero.web.context import CONTEXT


def setup(app: web.Application) -> None:
    app.router.add_get("/admin", lambda _: _redirect("/admin/"))
    app.router.add_get("/admin/", dashboard)


async def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


async def admin(request: web.Request) -> auth.Principal | web.Response:
    """The signed-in admin, or the answer for anyone else: the login page, or 403 for a non-admin."""
    who = await auth.principal(request)
    if who is None or who.via != "session":
        return await _redirect("/admin/login")
    if not who.is_admin:
        return render(request, "forbidden.html", 403)
    return who


async def dashboard(request: web.Request) -> web.StreamResponse:
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    ctx = request.app[CONTEXT]
    entries = await ctx.run(ctx.ops.queue)
    return render(request, "admin/dashboard.html", queue_size=len(entries), connections=ctx.connections())

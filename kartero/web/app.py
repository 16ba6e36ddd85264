"""The HTTP application: routes, the security headers every response carries, and the sign-in pages.

Pages are rendered on the server (Jinja2, autoescaped: every string an account name, a subject or a
remote server's reply can carry is escaped), with a little JavaScript from /static/ where it helps;
there is no front-end build. `ui.py` adds the admin's pages, `api.py` the JSON API.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from kartero.log import kv
from kartero.sieve_scripts import MAX_VACATION_BODY, MAX_VACATION_DAYS, MAX_VACATION_SUBJECT, Vacation
from kartero.web import auth
from kartero.web.context import CONTEXT, WebContext
from kartero.web.ops import OpError

log = logging.getLogger("kartero.web")

HERE = Path(__file__).parent
MAX_BODY = 256 * 1024  # forms and JSON bodies; nothing the admin sends is bigger
TEMPLATES = web.AppKey("templates", jinja2.Environment)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ACME_CHALLENGE = "/.well-known/acme-challenge/"
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")  # fmt: skip


def build_app(ctx: WebContext) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_headers, _host, _plaintext, _errors])
    app[CONTEXT] = ctx
    app[TEMPLATES] = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app[TEMPLATES].filters["when"] = _when
    static = app.router.add_static("/static/", HERE / "static", append_version=True, name="static")
    # Each versioned URL once: aiohttp reads and hashes the file at every url_for (on the event loop).
    urls = {path.name: str(static.url_for(filename=path.name)) for path in (HERE / "static").iterdir()}
    app[TEMPLATES].globals["static"] = urls.__getitem__
    app.router.add_get("/", user_home)
    app.router.add_post("/login", user_login)
    app.router.add_post("/logout", logout)
    app.router.add_post("/password", change_password)
    app.router.add_post("/vacation", change_vacation)
    app.router.add_get("/admin/login", admin_login_form)
    app.router.add_post("/admin/login", admin_login)
    app.router.add_post("/admin/logout", logout)
    app.router.add_get("/metrics", metrics)
    app.router.add_get(ACME_CHALLENGE + "{token}", acme_challenge)
    from kartero.web import api, clients, ui

    ui.setup(app)
    api.setup(app)
    clients.setup(app)
    return app


async def acme_challenge(request: web.Request) -> web.Response:
    """ACME http-01: the key authorization for a pending challenge's token, as text/plain (RFC 8555
    §8.3); no login, any Host. An unknown token: 404."""
    ctx = request.app[CONTEXT]
    answer = await ctx.run(ctx.acme_http01, request.match_info["token"])
    if answer is None:
        raise web.HTTPNotFound(text="no such challenge\n")
    return web.Response(text=answer, content_type="text/plain")


def _when(timestamp: float | None) -> str:
    return "" if not timestamp else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # 404s, 405s, 413s of aiohttp itself get the headers too
        _secure(request, exc)
        raise
    _secure(request, response)
    return response


def _secure(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", _CSP)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "same-origin"
    if not request.path.startswith("/static/"):
        headers.setdefault("Cache-Control", "no-store")
    if request.secure:
        headers["Strict-Transport-Security"] = "max-age=31536000"


@web.middleware
async def _host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only names of this server: its host name, the local domains and their subdomains, `localhost`
    and IP addresses. A page of another site whose name was rebound to this address (DNS rebinding)
    names itself in Host and gets nothing, not even the login form or /metrics."""
    # The ACME CA asks for each name it validates, [acme] names may lie outside the local domains, and the
    # answer is public anyway (RFC 8555 §8.3: the token is in the CA's challenge object).
    if request.path.startswith(ACME_CHALLENGE):
        return await handler(request)
    if not _is_our_host(request.host, request.app[CONTEXT].config.hostname, request.app[CONTEXT].config.domains):
        return web.Response(status=421, text="this server does not answer for that host name\n")
    return await handler(request)


def _is_our_host(host: str, hostname: str, domains: tuple[str, ...]) -> bool:
    name = host.strip().lower()
    if name.startswith("["):  # [IPv6]:port
        return "]" in name
    name = name.rpartition(":")[0] if name.count(":") == 1 else name
    if name.count(":") > 1:  # a bare IPv6 address
        return True
    name = name.rstrip(".")
    if name in ("localhost", hostname) or name.replace(".", "").isdigit():
        return True
    return any(name == d or name.endswith("." + d) for d in domains)


# What a client may fetch over plain http from anywhere: nothing here carries a credential. ACME http-01
# (RFC 8555 §8.3 is plain http by definition), Thunderbird's autoconfig (asked over http first), the
# MTA-STS policy (senders use https; http is harmless), Outlook's autodiscover request (an address only).
_PLAIN_PATHS = ("/.well-known/", "/mail/config-v1.1.xml", "/autodiscover/", "/Autodiscover/")


def plaintext_allowed(secure: bool, remote: str | None, path: str) -> bool:
    """Whether a request may be answered without TLS: over TLS, from a loopback peer (an SSH tunnel, a
    local proxy or scraper), or for a public path. Elsewhere a password, session cookie, CSRF token or
    bearer token would cross the network in clear: the rule IMAP, POP3 and ManageSieve follow for LOGIN."""
    if secure or path.startswith(_PLAIN_PATHS):
        return True
    try:
        return ipaddress.ip_address((remote or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def https_url(host: str, port: int, path_qs: str) -> str:
    """The same page over https: the Host header's name (an IPv6 literal kept in brackets), its port
    dropped for the https listener's."""
    if host.startswith("["):
        name = host[: host.index("]") + 1]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return f"https://{name}{'' if port == 443 else f':{port}'}{path_qs}"


@web.middleware
async def _plaintext(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Off loopback, plain http serves only the public paths: a GET is sent to https (when there is an
    https listener), anything else refused before a credential is read."""
    if plaintext_allowed(request.secure, request.remote, request.path):
        return await handler(request)
    https = request.app[CONTEXT].config.listen.get("https")
    if https and request.method in ("GET", "HEAD"):  # request.host is one of ours (_host): no open redirect
        raise web.HTTPPermanentRedirect(https_url(request.host, https[0].port, request.path_qs))
    return web.Response(status=403, text="only over https here (or from this machine): a password or token "
                                         "would cross the network in clear\n")  # fmt: skip


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unexpected failure is logged with the request and answered 500 without details."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("%s", kv(event="http.failed", method=request.method, path=request.path[:200],
                               detail=type(exc).__name__))  # fmt: skip
        if request.path.startswith("/api/"):
            return web.json_response({"error": "internal error (see the server log)"}, status=500)
        return web.Response(text="internal error (see the server log)", status=500)


def render(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    env = request.app[TEMPLATES]
    values.setdefault("who", request.get("kartero.principal"))
    values.setdefault("message", "")
    values.setdefault("hostname", request.app[CONTEXT].config.hostname)
    body = env.get_template(template).render(**values)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


async def form(request: web.Request) -> dict[str, str]:
    """The posted form's fields (the last value of each; files are not taken), arrived within the
    body deadline (else 408)."""
    deadline = request.app[CONTEXT].body_deadline_s
    try:
        async with asyncio.timeout(deadline):
            data = await request.post()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the form did not arrive within {deadline:g} s\n") from None
    return {k: v for k, v in data.items() if isinstance(v, str)}


def see_other(location: str) -> web.Response:
    """A redirect after a POST, as a plain response (raised HTTPExceptions skip the header middleware)."""
    return web.Response(status=303, headers={"Location": location})


# -- signing in and out --------------------------------------------------------------------------------


async def _login_form(request: web.Request, action: str, title: str, message: str, status: int) -> web.Response:
    token, fresh = auth.login_token(request)
    response = render(request, "login.html", status, action=action, title=title, message=message, csrf=token)
    if fresh:
        auth.set_login_cookie(request, response, token)
    return response


async def admin_login_form(request: web.Request, message: str = "", status: int = 200) -> web.Response:
    return await _login_form(request, "/admin/login", "Kartero admin", message, status)


async def _login(request: web.Request, *, admin: bool) -> web.StreamResponse:
    fields = await form(request)
    again = admin_login_form if admin else _user_login_form
    if not auth.login_form_ok(request, fields.get("csrf", "")):
        return await again(request, "The form expired: please sign in again.", 403)
    account = await auth.check_password(request, fields.get("address", ""), fields.get("password", ""))
    if account is None:
        return await again(request, "Wrong address or password.", 401)
    if admin and not account.is_admin:
        log.info("%s", kv(event="http.not_admin", client=request.remote or "", user=account.address))
        return await again(request, "This account is not an administrator.", 403)
    response = see_other("/admin/" if admin else "/")
    await auth.start_session(request, response, account)
    return response


async def admin_login(request: web.Request) -> web.StreamResponse:
    return await _login(request, admin=True)


async def user_login(request: web.Request) -> web.StreamResponse:
    return await _login(request, admin=False)


async def logout(request: web.Request) -> web.StreamResponse:
    who = await auth.principal(request)
    if who is None or who.via != "session":  # checked before the body is read: nothing to wait for
        return see_other("/")
    fields = await form(request)
    if not auth.check_csrf(request, who, fields.get("csrf", "")):
        raise web.HTTPForbidden(text="missing or wrong CSRF token")
    response = see_other("/admin/login" if request.path.startswith("/admin/") else "/")
    await auth.end_session(request, response, who)
    return response


# -- a user's own page ---------------------------------------------------------------------------------


async def _user_login_form(request: web.Request, message: str = "", status: int = 200) -> web.Response:
    return await _login_form(request, "/login", "Sign in", message, status)


async def user_home(request: web.Request, message: str = "", status: int = 200,
                    vacation: Vacation | None = None) -> web.Response:  # fmt: skip
    who = await auth.principal(request)
    if who is None or who.account is None or who.via != "session":
        return await _user_login_form(request)
    ctx = request.app[CONTEXT]
    state = await ctx.run(ctx.ops.vacation, who.account.id)
    done = {"1": "Your password was changed; other browsers were signed out.", "on": "Your vacation reply is on.",
            "off": "Your vacation reply is off."}.get(request.query.get("changed", ""), "")  # fmt: skip
    return render(request, "user.html", status, message=message, csrf=who.csrf, done=done, vacation=state,
                  form=vacation or state.settings, max_days=MAX_VACATION_DAYS)  # fmt: skip


async def change_vacation(request: web.Request) -> web.StreamResponse:
    """Turn the vacation reply on (with the form's subject, text and days) or off."""
    who = await auth.principal(request)
    if who is None or who.account is None or who.via != "session":
        return see_other("/")
    fields = await form(request)
    if not auth.check_csrf(request, who, fields.get("csrf", "")):
        raise web.HTTPForbidden(text="missing or wrong CSRF token")
    days = fields.get("days", "7").strip()
    wanted = Vacation(fields.get("subject", "")[: MAX_VACATION_SUBJECT + 1],
                      fields.get("body", "")[: MAX_VACATION_BODY + 1],
                      int(days) if days.isascii() and days.isdigit() and len(days) < 4 else 0)  # fmt: skip
    is_on = fields.get("action") == "on"
    ctx = request.app[CONTEXT]
    try:
        await ctx.run(ctx.ops.set_vacation, who.account.id, wanted if is_on else None)
    except OpError as exc:
        return await user_home(request, exc.message, exc.status, wanted)
    log.info("%s", kv(event="http.vacation", client=request.remote or "", user=who.account.address,
                      state="on" if is_on else "off"))  # fmt: skip
    return see_other(f"/?changed={'on' if is_on else 'off'}")


async def change_password(request: web.Request) -> web.StreamResponse:
    """A user changes their own password: the current one is asked again (a borrowed unlocked browser
    must not be enough); every session of the account ends, this one gets a new one."""
    who = await auth.principal(request)
    if who is None or who.account is None or who.via != "session":
        return see_other("/")
    fields = await form(request)
    if not auth.check_csrf(request, who, fields.get("csrf", "")):
        raise web.HTTPForbidden(text="missing or wrong CSRF token")
    new, again = fields.get("new", ""), fields.get("again", "")
    if new != again:
        return await user_home(request, "The two new passwords differ.", 400)
    if await auth.check_password(request, who.account.address, fields.get("current", "")) is None:
        return await user_home(request, "The current password is wrong.", 401)
    ctx = request.app[CONTEXT]
    try:
        await ctx.run(ctx.ops.set_password, who.account.address, new)
    except OpError as exc:
        return await user_home(request, exc.message, exc.status)
    log.info("%s", kv(event="http.password_changed", client=request.remote or "", user=who.account.address))
    response = see_other("/?changed=1")
    await auth.start_session(request, response, who.account)
    return response


# -- metrics -------------------------------------------------------------------------------------------


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus text; with `[http] metrics_token` set, only for `Authorization: Bearer <it>`."""
    ctx = request.app[CONTEXT]
    expected = ctx.config.http.metrics_token
    if expected:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not auth.csrf_matches(expected, given.strip()):
            return web.Response(status=401, text="metrics need the bearer token of [http] metrics_token\n",
                                headers={"WWW-Authenticate": 'Bearer realm="metrics"'})  # fmt: skip
    if ctx.metrics is None:
        raise web.HTTPNotFound()
    body, content_type = await ctx.run(ctx.metrics)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response

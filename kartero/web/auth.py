"""Who is asking: browser sessions (cookie + CSRF token), API bearer tokens, and password logins.

- A browser signs in with a password (`login`) and gets a session cookie: 256 random bits, HttpOnly,
  SameSite=Strict, Secure over https, valid `[http] session_lifetime`; the store keeps its SHA-256 only,
  so the sessions survive a restart and work on every node of a cluster. Each session has a CSRF token
  that every state-changing form carries (`check_csrf`); the login form itself carries one tied to a
  short-lived pre-login cookie, so nobody can sign a victim in to an account of theirs.
- An API client sends `Authorization: Bearer kt_...` (`kartero token create`); a token without an
  account is an admin token, one made `--user ADDR` acts as that account. Bearer requests need no CSRF
  token: a browser never sends them by itself.
- Password logins go through the same failed-login throttle as IMAP, POP3 and submission.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from kartero import metrics
from kartero.auth.throttle import reserve_login
from kartero.auth.tokens import MAX_SECRET, new_secret, secret_hash
from kartero.log import kv
from kartero.store.interface import Account, WebSession
from kartero.web.context import CONTEXT, WebContext

log = logging.getLogger("kartero.web")

SESSION_COOKIE = "kartero_session"
LOGIN_COOKIE = "kartero_login"  # the login form's CSRF token, before there is a session
LOGIN_COOKIE_S = 3600
CSRF_HEADER = "X-CSRF-Token"  # what the page's JavaScript sends instead of a form field
MAX_ADDRESS = 320
MAX_PASSWORD = 1024
_PRINCIPAL = "kartero.principal"


@dataclass(frozen=True, slots=True)
class Principal:
    """The account (or admin token) a request acts for."""

    account: Account | None  # None: an admin token not tied to an account
    is_admin: bool
    via: str  # "session" or "token"
    csrf: str = ""  # the session's CSRF token ("" for a token)
    session_hash: str = ""
    name: str = ""  # the address, or "token:NAME"


def is_secure(request: web.Request) -> bool:
    return request.secure


async def principal(request: web.Request) -> Principal | None:
    """The requester, from the bearer token or else the session cookie (looked up once per request)."""
    if _PRINCIPAL in request:
        cached: Principal | None = request[_PRINCIPAL]
        return cached
    ctx = request.app[CONTEXT]
    found: Principal | None = None
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        if scheme.lower() == "bearer" and 0 < len(secret) <= MAX_SECRET:
            found = await ctx.run(_token_principal, ctx, secret_hash(secret))
    else:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if 0 < len(cookie) <= MAX_SECRET:
            found = await ctx.run(_session_principal, ctx, secret_hash(cookie))
    request[_PRINCIPAL] = found
    return found


def _token_principal(ctx: WebContext, digest: str) -> Principal | None:
    token = ctx.store.accounts.find_token(digest)
    if token is None:
        return None
    if token.account_id is None:
        return Principal(None, True, "token", name=f"token:{token.name}")
    account = ctx.store.accounts.get_account_by_id(token.account_id)
    if account is None:
        return None
    return Principal(account, account.is_admin, "token", name=account.address)


def _session_principal(ctx: WebContext, digest: str) -> Principal | None:
    session = ctx.store.accounts.get_web_session(digest, int(time.time()))
    if session is None:
        return None
    account = ctx.store.accounts.get_account_by_id(session.account_id)
    if account is None:
        return None
    return Principal(account, account.is_admin, "session", session.csrf, digest, account.address)


# -- CSRF ----------------------------------------------------------------------------------------------


def csrf_matches(expected: str, given: str) -> bool:
    return bool(expected) and len(given) <= MAX_SECRET and hmac.compare_digest(expected.encode(), given.encode())


def same_origin(request: web.Request) -> bool:
    """A browser's cross-site request names another origin; requests without the header (old browsers,
    API clients) are judged by the CSRF token alone."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    scheme, _, rest = origin.partition("://")
    return rest.lower() == request.host.lower() and scheme == request.scheme


def check_csrf(request: web.Request, who: Principal, given: str) -> bool:
    """A state-changing request of a browser session carries its CSRF token (a bearer request needs none)."""
    if who.via == "token":
        return True
    return same_origin(request) and csrf_matches(who.csrf, given)


def login_token(request: web.Request) -> tuple[str, bool]:
    """The CSRF token of a login form (kept in a short-lived cookie, echoed by the form); True when it is
    new and `set_login_cookie` must send it."""
    token = request.cookies.get(LOGIN_COOKIE, "")
    if 20 <= len(token) <= 64:
        return token, False
    return secrets.token_urlsafe(32), True


def set_login_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(LOGIN_COOKIE, token, max_age=LOGIN_COOKIE_S, httponly=True, samesite="Strict",
                        secure=is_secure(request), path="/")  # fmt: skip


def login_form_ok(request: web.Request, given: str) -> bool:
    return same_origin(request) and csrf_matches(request.cookies.get(LOGIN_COOKIE, ""), given)


# -- logging in and out --------------------------------------------------------------------------------


async def check_password(request: web.Request, address: str, password: str) -> Account | None:
    """The account for a password login, or None after the throttle's delay; refused unchecked while
    the throttle locks this client or account out (the same counts as IMAP, POP3 and submission)."""
    ctx = request.app[CONTEXT]
    client = request.remote or ""
    address = address.strip()
    if len(address) > MAX_ADDRESS or len(password) > MAX_PASSWORD:  # no password is that long: not checked,
        log.info("%s", kv(event="http.login_failed", client=client, user=address[:MAX_ADDRESS],
                          detail="too long"))  # fmt: skip
        return None  # and never cut (a cut password would work here and fail over IMAP)
    throttle = ctx.throttle
    if throttle is not None and (lockout := await reserve_login(throttle, client, address)) is not None:
        log.info("%s", kv(event="http.login_throttled", client=client, user=address, reason=lockout))
        metrics.auth_throttled("http")
        return None
    try:
        account = await ctx.run(ctx.authenticator.verify, address, password)
    except BaseException:
        if throttle is not None:
            throttle.failed(client, address)
        raise
    if account is None:
        delay = throttle.failed(client, address) if throttle is not None else 0.5
        log.info("%s", kv(event="http.login_failed", client=client, user=address, delay_s=delay))
        metrics.auth_failed("http")
        await asyncio.sleep(delay)
        return None
    if throttle is not None:
        throttle.succeeded(client, address)
    log.info("%s", kv(event="http.login", client=client, user=account.address, admin=account.is_admin))
    metrics.login("http")
    return account


async def start_session(request: web.Request, response: web.StreamResponse, account: Account) -> None:
    ctx = request.app[CONTEXT]
    secret, digest = new_secret()
    expires = int(time.time() + ctx.config.http.session_lifetime_s)
    session = WebSession(account.id, secrets.token_urlsafe(32), expires)
    await ctx.run(ctx.store.accounts.add_web_session, digest, session)
    response.set_cookie(SESSION_COOKIE, secret, max_age=int(ctx.config.http.session_lifetime_s), httponly=True,
                        samesite="Strict", secure=is_secure(request), path="/")  # fmt: skip
    response.del_cookie(LOGIN_COOKIE, path="/")


async def end_session(request: web.Request, response: web.StreamResponse, who: Principal) -> None:
    ctx = request.app[CONTEXT]
    if who.session_hash:
        await ctx.run(ctx.store.accounts.delete_web_session, who.session_hash)
    response.del_cookie(SESSION_COOKIE, path="/")
    log.info("%s", kv(event="http.logout", client=request.remote or "", user=who.name))

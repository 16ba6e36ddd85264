"""The web admin's pages under /admin/: each needs a signed-in admin session.

Every page is a GET that changes nothing; every change is a POST of a form carrying the session's CSRF
token, answered with a redirect (303) to the page that shows the outcome (`?done=` names one of the
fixed texts of `DONE`, so no request can put words of its own on a page), or with the form's page, the
error in words, and a 4xx status. A delete first shows a page that asks again (no JavaScript needed).
Objects are named by query parameters and form fields, never by path segments, so an address with
`/` or `%` in it cannot change which route answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from markupsafe import Markup

from kartero.auth.accounts import DirectoryError, parse_address
from kartero.mail.trace import event_summary, format_at
from kartero.store.interface import QueueEntry, QueueState
from kartero.web import auth
from kartero.web.app import form, render, see_other
from kartero.web.chart import SERIES, activity_svg, totals
from kartero.web.context import CONTEXT
from kartero.web.ops import PAGE, OpError, StoreSize

# The admin's navigation: (path, label, key).
NAV: list[tuple[str, str, str]] = [
    ("/admin/", "Dashboard", "dashboard"),
    ("/admin/accounts", "Accounts", "accounts"),
    ("/admin/aliases", "Aliases", "aliases"),
    ("/admin/queue", "Queue", "queue"),
    ("/admin/trace", "Trace", "trace"),
    ("/admin/domains", "Domains", "domains"),
]

DONE = {
    "account-added": "The account was added.",
    "account-deleted": "The account was deleted.",
    "password": "The password was changed; the account's browsers were signed out.",
    "quota": "The quota was changed.",
    "admin-on": "The account is now an administrator.",
    "admin-off": "The account is no longer an administrator; its browsers were signed out.",
    "alias-added": "The alias was added.",
    "alias-deleted": "The alias was deleted.",
    "retried": "The message's open recipients are due now: the queue runner is trying them.",
    "queue-deleted": "The message was deleted from the queue.",
    "dkim": "A new DKIM key was made: publish its record below before it signs anything that matters.",
}
STORE_SIZE_TTL_S = 60.0  # the dashboard's store size is at most this old
MAX_FIELD = 1024  # a form field longer than this is a mistake or an attack; cut before it reaches ops
CSRF_FAILED = "The form expired or did not come from this site: reload the page and try again."


@dataclass(slots=True)
class _Cached:
    at: float = 0.0
    value: StoreSize | None = None


_STORE_SIZE = web.AppKey("store_size", _Cached)


def setup(app: web.Application) -> None:
    app[_STORE_SIZE] = _Cached()
    app.router.add_get("/admin", _to_admin)
    app.router.add_get("/admin/", dashboard)
    app.router.add_get("/admin/accounts", accounts)
    app.router.add_post("/admin/accounts/add", account_add)
    app.router.add_get("/admin/account", account)
    app.router.add_post("/admin/account/password", account_password)
    app.router.add_post("/admin/account/quota", account_quota)
    app.router.add_post("/admin/account/admin", account_admin)
    app.router.add_get("/admin/account/delete", account_delete_confirm)
    app.router.add_post("/admin/account/delete", account_delete)
    app.router.add_get("/admin/aliases", aliases)
    app.router.add_post("/admin/aliases/add", alias_add)
    app.router.add_post("/admin/aliases/delete", alias_delete)
    app.router.add_get("/admin/queue", queue)
    app.router.add_get("/admin/queue/message", queue_message)
    app.router.add_post("/admin/queue/retry", queue_retry)
    app.router.add_get("/admin/queue/delete", queue_delete_confirm)
    app.router.add_post("/admin/queue/delete", queue_delete)
    app.router.add_get("/admin/trace", trace)
    app.router.add_get("/admin/domains", domains)
    app.router.add_get("/admin/domains/check", domain_check)
    app.router.add_post("/admin/domains/dkim", dkim_generate)


# Every POST route of the admin, for the tests that prove each one checks the CSRF token.
POST_ROUTES = ("/admin/accounts/add", "/admin/account/password", "/admin/account/quota", "/admin/account/admin",
               "/admin/account/delete", "/admin/aliases/add", "/admin/aliases/delete", "/admin/queue/retry",
               "/admin/queue/delete", "/admin/domains/dkim")  # fmt: skip


async def _to_admin(_: web.Request) -> web.Response:
    return await _redirect("/admin/")


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


async def _posted(request: web.Request) -> tuple[auth.Principal, dict[str, str]] | web.Response:
    """The admin and the form of a POST, or the answer: the login page, 403 for a non-admin or a
    missing or wrong CSRF token."""
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    fields = await form(request)
    if not auth.check_csrf(request, who, fields.get("csrf", "")):
        return _page(request, "admin/error.html", "", 403, title="Form expired", message=CSRF_FAILED)
    if any(len(value) > MAX_FIELD for value in fields.values()):  # refused, never cut (a cut password...)
        return _page(request, "admin/error.html", "", 400, title="Too long",
                     message=f"A field of the form is longer than {MAX_FIELD} characters.")  # fmt: skip
    return who, fields


def _page(request: web.Request, template: str, current: str, status: int = 200, **values: Any) -> web.Response:
    done = DONE.get(request.query.get("done", ""), "") if status < 400 else ""
    return render(request, template, status, nav=NAV, current=current, done=done, **values)


def _url(path: str, **query: str) -> str:
    return f"{path}?{urlencode(query)}" if query else path


def _offset(request: web.Request) -> int:
    text = request.query.get("offset", "0")
    return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else 0  # "²".isdigit() is True


def _size(size: int) -> str:
    """A byte count for people: 512 B, 1.5 KiB, 2.0 GiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, power = float(size), 0
    while value >= 1024 and power < len(units) - 1:
        value, power = value / 1024, power + 1
    return f"{size} B" if power == 0 else f"{value:.1f} {units[power]}"


def _is_self(who: auth.Principal, address: str) -> bool:
    """Whether `address` names the signed-in admin's own account, however it is written."""
    try:
        return parse_address(address) == who.name
    except DirectoryError:
        return False


def _quota(size: int) -> str:
    """A quota as an admin types it (config.parse_size reads it back): 2G, 500M, 1536Mi, 0."""
    for unit, factor in (("G", 10**9), ("Gi", 2**30), ("M", 10**6), ("Mi", 2**20), ("k", 10**3), ("Ki", 2**10)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _duration(seconds: float) -> str:
    """3 d 5 h, 5 h 12 min, 4 min."""
    minutes = int(seconds // 60)
    days, hours, minutes = minutes // 1440, minutes % 1440 // 60, minutes % 60
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


# -- dashboard -----------------------------------------------------------------------------------------


async def _store_size(request: web.Request) -> StoreSize:
    """The store's size, summed at most once a minute (the dashboard may be open on many screens)."""
    ctx, cached = request.app[CONTEXT], request.app[_STORE_SIZE]
    now = time.monotonic()
    if cached.value is None or now - cached.at > STORE_SIZE_TTL_S:
        cached.value, cached.at = await ctx.run(ctx.ops.store_size), now
    return cached.value


async def dashboard(request: web.Request) -> web.StreamResponse:
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    ctx = request.app[CONTEXT]
    queued = await ctx.run(ctx.ops.store.queue.queue_stats)  # two counts, never the whole queue
    size = await _store_size(request)
    buckets = await ctx.run(ctx.activity) if ctx.activity is not None else None
    expiry = ctx.certificate_expiry()
    days_left = None if expiry is None else int((expiry - time.time()) // 86400)
    return _page(request, "admin/dashboard.html", "dashboard", queue_size=queued.messages, waiting=queued.waiting,
                 connections=ctx.connections(), size=size, mail_size=_size(size.mail_bytes),
                 queue_bytes=_size(size.queue_bytes), expiry=expiry, days_left=days_left,
                 chart=Markup(activity_svg(buckets)) if buckets is not None else None,
                 totals=totals(buckets or []), series=SERIES, uptime=_duration(time.time() - ctx.started_at),
                 started_at=ctx.started_at)  # fmt: skip


# -- accounts ------------------------------------------------------------------------------------------


async def accounts(request: web.Request, message: str = "", status: int = 200,
                   fields: dict[str, str] | None = None) -> web.StreamResponse:  # fmt: skip
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    ctx = request.app[CONTEXT]
    search, offset = request.query.get("q", "")[:MAX_FIELD], _offset(request)
    found, total = await ctx.run(ctx.ops.accounts, search, offset, PAGE)
    pages = {"previous": _url("/admin/accounts", q=search, offset=str(max(0, offset - PAGE))) if offset else "",
             "next": _url("/admin/accounts", q=search, offset=str(offset + PAGE)) if offset + PAGE < total else ""}
    return _page(request, "admin/accounts.html", "accounts", status, message=message, accounts=found, total=total,
                 search=search, offset=offset, pages=pages, size=_size, quota=_quota, form=fields or {})  # fmt: skip


async def account_add(request: web.Request) -> web.StreamResponse:
    posted = await _posted(request)
    if isinstance(posted, web.Response):
        return posted
    _, fields = posted
    ctx = request.app[CONTEXT]
    try:
        added = await ctx.run(lambda: ctx.ops.add_account(fields.get("address", ""), fields.get("password", ""),
                                                          is_admin=fields.get("admin") == "on",
                                                          quota=fields.get("quota", "")))  # fmt: skip
    except OpError as exc:
        return await accounts(request, exc.message, exc.status, {"address": fields.get("address", "")})
    return see_other(_url("/admin/account", address=added.address, done="account-added"))


async def account(request: web.Request, message: str = "", status: int = 200,
                  address: str | None = None) -> web.StreamResponse:  # fmt: skip
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    ctx = request.app[CONTEXT]
    try:
        info = await ctx.run(ctx.ops.account, request.query.get("address", "")[:MAX_FIELD] if address is None
                             else address)  # fmt: skip
    except OpError as exc:
        return _page(request, "admin/error.html", "accounts", exc.status, title="No such account", message=exc.message)
    return _page(request, "admin/account.html", "accounts", status, message=message, account=info, size=_size,
                 quota=_quota, is_me=who.name == info.address)  # fmt: skip


async def _account_change(request: web.Request, change: str) -> web.StreamResponse:
    posted = await _posted(request)
    if isinstance(posted, web.Response):
        return posted
    who, fields = posted
    ctx, address = request.app[CONTEXT], fields.get("address", "")
    try:
        if change == "password":
            await ctx.run(ctx.ops.set_password, address, fields.get("password", ""))
            done = "password"
        elif change == "quota":
            address = (await ctx.run(ctx.ops.set_quota, address, fields.get("quota", ""))).address
            done = "quota"
        else:
            is_admin = fields.get("admin") == "on"
            if not is_admin and _is_self(who, address):
                raise OpError(409, "You cannot take away your own administrator rights (ask another admin).")
            address = (await ctx.run(ctx.ops.set_admin, address, is_admin)).address
            done = "admin-on" if is_admin else "admin-off"
    except OpError as exc:
        return await account(request, exc.message, exc.status, address)
    return see_other(_url("/admin/account", address=address, done=done))


async def account_password(request: web.Request) -> web.StreamResponse:
    return await _account_change(request, "password")


async def account_quota(request: web.Request) -> web.StreamResponse:
    return await _account_change(request, "quota")


async def account_admin(request: web.Request) -> web.StreamResponse:
    return await _account_change(request, "admin")


async def account_delete_confirm(request: web.Request) -> web.StreamResponse:
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    ctx = request.app[CONTEXT]
    try:
        info = await ctx.run(ctx.ops.account, request.query.get("address", "")[:MAX_FIELD])
    except OpError as exc:
        return _page(request, "admin/error.html", "accounts", exc.status, title="No such account", message=exc.message)
    return _page(request, "admin/confirm.html", "accounts", title=f"Delete {info.address}?",
                 text=f"The account {info.address} and its {info.messages} stored messages "
                      f"({_size(info.used_bytes)}) will be deleted. This cannot be undone.",
                 action="/admin/account/delete", fields={"address": info.address}, button="Delete the account",
                 back=_url("/admin/account", address=info.address))  # fmt: skip


async def account_delete(request: web.Request) -> web.StreamResponse:
    posted = await _posted(request)
    if isinstance(posted, web.Response):
        return posted
    who, fields = posted
    ctx, address = request.app[CONTEXT], fields.get("address", "")
    try:
        if _is_self(who, address):
            raise OpError(409, "You cannot delete the account you are signed in with.")
        await ctx.run(ctx.ops.delete_account, address)
    except OpError as exc:
        return _page(request, "admin/error.html", "accounts", exc.status, title="Not deleted", message=exc.message)
    return see_other(_url("/admin/accounts", done="account-deleted"))


# -- aliases -------------------------------------------------------------------------------------------


async def aliases(request: web.Request, message: str = "", status: int = 200,
                  fields: dict[str, str] | None = None) -> web.StreamResponse:  # fmt: skip
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    ctx = request.app[CONTEXT]
    found = sorted(await ctx.run(ctx.ops.aliases), key=lambda a: (a.source.lstrip("@").rpartition("@")[2], a.source))
    return _page(request, "admin/aliases.html", "aliases", status, message=message, aliases=found,
                 form=fields or {}, domains=ctx.config.domains)  # fmt: skip


async def alias_add(request: web.Request) -> web.StreamResponse:
    posted = await _posted(request)
    if isinstance(posted, web.Response):
        return posted
    _, fields = posted
    ctx = request.app[CONTEXT]
    source, destination = fields.get("source", ""), fields.get("destination", "")
    try:
        await ctx.run(ctx.ops.add_alias, source, destination)
    except OpError as exc:
        return await aliases(request, exc.message, exc.status, {"source": source, "destination": destination})
    return see_other(_url("/admin/aliases", done="alias-added"))


async def alias_delete(request: web.Request) -> web.StreamResponse:
    posted = await _posted(request)
    if isinstance(posted, web.Response):
        return posted
    _, fields = posted
    ctx = request.app[CONTEXT]
    try:
        await ctx.run(ctx.ops.delete_alias, fields.get("source", ""))
    except OpError as exc:
        return await aliases(request, exc.message, exc.status)
    return see_other(_url("/admin/aliases", done="alias-deleted"))


# -- the queue -----------------------------------------------------------------------------------------


async def queue(request: web.Request) -> web.StreamResponse:
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    ctx = request.app[CONTEXT]
    entries: list[QueueEntry] = sorted(await ctx.run(ctx.ops.queue), key=lambda e: (e.created_at, e.id))
    offset = _offset(request)
    pages = {"previous": _url("/admin/queue", offset=str(max(0, offset - PAGE))) if offset else "",
             "next": _url("/admin/queue", offset=str(offset + PAGE)) if offset + PAGE < len(entries) else ""}
    return _page(request, "admin/queue.html", "queue", entries=entries[offset : offset + PAGE], total=len(entries),
                 offset=offset, pages=pages, size=_size, now=time.time())  # fmt: skip


async def _queue_entry(request: web.Request, queue_id: str) -> tuple[QueueEntry, str] | web.Response:
    ctx = request.app[CONTEXT]
    try:
        return await ctx.run(ctx.ops.queue_entry, queue_id[:MAX_FIELD])
    except OpError as exc:
        return _page(request, "admin/error.html", "queue", exc.status, title="Not in the queue", message=exc.message)


async def queue_message(request: web.Request) -> web.StreamResponse:
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    found = await _queue_entry(request, request.query.get("id", ""))
    if isinstance(found, web.Response):
        return found
    entry, header = found
    return _page(request, "admin/queue_message.html", "queue", entry=entry, header=header, size=_size,
                 now=time.time())  # fmt: skip


async def queue_retry(request: web.Request) -> web.StreamResponse:
    posted = await _posted(request)
    if isinstance(posted, web.Response):
        return posted
    _, fields = posted
    ctx, queue_id = request.app[CONTEXT], fields.get("id", "")
    try:
        await ctx.run(ctx.ops.queue_retry, queue_id)
    except OpError as exc:
        return _page(request, "admin/error.html", "queue", exc.status, title="Not retried", message=exc.message)
    ctx.wake_queue()
    return see_other(_url("/admin/queue/message", id=queue_id, done="retried"))


async def queue_delete_confirm(request: web.Request) -> web.StreamResponse:
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    found = await _queue_entry(request, request.query.get("id", ""))
    if isinstance(found, web.Response):
        return found
    entry, _ = found
    recipients = ", ".join(r.address for r in entry.recipients if r.state in (QueueState.PENDING, QueueState.DEFERRED))
    return _page(request, "admin/confirm.html", "queue", title=f"Delete queued message {entry.id}?",
                 text=f"The message from <{entry.sender}> will not be delivered to {recipients or 'anyone'}, "
                      "and no bounce is sent. This cannot be undone.",
                 action="/admin/queue/delete", fields={"id": entry.id}, button="Delete the message",
                 back=_url("/admin/queue/message", id=entry.id))  # fmt: skip


async def queue_delete(request: web.Request) -> web.StreamResponse:
    posted = await _posted(request)
    if isinstance(posted, web.Response):
        return posted
    _, fields = posted
    ctx = request.app[CONTEXT]
    try:
        await ctx.run(ctx.ops.queue_delete, fields.get("id", ""))
    except OpError as exc:
        return _page(request, "admin/error.html", "queue", exc.status, title="Not deleted", message=exc.message)
    return see_other(_url("/admin/queue", done="queue-deleted"))


# -- domains, DNS and DKIM -----------------------------------------------------------------------------


async def domains(request: web.Request, message: str = "", status: int = 200) -> web.StreamResponse:
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    ctx = request.app[CONTEXT]
    found = await ctx.run(ctx.ops.domains)
    return _page(request, "admin/domains.html", "domains", status, message=message, domains=found,
                 hostname=ctx.config.hostname)  # fmt: skip


async def domain_check(request: web.Request) -> web.StreamResponse:
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    ctx, domain = request.app[CONTEXT], request.query.get("domain", "")[:MAX_FIELD]
    try:
        checks = await ctx.run(ctx.ops.dns_check, domain, slow=True)
    except OpError as exc:
        return _page(request, "admin/error.html", "domains", exc.status, title="No DNS check", message=exc.message)
    return _page(request, "admin/domain_check.html", "domains", domain=domain.strip().lower(), checks=checks,
                 is_ok=all(c.status == "ok" for c in checks if c.required))  # fmt: skip


async def dkim_generate(request: web.Request) -> web.StreamResponse:
    posted = await _posted(request)
    if isinstance(posted, web.Response):
        return posted
    _, fields = posted
    ctx = request.app[CONTEXT]
    try:
        await ctx.run(ctx.ops.dkim_generate, fields.get("domain", ""), fields.get("algorithm", "rsa"),
                      fields.get("selector", ""))  # fmt: skip
    except OpError as exc:
        return await domains(request, exc.message, exc.status)
    return see_other(_url("/admin/domains", done="dkim"))


# -- message trace -------------------------------------------------------------------------------------

TRACE_FIELDS = ("address", "message_id", "id", "since", "until")
TRACE_LIMIT = 50


def _moment(text: str) -> float | None:
    """A `datetime-local` field's value (`2026-11-30T14:05`, seconds optional), read as UTC."""
    for pattern in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text[:19], pattern).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise OpError(400, f"not a time: {text[:40]!r} (like 2026-11-30T14:05, UTC)")


async def trace(request: web.Request) -> web.StreamResponse:
    """Where did a message go: a search by address, Message-ID, Kartero id or time (UTC), each message
    found with its path (no JavaScript: each path is a <details> element)."""
    who = await admin(request)
    if isinstance(who, web.Response):
        return who
    ctx = request.app[CONTEXT]
    asked = {name: request.query.get(name, "").strip()[:MAX_FIELD] for name in TRACE_FIELDS}
    try:
        since = _moment(asked["since"]) if asked["since"] else None
        until = _moment(asked["until"]) if asked["until"] else None
        found = await ctx.run(partial(ctx.ops.trace, address=asked["address"], message_id=asked["message_id"],
                                      id=asked["id"], since=since, until=until, limit=TRACE_LIMIT))  # fmt: skip
    except OpError as exc:
        return _page(request, "admin/trace.html", "trace", exc.status, asked=asked, messages=[], more=False,
                     searched=True, message=exc.message)  # fmt: skip
    messages = [(m, m.outcomes(), [(format_at(e.at), e.kind.value, event_summary(e)) for e in m.events])
                for m in found.messages]  # fmt: skip
    return _page(request, "admin/trace.html", "trace", asked=asked, messages=messages, more=found.more,
                 searched=any(asked.values()), format_at=format_at)  # fmt: skip

"""The JSON API under /api/v1/: what the web admin does, for scripts, with bearer tokens.

401 (and `WWW-Authenticate: Bearer`) without valid credentials, 403 for an admin call by a non-admin,
errors as `{"error": "..."}` for every status, aiohttp's own 404/405/413 included. A browser session
works too, with its CSRF token in `X-CSRF-Token` on every call that changes something.

`ENDPOINTS` is the one table of the API: `setup` makes the routes from it, `_dispatch` checks each
request against its entry before the handler runs (credentials, path and query parameters, the JSON
body), and `/api/v1/openapi.json` is generated from it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web

from kartero.auth.accounts import DirectoryError, parse_address
from kartero.log import kv
from kartero.mail.trace import message_dict
from kartero.store.interface import MAX_TRACE_RESULTS, QueueEntry, QueueState, QueueStats, QuotaUsage
from kartero.web import auth
from kartero.web.context import CONTEXT
from kartero.web.endpoints import PREFIX, Access, Call, Endpoint, Param, document, parse_params
from kartero.web.ops import PAGE, AccountInfo, AliasInfo, DkimKeyInfo, Operations, OpError, parse_quota
from kartero.web.schema import (
    MAX_JSON_BYTES,
    Arr,
    Bool,
    Int,
    Invalid,
    Map,
    Nullable,
    Num,
    Obj,
    Opaque,
    Prop,
    Schema,
    Str,
    dumps,
    parse_json,
)

log = logging.getLogger("kartero.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN = (QueueState.PENDING, QueueState.DEFERRED)  # recipients still to be tried
_OPENAPI = web.AppKey("kartero.openapi", dict)
MAX_PAGE = 1000

# -- the shapes of requests and answers ------------------------------------------------------------------

ADDRESS = Str(auth.MAX_ADDRESS, 1, "an email address", example="alice@example.org")
PASSWORD = Str(auth.MAX_PASSWORD, 1, "a password")
QUOTA = Str(40, 1, 'a size like "500M" or "2G", "0" for none, or "default" for [limits] default_quota',
            example="500M")  # fmt: skip
TIME = Int(0, 2**63 - 1, "unix seconds")

ACCOUNT = Obj((
    Prop("address", ADDRESS, True),
    Prop("admin", Bool("may use the web admin and the admin API"), True),
    Prop("created_at", TIME, True),
    Prop("quota_bytes", Int(0, 2**63 - 1, "the storage limit in force, 0: none"), True),
    Prop("quota_is_default", Bool("the limit is [limits] default_quota"), True),
    Prop("used_bytes", Int(0, 2**63 - 1, "the size of all its messages"), True),
    Prop("messages", Int(0, 2**63 - 1), True),
), name="Account")  # fmt: skip
ALIAS = Obj((
    Prop("source", Str(auth.MAX_ADDRESS, 1, "an address, or @domain for a catch-all"), True),
    Prop("destinations", Arr(Str(auth.MAX_ADDRESS)), True),
    Prop("catch_all", Bool("any address of the domain without an account or alias of its own"), True),
    Prop("remote", Arr(Str(auth.MAX_ADDRESS), "the destinations outside the local domains (forwarded with SRS)"),
         True),
), name="Alias")  # fmt: skip
RECIPIENT = Obj((
    Prop("address", Str(auth.MAX_ADDRESS), True),
    Prop("state", Str(16, enum=("pending", "deferred", "delivered", "failed")), True),
    Prop("attempts", Int(0, 2**31), True),
    Prop("next_attempt_at", TIME, True),
    Prop("last_reply", Nullable(Str(4000, description="the remote server's last answer, or why it failed")), True),
), name="QueueRecipient")  # fmt: skip
QUEUED = Obj((
    Prop("id", Str(64), True),
    Prop("sender", Str(auth.MAX_ADDRESS, description="the envelope sender, empty for a bounce"), True),
    Prop("size", Int(0, 2**63 - 1, "bytes"), True),
    Prop("created_at", TIME, True),
    Prop("expires_at", TIME, True),
    Prop("recipients", Arr(RECIPIENT), True),
), name="QueuedMessage")  # fmt: skip
DKIM_KEY = Obj((
    Prop("domain", Str(253), True),
    Prop("selector", Str(63), True),
    Prop("algorithm", Str(16, enum=("rsa", "ed25519")), True),
    Prop("created_at", TIME, True),
    Prop("record_name", Str(400, description="where to publish the TXT record"), True),
    Prop("record", Str(4000, description="the TXT record to publish"), True),
), name="DkimKey")  # fmt: skip
DNS_CHECK = Obj((
    Prop("name", Str(100, description="MX, A, SPF, DKIM <selector>, DMARC, MTA-STS, TLS-RPT, PTR"), True),
    Prop("status", Str(16, enum=("ok", "missing", "wrong", "error")), True),
    Prop("detail", Str(4000, description="what was found, or the record to publish"), True),
    Prop("required", Bool("false: recommended only"), True),
), name="DnsCheck")  # fmt: skip


TRACED = Obj((
    Prop("id", Str(64, description="Kartero's id of the message"), True),
    Prop("header_id", Nullable(Str(256, description="its Message-ID field")), True),
    Prop("queue_ids", Arr(Str(64), "its queue entries (remote recipients)"), True),
    Prop("received_at", Str(30, description="RFC 3339, UTC"), True),
    Prop("sender", Nullable(Str(auth.MAX_ADDRESS)), True),
    Prop("outcomes", Map(Str(16), "each recipient's state as its latest event says"), True),
    Prop("events", Arr(Opaque("an event: at (RFC 3339), kind, message_id, and the details that are set "
                              "(sender, recipients, recipient, listener, client, helo, tls, user, checks, "
                              "mailbox, remote, reply, status, attempt, size, note, ...)")), True),
), name="TracedMessage")  # fmt: skip


def _page(*props: Prop) -> Obj:
    return Obj((*props, Prop("total", Int(0, 2**63 - 1, "how many there are in all"), True),
                Prop("offset", Int(0, 2**63 - 1), True), Prop("limit", Int(1, MAX_PAGE), True)))  # fmt: skip


PAGING = (Param("offset", Int(0, 10**9), "how many to skip", 0),
          Param("limit", Int(1, MAX_PAGE), "how many at most", PAGE))  # fmt: skip
PATH_PARAMS = {
    "address": Param("address", ADDRESS, "the account's address"),
    "source": Param("source", Str(auth.MAX_ADDRESS, 1), "the alias's address, or @domain (URL-encode @ as %40)"),
    "id": Param("id", Str(64, 1), "the queue id"),
    "domain": Param("domain", Str(253, 1), "one of the local domains"),
}


# -- handlers ---------------------------------------------------------------------------------------------


async def me(call: Call) -> object:
    who = call.who
    assert who is not None
    return {"name": who.name, "admin": who.is_admin, "via": who.via,
            "address": who.account.address if who.account else None}  # fmt: skip


async def change_own_password(call: Call) -> object:
    """The current password is asked again (a stolen session or token must not be enough to lock the
    owner out); through the shared failed-login throttle."""
    who = call.who
    assert who is not None
    if who.account is None:
        raise OpError(400, "an admin token has no account and so no password: use PATCH /api/v1/accounts/{address}")
    account = await auth.check_password(call.request, who.account.address, call.text("current"))
    if account is None or account.id != who.account.id:
        raise OpError(403, "the current password is wrong")
    await call.ctx.run(call.ctx.ops.set_password, who.account.address, call.text("new"))
    return {"address": who.account.address}


async def list_accounts(call: Call) -> object:
    offset, limit = call.number("offset"), call.number("limit")
    infos, total = await call.ctx.run(call.ctx.ops.accounts, call.text("search"), offset, limit)
    return {"accounts": [_account(i) for i in infos], "total": total, "offset": offset, "limit": limit}


async def add_account(call: Call) -> object:
    add = partial(call.ctx.ops.add_account, call.text("address"), call.text("password"),
                  is_admin=call.flag("admin"), quota=call.text("quota"))  # fmt: skip
    return _account(await call.ctx.run(add))


async def get_account(call: Call) -> object:
    return _account(await call.ctx.run(call.ctx.ops.account, call.path["address"]))


async def update_account(call: Call) -> object:
    if not call.body:
        raise OpError(400, "nothing to change: give password, quota or admin")
    body = call.body
    if body.get("admin") is False:
        _not_yourself(call, "take away your own admin rights")
    change = partial(_update_account, call.ctx.ops, call.path["address"], body.get("quota"), body.get("admin"),
                     body.get("password"))  # fmt: skip
    return _account(await call.ctx.run(change))


def _update_account(ops: Operations, address: str, quota: object, admin: object, password: object) -> AccountInfo:
    """Every value is checked and the account found before anything changes."""
    if isinstance(quota, str):
        parse_quota(quota)
    ops.account(address)
    if isinstance(quota, str):
        ops.set_quota(address, quota)
    if isinstance(admin, bool):
        ops.set_admin(address, admin)
    if isinstance(password, str):
        ops.set_password(address, password)
    return ops.account(address)


async def delete_account(call: Call) -> object:
    _not_yourself(call, "delete the account you are signed in with")
    await call.ctx.run(call.ctx.ops.delete_account, call.path["address"])
    return None


def _not_yourself(call: Call, what: str) -> None:
    """An admin acting as an account (a session, a --user token) cannot lock that account out: another
    admin (or the CLI) must. As the web admin's pages."""
    who = call.who
    if who is None or who.account is None:
        return
    try:
        same = parse_address(call.path["address"]) == who.account.address
    except DirectoryError:
        return
    if same:
        raise OpError(409, f"you cannot {what}: ask another admin, or use the kartero command")


async def list_aliases(call: Call) -> object:
    return {"aliases": [_alias(a) for a in await call.ctx.run(call.ctx.ops.aliases)]}


async def add_alias(call: Call) -> object:
    return _alias(await call.ctx.run(_add_alias, call.ctx.ops, call.text("source"), call.text("destination")))


def _add_alias(ops: Operations, source: str, destination: str) -> AliasInfo:
    """The alias with the new destination; 409 when it had it already (adding is idempotent in the store)."""
    before = {a.source: len(a.destinations) for a in ops.aliases()}
    alias = ops.add_alias(source, destination)
    if before.get(alias.source) == len(alias.destinations):
        raise OpError(409, f"alias {alias.source} already points to that destination")
    return alias


async def delete_alias(call: Call) -> object:
    await call.ctx.run(call.ctx.ops.delete_alias, call.path["source"])
    return None


async def list_queue(call: Call) -> object:
    offset, limit = call.number("offset"), call.number("limit")
    entries = await call.ctx.run(call.ctx.ops.queue)
    page = entries[offset : offset + limit]
    return {"queue": [_queued(e) for e in page], "total": len(entries), "offset": offset, "limit": limit}


async def get_queued(call: Call) -> object:
    entry, header = await call.ctx.run(call.ctx.ops.queue_entry, call.path["id"])
    return {"message": _queued(entry), "header": header}


async def retry_queued(call: Call) -> object:
    due = await call.ctx.run(call.ctx.ops.queue_retry, call.path["id"])
    call.ctx.wake_queue()
    return {"due": due}


async def delete_queued(call: Call) -> object:
    await call.ctx.run(call.ctx.ops.queue_delete, call.path["id"])
    return None


async def list_domains(call: Call) -> object:
    domains = await call.ctx.run(call.ctx.ops.domains)
    return {"domains": [{"domain": name, "dkim": [_key(k) for k in keys]} for name, keys in domains]}


async def check_dns(call: Call) -> object:
    domain = call.path["domain"]
    checks = await call.ctx.run(call.ctx.ops.dns_check, domain, slow=True)
    rows = [{"name": c.name, "status": c.status, "detail": c.detail, "required": c.required} for c in checks]
    return {"domain": domain.lower(), "ok": all(c.status == "ok" for c in checks if c.required), "checks": rows}


async def generate_dkim(call: Call) -> object:
    generate = call.ctx.ops.dkim_generate
    key = await call.ctx.run(generate, call.path["domain"], call.text("algorithm", "rsa"), call.text("selector"),
                             slow=True)  # fmt: skip
    return _key(key)


async def stats(call: Call) -> object:
    ctx = call.ctx
    queued, usage = await ctx.run(_store_stats, ctx.ops)
    now = time.time()
    return {
        "version": _VERSION,
        "started_at": int(ctx.started_at),
        "uptime_s": round(now - ctx.started_at, 3) if ctx.started_at else 0.0,
        "connections": ctx.connections(),
        "queue": {"messages": queued.messages, "recipients": queued.waiting,
                  "oldest_created_at": queued.oldest_created_at},
        "store": {"accounts": len(usage), "messages": sum(u.messages for u in usage),
                  "bytes": sum(u.used_bytes for u in usage)},
    }  # fmt: skip


def _store_stats(ops: Operations) -> tuple[QueueStats, list[QuotaUsage]]:
    return ops.store.queue.queue_stats(), list(ops.store.mail.quota_usage().values())


async def trace(call: Call) -> object:
    since, until = call.number("since"), call.number("until")
    search = partial(call.ctx.ops.trace, address=call.text("address"), message_id=call.text("message_id"),
                     id=call.text("id"), since=since or None, until=until or None, limit=call.number("limit"))
    found = await call.ctx.run(search)
    return {"messages": [message_dict(m) for m in found.messages], "more": found.more}


async def openapi(call: Call) -> object:
    return call.request.app[_OPENAPI]


def _account(info: AccountInfo) -> dict[str, object]:
    return {"address": info.address, "admin": info.is_admin, "created_at": info.created_at,
            "quota_bytes": info.quota_bytes, "quota_is_default": info.quota_is_default,
            "used_bytes": info.used_bytes, "messages": info.messages}  # fmt: skip


def _alias(info: AliasInfo) -> dict[str, object]:
    return {"source": info.source, "destinations": list(info.destinations), "catch_all": info.is_catch_all,
            "remote": list(info.remote)}  # fmt: skip


def _queued(entry: QueueEntry) -> dict[str, object]:
    return {"id": entry.id, "sender": entry.sender, "size": entry.size, "created_at": entry.created_at,
            "expires_at": entry.expires_at,
            "recipients": [{"address": r.address, "state": str(r.state), "attempts": r.attempts,
                            "next_attempt_at": r.next_attempt_at, "last_reply": r.last_reply}
                           for r in entry.recipients]}  # fmt: skip


def _key(key: DkimKeyInfo) -> dict[str, object]:
    return {"domain": key.domain, "selector": key.selector, "algorithm": key.algorithm,
            "created_at": key.created_at, "record_name": key.record_name, "record": key.record}  # fmt: skip


# -- the table ---------------------------------------------------------------------------------------------


def _endpoint(method: str, path: str, handler: Callable[[Call], Awaitable[object]], summary: str,
              answer: Schema | None, *, status: int = 200, access: Access = Access.ADMIN, body: Obj | None = None,
              body_required: bool = True, query: tuple[Param, ...] = (), errors: tuple[int, ...] = (),
              description: str = "") -> Endpoint:
    """An entry of the table, its path parameters described from PATH_PARAMS."""
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    return Endpoint(method, path, handler, summary, answer, status, access, body, body_required, query, errors,
                    description, tuple(PATH_PARAMS[n] for n in names))  # fmt: skip


ENDPOINTS: tuple[Endpoint, ...] = (
    _endpoint("GET", "/me", me, "Who the credentials belong to", Obj((
        Prop("name", Str(400, description='the address, or "token:NAME" for an admin token'), True),
        Prop("admin", Bool(), True),
        Prop("via", Str(16, enum=("session", "token")), True),
        Prop("address", Nullable(Str(auth.MAX_ADDRESS, description="null for an admin token")), True),
    )), access=Access.SIGNED_IN),
    _endpoint("POST", "/me/password", change_own_password, "Change your own password", Obj((
        Prop("address", ADDRESS, True),)), access=Access.SIGNED_IN,
        body=Obj((Prop("current", Str(auth.MAX_PASSWORD, description="the password now"), True),
                  Prop("new", PASSWORD, True))),
        description="Needs the current password (403 when it is wrong; failures count in the login "
                    "throttle). Every browser session of the account ends, the calling one included; "
                    "bearer tokens stay valid. An admin token has no account: 400."),
    _endpoint("GET", "/accounts", list_accounts, "List accounts, a page at a time", _page(
        Prop("accounts", Arr(ACCOUNT), True)),
        query=(Param("search", Str(auth.MAX_ADDRESS), "only addresses containing this (any case)", ""), *PAGING)),
    _endpoint("POST", "/accounts", add_account, "Add an account", ACCOUNT, status=201, errors=(409,),
              body=Obj((Prop("address", ADDRESS, True), Prop("password", PASSWORD, True),
                        Prop("admin", Bool("an administrator (default false)")), Prop("quota", QUOTA)))),
    _endpoint("GET", "/accounts/{address}", get_account, "One account", ACCOUNT),
    _endpoint("PATCH", "/accounts/{address}", update_account, "Change an account's password, quota or admin flag",
              ACCOUNT, body=Obj((Prop("password", PASSWORD), Prop("quota", QUOTA), Prop("admin", Bool()))),
              description="Any of the fields; all are checked before anything changes. A new password, or "
                          "taking the admin flag, ends the account's browser sessions."),
    _endpoint("DELETE", "/accounts/{address}", delete_account, "Delete an account and all its mail", None,
              status=204),
    _endpoint("GET", "/aliases", list_aliases, "List aliases", Obj((Prop("aliases", Arr(ALIAS), True),))),
    _endpoint("POST", "/aliases", add_alias, "Add a destination to an alias (or a new alias)", ALIAS, status=201,
              errors=(409,), body=Obj((
                  Prop("source", Str(auth.MAX_ADDRESS, 1, "an address of a local domain, or @domain for a "
                                     "catch-all"), True),
                  Prop("destination", Str(auth.MAX_ADDRESS, 1, "a local account or alias, or a remote "
                                          "address (forwarded with SRS)"), True)))),
    _endpoint("DELETE", "/aliases/{source}", delete_alias, "Delete an alias with all its destinations", None,
              status=204),
    _endpoint("GET", "/queue", list_queue, "List the outgoing queue, oldest first", _page(
        Prop("queue", Arr(QUEUED), True)), query=PAGING),
    _endpoint("GET", "/queue/{id}", get_queued, "One queued message with its header", Obj((
        Prop("message", QUEUED, True),
        Prop("header", Str(256 * 1024, description="the message's header (its body is not shown)"), True)))),
    _endpoint("POST", "/queue/{id}/retry", retry_queued, "Retry a queued message now", Obj((
        Prop("due", Int(0, 2**31, "how many recipients are now due"), True),))),
    _endpoint("DELETE", "/queue/{id}", delete_queued, "Delete a queued message (no bounce is sent)", None,
              status=204),
    _endpoint("GET", "/domains", list_domains, "The local domains with their DKIM keys", Obj((
        Prop("domains", Arr(Obj((Prop("domain", Str(253), True), Prop("dkim", Arr(DKIM_KEY), True)),
                                name="Domain")), True),))),
    _endpoint("GET", "/domains/{domain}/dns", check_dns, "Check the domain's DNS records (as `kartero dns`)", Obj((
        Prop("domain", Str(253), True),
        Prop("ok", Bool("every required record is right"), True),
        Prop("checks", Arr(DNS_CHECK), True))), errors=(503,),
        description="Live DNS lookups through [dns]: this may take a few seconds."),
    _endpoint("POST", "/domains/{domain}/dkim", generate_dkim, "Generate a DKIM key", DKIM_KEY, status=201,
              errors=(409,), body_required=False, body=Obj((
                  Prop("algorithm", Str(16, enum=("rsa", "ed25519"), description="default rsa")),
                  Prop("selector", Str(63, description="default: kartero (rsa) or kartero-ed (ed25519)")))),
              description="A selector that has a key already is refused (409): replacing a key breaks "
                          "signatures until the new record is published."),
    _endpoint("GET", "/stats", stats, "Server statistics", Obj((
        Prop("version", Str(40), True),
        Prop("started_at", TIME, True),
        Prop("uptime_s", Num("seconds since the server started"), True),
        Prop("connections", Map(Int(0, 2**31), "open sessions per service"), True),
        Prop("queue", Obj((Prop("messages", Int(0, 2**63 - 1), True),
                           Prop("recipients", Int(0, 2**63 - 1, "not yet delivered or failed"), True),
                           Prop("oldest_created_at", Nullable(TIME), True))), True),
        Prop("store", Obj((Prop("accounts", Int(0, 2**63 - 1), True), Prop("messages", Int(0, 2**63 - 1), True),
                           Prop("bytes", Int(0, 2**63 - 1, "the size of every account's mail"), True))), True),
    ))),
    _endpoint("GET", "/trace", trace, "Search the message trace", Obj((
        Prop("messages", Arr(TRACED), True),
        Prop("more", Bool("the limit cut the list: narrow the search"), True))),
        query=(Param("address", Str(auth.MAX_ADDRESS), "the sender, a recipient, an account reached or a "
                     "forwarding address (the domain in any case, U-label or A-label)", ""),
               Param("message_id", Str(998), "the Message-ID field, with or without angle brackets", ""),
               Param("id", Str(64), "one of Kartero's ids: a message's (250 ... accepted as ID) or a queue "
                     "entry's", ""),
               Param("since", TIME, "messages that arrived at or after this (0: no bound)", 0),
               Param("until", TIME, "... and before this (0: no bound)", 0),
               Param("limit", Int(1, MAX_TRACE_RESULTS), "how many messages at most", 50)),
        description="Each message with its path (received, stored, queued, each delivery attempt with the "
                    "remote reply, bounces and notices), newest first; nothing of the message's content is "
                    "kept. Every criterion given must match."),
    _endpoint("GET", "/openapi.json", openapi, "This document (OpenAPI 3.1)",
              Opaque("an OpenAPI 3.1 document"), access=Access.PUBLIC),
)  # fmt: skip

try:
    _VERSION = importlib.metadata.version("kartero")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
    _VERSION = "0"


# -- the machinery ------------------------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, endpoint.route, _handler(endpoint))
    app[_OPENAPI] = document(ENDPOINTS, _VERSION)
    app.middlewares.append(_json_errors)


def error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="kartero"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers, dumps=dumps)


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


def _handler(endpoint: Endpoint) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _dispatch(request, endpoint)

    return handle


async def _dispatch(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    """Credentials first (nothing of the request is read for a stranger), then the parameters and the
    body against the endpoint's description, then the handler; an OpError is its answer."""
    ctx = request.app[CONTEXT]
    who: auth.Principal | None = None
    if endpoint.access is not Access.PUBLIC:
        found = await caller(request, admin=endpoint.access is Access.ADMIN)
        if isinstance(found, web.Response):
            return found
        who = found
    try:
        path = parse_params(request.match_info, endpoint.path_params, "path")
        query = parse_params(request.query, endpoint.query, "query")
        body = await _body(request, endpoint)
    except Invalid as exc:
        return error(400, str(exc))
    except OpError as exc:
        return error(exc.status, exc.message)
    call = Call(request, ctx, who, {k: str(v) for k, v in path.items()}, query, body)
    try:
        value = await endpoint.handler(call)
    except OpError as exc:
        return error(exc.status, exc.message)
    if request.method not in _SAFE:
        log.info("%s", kv(event="http.api_change", client=request.remote or "", user=who.name if who else "",
                          method=request.method, path=request.path[:300], status=endpoint.status))  # fmt: skip
    if value is None:
        return web.Response(status=204)
    return web.json_response(value, status=endpoint.status, dumps=dumps)


async def _body(request: web.Request, endpoint: Endpoint) -> dict[str, object]:
    """The request's JSON object, checked against the endpoint's body (413, 415 as OpError)."""
    if endpoint.body is None:
        return {}
    if not request.body_exists:
        if not endpoint.body_required:
            return {}
        raise Invalid("this call takes a JSON object (Content-Type: application/json)")
    if request.content_type != "application/json":
        raise OpError(415, "the body must be JSON, sent as Content-Type: application/json")
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise OpError(413, f"the body is larger than {MAX_JSON_BYTES // 1024} KiB")
    data = bytearray()
    deadline = request.app[CONTEXT].body_deadline_s
    try:
        async with asyncio.timeout(deadline):  # a body trickled in (or never sent) holds nothing long
            while chunk := await request.content.read(MAX_JSON_BYTES + 1 - len(data)):
                data += chunk
                if len(data) > MAX_JSON_BYTES:  # chunked, so no Content-Length said it before
                    raise OpError(413, f"the body is larger than {MAX_JSON_BYTES // 1024} KiB")
    except TimeoutError:
        raise OpError(408, f"the body did not arrive within {deadline:g} s") from None
    return endpoint.body.check(parse_json(bytes(data)))


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors under /api/ (no such path, wrong method, body too large) as JSON too."""
    if not (request.path == "/api" or request.path.startswith("/api/")):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no such API path; the API is described at {PREFIX}/openapi.json"
        elif exc.status == 405:
            message = f"{request.method[:20]} is not allowed here (allowed: {exc.headers.get('Allow', '')})"
        elif exc.status == 413:
            message = f"the body is larger than {MAX_JSON_BYTES // 1024} KiB"
        else:
            message = exc.reason
        response = error(exc.status, message)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response

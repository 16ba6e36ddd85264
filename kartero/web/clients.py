"""What mail clients and sending MTAs fetch over HTTP: Thunderbird's autoconfig file, Outlook's
autodiscover answer, a user's Apple configuration profile, and the MTA-STS policy (RFC 8461).

Each answers only for the local domains: a domain is taken from the address the client names, else
from the Host header (`DOMAIN`, `autoconfig.DOMAIN`, `autodiscover.DOMAIN`); anything else is a 404.
No answer depends on whether a mailbox exists. The policy is served to `mta-sts.DOMAIN` alone (§3.3),
every other host gets a 404 for it. Names outside the local domains never get this far: the Host
check of `app.py` answers them 421.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from kartero.autoconfig import autodiscover as pox
from kartero.autoconfig.mobileconfig import profile
from kartero.autoconfig.mtasts import policy_text
from kartero.autoconfig.settings import ClientSettings, client_settings
from kartero.autoconfig.thunderbird import config_v11
from kartero.dns.names import DomainError, canonical_domain
from kartero.log import kv
from kartero.mail.address import AddressError, parse_mailbox
from kartero.web import auth
from kartero.web.app import TEMPLATES, see_other
from kartero.web.context import CONTEXT

log = logging.getLogger("kartero.web")

_XML = "application/xml"
_AUTOCONFIG_HOSTS = ("", "autoconfig.", "autodiscover.")


class _Published:
    """The client settings and the policy text, made from the config at the first request that needs
    them (building the application reads no config)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._settings: ClientSettings | None = None
        self._policy: str | None = None

    def settings(self) -> ClientSettings:
        if self._settings is None:
            self._settings = client_settings(self._app[CONTEXT].config)
        return self._settings

    def policy(self) -> str:
        if self._policy is None:
            config = self._app[CONTEXT].config
            self._policy = policy_text(config.hostname, config.mta_sts)
        return self._policy


PUBLISHED = web.AppKey("published", _Published)


def setup(app: web.Application) -> None:
    app[PUBLISHED] = _Published(app)
    app[TEMPLATES].globals["mail_settings"] = app[PUBLISHED].settings  # the user's page shows them
    # Thunderbird asks https://autoconfig.DOMAIN/mail/config-v1.1.xml?emailaddress=..., then the
    # well-known URL at DOMAIN itself.
    app.router.add_get("/mail/config-v1.1.xml", thunderbird)
    app.router.add_get("/.well-known/autoconfig/mail/config-v1.1.xml", thunderbird)
    # Outlook spells the path both ways.
    app.router.add_post("/autodiscover/autodiscover.xml", autodiscover)
    app.router.add_post("/Autodiscover/Autodiscover.xml", autodiscover)
    app.router.add_get("/.well-known/mta-sts.txt", mta_sts)
    app.router.add_get("/mail.mobileconfig", mobileconfig)


def _host(request: web.Request) -> str:
    """The Host header's name, lower case, without port or trailing dot."""
    name = request.host.strip().lower()
    if not name.startswith("[") and name.count(":") == 1:
        name = name.rpartition(":")[0]
    return name.rstrip(".")


def _local_domain(request: web.Request, address: str) -> str | None:
    """The local domain a request is about: the address's, when one is named; else the Host's."""
    domains = request.app[CONTEXT].config.domains
    if address:
        try:
            domain = canonical_domain(parse_mailbox(address).domain)
        except (AddressError, DomainError):
            return None
        return domain if domain in domains else None
    host = _host(request)
    for prefix in _AUTOCONFIG_HOSTS:
        if host.startswith(prefix) and host[len(prefix) :] in domains:
            return host[len(prefix) :]
    return None


async def thunderbird(request: web.Request) -> web.StreamResponse:
    domain = _local_domain(request, request.query.get("emailaddress", "").strip())
    if domain is None:
        raise web.HTTPNotFound(text="no mail domain of this server\n")
    body = config_v11(domain, request.app[PUBLISHED].settings())
    return web.Response(body=body, content_type=_XML, charset="utf-8")


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body if it is at most `limit` bytes (else None), arrived within the body deadline
    (else 408); never more than `limit + 1` bytes are read."""
    if request.content_length is not None and request.content_length > limit:
        return None
    deadline = request.app[CONTEXT].body_deadline_s
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline):
            while chunk := await request.content.read(limit + 1 - size):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    return None
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the request did not arrive within {deadline:g} s\n") from None
    return b"".join(chunks)


async def autodiscover(request: web.Request) -> web.StreamResponse:
    body = await _read_body(request, pox.MAX_REQUEST_BYTES)
    if body is None:
        raise web.HTTPRequestEntityTooLarge(max_size=pox.MAX_REQUEST_BYTES, actual_size=request.content_length or 0)
    try:
        asked = pox.parse_request(body)
    except pox.RequestError as exc:
        log.info("%s", kv(event="http.autodiscover_refused", client=request.remote or "", detail=str(exc)))
        raise web.HTTPBadRequest(text="not an autodiscover request\n") from None
    if asked.domain not in request.app[CONTEXT].config.domains:
        raise web.HTTPNotFound(text="no mail domain of this server\n")
    return web.Response(body=pox.response(asked, request.app[PUBLISHED].settings()), content_type=_XML, charset="utf-8")


async def mta_sts(request: web.Request) -> web.StreamResponse:
    host = _host(request)
    domain = host.removeprefix("mta-sts.")
    if domain == host or domain not in request.app[CONTEXT].config.domains:
        raise web.HTTPNotFound(text="the MTA-STS policy is served at mta-sts.DOMAIN of each local domain\n")
    return web.Response(text=request.app[PUBLISHED].policy(), content_type="text/plain")


async def mobileconfig(request: web.Request) -> web.StreamResponse:
    """The signed-in user's account as an Apple configuration profile (no password inside)."""
    who = await auth.principal(request)
    if who is None or who.account is None or who.via != "session":
        return see_other("/")
    address = who.account.address
    try:
        body = profile(address, request.app[PUBLISHED].settings())
    except ValueError:
        raise web.HTTPNotFound(text="this server offers no IMAP/POP3 and submission service to describe\n") from None
    domain = address.rpartition("@")[2]  # canonical A-labels: safe in a header
    return web.Response(body=body, content_type="application/x-apple-aspen-config",
                        headers={"Content-Disposition": f'attachment; filename="{domain}.mobileconfig"'})  # fmt: skip

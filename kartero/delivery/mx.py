"""Where mail for a domain goes: a configured route or relayhost, else its MX hosts (preference order,
random among equal preference), else the domain itself as an implicit MX (RFC 5321 §5.1)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from kartero.dns.resolver import MXRecords, NoRecords, Resolver, Temporary
from kartero.mail import replies
from kartero.mail.replies import Reply, make_printable


@dataclass(frozen=True, slots=True)
class Hop:
    host: str  # name for logs and TLS; an IP address when configured so
    port: int


@dataclass(frozen=True, slots=True)
class Route:
    hops: tuple[Hop, ...]


@dataclass(frozen=True, slots=True)
class NoRoute:
    """No way to deliver: a permanent `reply` for a null MX or a domain that does not exist."""

    reply: Reply
    is_nxdomain: bool = False


async def find_route(domain: str, resolver: Resolver, port: int, overrides: dict[str, Hop]) -> Route | NoRoute:
    if domain in overrides:
        return Route((overrides[domain],))
    if "*" in overrides:  # the relayhost
        return Route((overrides["*"],))
    answer = await resolver.mx(domain)
    if isinstance(answer, Temporary):
        return NoRoute(replies.DNS_TEMPORARY.with_text(make_printable(answer.reason)))
    if isinstance(answer, MXRecords):
        if answer.is_null:
            return NoRoute(replies.NULL_MX.with_text(f"{make_printable(domain)} accepts no mail (null MX, RFC 7505)"))
        ordered: list[Hop] = []
        preferences = sorted({r.preference for r in answer.records})
        for preference in preferences:
            same = [r for r in answer.records if r.preference == preference and r.host]
            random.shuffle(same)
            ordered.extend(Hop(r.host, port) for r in same)
        if ordered:
            return Route(tuple(ordered))
    assert isinstance(answer, (NoRecords, MXRecords))
    if isinstance(answer, NoRecords) and answer.is_nxdomain:
        not_found = replies.DOMAIN_NOT_FOUND.with_text(f"Domain {make_printable(domain)} does not exist")
        return NoRoute(not_found, is_nxdomain=True)
    # No MX: the implicit MX is the domain's own address records (checked when connecting).
    return Route((Hop(domain, port),))

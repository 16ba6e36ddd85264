"""DNS lookups through dnspython, as typed answers the rest of Kartero can decide on.

Which nameservers: `[dns] nameservers` ("host:port"), else the system resolver. Every lookup has a
deadline. Answers are values, not exceptions: records, a definite "no such records" (NXDOMAIN or NODATA),
or a temporary failure (SERVFAIL, timeout, refused) that the caller should retry later.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from kartero import metrics


@dataclass(frozen=True, slots=True)
class MXRecord:
    preference: int
    host: str  # without the trailing dot; "" for the null MX "." (RFC 7505)


@dataclass(frozen=True, slots=True)
class Records:
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MXRecords:
    records: tuple[MXRecord, ...]

    @property
    def is_null(self) -> bool:
        """RFC 7505: a single MX of preference 0 and host "." says the domain takes no mail."""
        return len(self.records) == 1 and self.records[0].host == ""


@dataclass(frozen=True, slots=True)
class NoRecords:
    is_nxdomain: bool


@dataclass(frozen=True, slots=True)
class Temporary:
    reason: str


class _TimedResolver(dns.resolver.Resolver):
    """dnspython's resolver, each lookup counted in the metrics (SPF, DKIM, DMARC and DNSBLs call it)."""

    def resolve(self, qname: Any, rdtype: Any = dns.rdatatype.A, *args: Any, **kwargs: Any) -> dns.resolver.Answer:
        started = time.monotonic()
        result = "temporary"
        try:
            answer = super().resolve(qname, rdtype, *args, **kwargs)
            result = "answer"
            return answer
        except dns.resolver.NXDOMAIN:
            result = "nxdomain"
            raise
        except dns.resolver.NoAnswer:
            result = "nodata"
            raise
        finally:
            metrics.dns_looked_up(_type_name(rdtype), result, time.monotonic() - started)


def _type_name(rdtype: object) -> str:
    """"MX" for "MX", "mx", dns.rdatatype.MX or 15; "?" for what names no type."""
    try:
        return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))  # type: ignore[arg-type]
    except Exception:
        return "?"


def blocking_resolver(nameservers: Sequence[tuple[str, int]] = (), *, timeout_s: float = 10.0) -> dns.resolver.Resolver:
    """A dnspython resolver with the same configuration, for libraries that look up synchronously in a
    worker thread (SPF, DKIM verification)."""
    resolver: dns.resolver.Resolver
    if nameservers:
        resolver = _TimedResolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers]
    else:
        resolver = _TimedResolver()
    resolver.lifetime = timeout_s
    resolver.timeout = min(timeout_s, 3.0)
    return resolver


class Resolver:
    def __init__(self, nameservers: Sequence[tuple[str, int]] = (), *, timeout_s: float = 10.0) -> None:
        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers]
        else:
            self._resolver = dns.asyncresolver.Resolver()
        self._resolver.lifetime = timeout_s
        self._resolver.timeout = min(timeout_s, 3.0)

    async def _query(self, name: str, rdtype: str) -> list[object] | NoRecords | Temporary:
        started = time.monotonic()
        result = await self._lookup(name, rdtype)
        outcome = "answer" if isinstance(result, list) else "temporary" if isinstance(result, Temporary) else (
            "nxdomain" if result.is_nxdomain else "nodata")  # fmt: skip
        metrics.dns_looked_up(rdtype, outcome, time.monotonic() - started)
        return result

    async def _lookup(self, name: str, rdtype: str) -> list[object] | NoRecords | Temporary:
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return NoRecords(is_nxdomain=True)
        except dns.resolver.NoAnswer:
            return NoRecords(is_nxdomain=False)
        except dns.resolver.NoNameservers as exc:
            return Temporary(f"no nameserver answered for {name} {rdtype}: {exc}")
        except dns.exception.Timeout:
            return Temporary(f"DNS timeout for {name} {rdtype}")
        except dns.exception.DNSException as exc:
            return Temporary(f"DNS error for {name} {rdtype}: {exc}")
        return list(answer)

    async def mx(self, domain: str) -> MXRecords | NoRecords | Temporary:
        result = await self._query(domain, "MX")
        if isinstance(result, (NoRecords, Temporary)):
            return result
        records = tuple(
            sorted(
                (MXRecord(int(r.preference), str(r.exchange).rstrip(".").lower()) for r in result),  # type: ignore[attr-defined]
                key=lambda r: r.preference,
            )
        )
        return MXRecords(records)

    async def addresses(self, host: str) -> Records | NoRecords | Temporary:
        """IPv4 then IPv6 addresses of a host; NoRecords only when it has neither."""
        found: list[str] = []
        temporary: Temporary | None = None
        nxdomain = False
        for rdtype in ("A", "AAAA"):
            result = await self._query(host, rdtype)
            if isinstance(result, Temporary):
                temporary = result
            elif isinstance(result, NoRecords):
                nxdomain = nxdomain or result.is_nxdomain
            else:
                found.extend(str(r) for r in result)
        if found:
            return Records(tuple(found))
        if temporary is not None:
            return temporary
        return NoRecords(is_nxdomain=nxdomain)

    async def client_name(self, address: str) -> ClientName:
        """Forward-confirmed reverse DNS of `address` (the PTR, then each name's A/AAAA). A loopback
        address is "localhost" without a lookup, as every system's hosts file says (RFC 6761 §6.3)."""
        try:
            if ipaddress.ip_address(address).is_loopback:
                return ClientName("localhost", "localhost", "OK")
            reverse = dns.reversename.from_address(address).to_text()
        except (ValueError, dns.exception.DNSException):
            return ClientName("unknown", "", "FAIL")
        result = await self._query(reverse, "PTR")
        if isinstance(result, Temporary):
            return ClientName("unknown", "", "TEMP")
        if isinstance(result, NoRecords) or not result:
            return ClientName("unknown", "", "FAIL")
        names = [str(r).rstrip(".").lower() for r in result][:MAX_PTR_NAMES]
        temporary = False
        wanted = ipaddress.ip_address(address)
        for name in names:
            found = await self.addresses(name)
            if isinstance(found, Temporary):
                temporary = True
            elif isinstance(found, Records) and any(_same_address(a, wanted) for a in found.values):
                return ClientName(name, name, "OK")
        return ClientName("unknown", names[0], "TEMP" if temporary else "FORGED")

    async def txt(self, name: str) -> Records | NoRecords | Temporary:
        result = await self._query(name, "TXT")
        if isinstance(result, (NoRecords, Temporary)):
            return result
        return Records(tuple(b"".join(r.strings).decode("utf-8", "replace") for r in result))  # type: ignore[attr-defined]


# Of a client's PTR names, this many are checked for an address that leads back (Postfix checks all; a
# hostile zone could list hundreds, each a lookup).
MAX_PTR_NAMES = 4


@dataclass(frozen=True, slots=True)
class ClientName:
    """The verified reverse name of a client address (Postfix's {client_name}, {client_ptr},
    {client_resolve}): `name` is "unknown" unless a PTR name's addresses include the client's."""

    name: str
    ptr: str
    status: str  # OK, FAIL (no PTR), FORGED (no PTR name leads back), TEMP (a lookup failed for now)


def _same_address(text: str, wanted: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text) == wanted
    except ValueError:
        return False

"""SPF (RFC 7208) on pyspf, looking up through Kartero's configured resolver.

pyspf evaluates the whole record language (include, a, mx, ptr, ip4, ip6, exists, redirect, exp,
macros) and enforces the limits of §4.6.4 (10 DNS-querying terms, 2 void lookups). Its only hook for
DNS is the module-level `spf.DNSLookup`; `use_resolver` points it at a dnspython resolver built from
`[dns]`, once per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.resolver
import spf as pyspf

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")


@dataclass(frozen=True, slots=True)
class SPFResult:
    result: str  # one of RESULTS
    identity: str  # "mailfrom" or "helo" (RFC 8601 ptype smtp)
    domain: str  # the domain that was checked
    sender: str  # what was checked: the MAIL FROM address, or postmaster@HELO
    explanation: str


def use_resolver(resolver: dns.resolver.Resolver) -> None:
    """Make pyspf look up through `resolver` (call before the first check)."""

    def lookup(name: str, qtype: str, tcpfallback: bool = True, timeout: float = 30) -> list[tuple[Any, Any]]:
        try:
            answer = resolver.resolve(name, qtype, search=False, lifetime=min(timeout, resolver.lifetime))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise pyspf.TempError(f"DNS {exc}") from None
        except dns.exception.DNSException as exc:
            raise pyspf.TempError(f"DNS {exc}") from None
        found: list[tuple[Any, Any]] = []
        for rdata in answer:
            key = (name, qtype)
            if qtype in ("A", "AAAA"):
                found.append((key, rdata.address))
            elif qtype == "MX":
                found.append((key, (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                found.append((key, rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                found.append((key, rdata.strings))
        return found

    pyspf.DNSLookup = lookup


def check(client_ip: str, mail_from: str, helo: str, *, timeout_s: float = 20.0) -> SPFResult:
    """SPF for the MAIL FROM identity, or for HELO when the sender is null (RFC 7208 §2.4)."""
    if mail_from:
        sender, identity = mail_from, "mailfrom"
    else:
        sender, identity = f"postmaster@{helo}", "helo"
    domain = sender.rpartition("@")[2]
    try:
        query = pyspf.query(i=client_ip, s=sender, h=helo, timeout=timeout_s, querytime=timeout_s)
        result, _code, explanation = query.check()
    except (pyspf.TempError, dns.exception.DNSException) as exc:
        return SPFResult("temperror", identity, domain, sender, str(exc))
    except Exception as exc:  # pyspf raises on some malformed input (e.g. an odd HELO)
        return SPFResult("permerror", identity, domain, sender, f"{type(exc).__name__}: {exc}")
    if result not in RESULTS:
        result = "permerror"
    return SPFResult(result, identity, domain, sender, explanation or "")

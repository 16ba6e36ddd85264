"""DMARC (RFC 7489): the policy of the From: domain, and whether SPF or DKIM speaks for that domain.

The record is `_dmarc.<From domain>`, else `_dmarc.<organisational domain>` (the registrable domain
from the Public Suffix List, `publicsuffixlist`). SPF counts when it passed for a domain aligned with
the From: domain; DKIM counts when a valid signature's d= is aligned. Relaxed alignment compares
organisational domains, strict compares the names. A failing message gets the policy (`sp` for a
subdomain that has no record of its own); with `pct` below 100 only that share gets it and the rest
the next milder policy (§6.6.4).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

POLICIES = ("none", "quarantine", "reject")


class LookupFailed(Exception):
    """A DNS failure that is not "no such record": DMARC answers temperror."""


# `lookup(name)` returns the TXT strings at name ([] when there are none) or raises LookupFailed.
TXTLookup = Callable[[str], list[str]]


@dataclass(frozen=True, slots=True)
class DMARCRecord:
    domain: str  # where the record was found
    p: str
    sp: str
    pct: int
    adkim: str  # "r" or "s"
    aspf: str


@dataclass(frozen=True, slots=True)
class DMARCResult:
    result: str  # pass, fail, none, temperror, permerror
    from_domain: str
    disposition: str  # what to do: none, quarantine or reject
    record: DMARCRecord | None = None
    reason: str = ""


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    return _psl().privatesuffix(domain.lower().rstrip(".")) or domain.lower().rstrip(".")


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    a, b = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


def parse_record(text: str, domain: str) -> DMARCRecord | None:
    """A DMARC record, or None when it is not one (or has no valid p=, §6.6.3)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    if tags.get("v") != "DMARC1":
        return None
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        return None
    sp = tags.get("sp", "").lower()
    try:
        pct = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    return DMARCRecord(domain, p, sp if sp in POLICIES else p, pct, adkim, aspf)


def find_record(from_domain: str, lookup: TXTLookup) -> DMARCRecord | None:
    """Raises LookupFailed on a DNS failure."""
    candidates = [from_domain]
    org = organizational_domain(from_domain)
    if org != from_domain:
        candidates.append(org)
    for domain in candidates:
        records = [r for r in lookup(f"_dmarc.{domain}") if r.lstrip().startswith("v=DMARC1")]
        if len(records) == 1:
            return parse_record(records[0], domain)
        if len(records) > 1:
            return None  # §6.6.3: several records mean none
    return None


def evaluate(
    from_domain: str,
    spf_result: str,
    spf_domain: str,
    dkim_pass_domains: Iterable[str],
    lookup: TXTLookup,
    *,
    sample: Callable[[], float] = random.random,
) -> DMARCResult:
    from_domain = from_domain.lower().rstrip(".")
    try:
        record = find_record(from_domain, lookup)
    except LookupFailed as exc:
        return DMARCResult("temperror", from_domain, "none", reason=str(exc))
    if record is None:
        return DMARCResult("none", from_domain, "none")
    spf_ok = spf_result == "pass" and aligned(spf_domain, from_domain, record.aspf)
    dkim_ok = any(aligned(d, from_domain, record.adkim) for d in dkim_pass_domains)
    if spf_ok or dkim_ok:
        return DMARCResult("pass", from_domain, "none", record)
    policy = record.sp if record.domain != from_domain else record.p
    if record.pct < 100 and sample() * 100 >= record.pct:
        policy = {"reject": "quarantine", "quarantine": "none", "none": "none"}[policy]
    return DMARCResult("fail", from_domain, policy, record, "neither SPF nor DKIM aligned with the From: domain")

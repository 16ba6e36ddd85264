"""`kartero dns DOMAIN`: the DNS records a mail domain needs, each checked against live DNS.

Each check says ok, missing or wrong, and for the last two the exact record to publish. Required: MX
pointing at this host, an address for the host, one SPF record that ends in -all or ~all, the record of
every DKIM key Kartero signs with, a DMARC record. Recommended (reported, not required): MTA-STS and
TLS-RPT records, and a PTR record for the host's addresses that names the host (many receivers refuse
mail from addresses without one).
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.resolver
import dns.reversename

from kartero.mailauth.dkim import DKIMKey
from kartero.mailauth.dmarc import parse_record


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # MX, A, SPF, DKIM s1, DMARC, MTA-STS, TLS-RPT, PTR
    status: str  # ok, missing, wrong, error
    detail: str  # what was found, or what to publish
    required: bool = True
    record: str = ""  # the record Kartero expects, in zone-file syntax ("" where none can be named)


class _Lookup:
    def __init__(self, resolver: dns.resolver.Resolver) -> None:
        self.resolver = resolver

    def records(self, name: str, rdtype: str) -> list[str] | None:
        """Record texts (TXT joined), [] when there are none, None on a DNS failure."""
        try:
            answer = self.resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException:
            return None
        if rdtype == "TXT":
            return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        return [r.to_text() for r in answer]


def check_domain(domain: str, hostname: str, keys: list[DKIMKey], resolver: dns.resolver.Resolver) -> list[Check]:
    look = _Lookup(resolver)
    host = hostname.rstrip(".")
    checks = [_mx(look, domain, host), _address(look, host), _spf(look, domain)]
    checks += [_dkim(look, key) for key in keys] or [
        Check("DKIM", "missing", f"no signing key yet: run `kartero dkim keygen {domain}` and publish its record")
    ]
    checks += [_dmarc(look, domain), _mta_sts(look, domain), _tls_rpt(look, domain), *_ptr(look, host)]
    return checks


def _failed(name: str, what: str, required: bool = True) -> Check:
    return Check(name, "error", f"DNS lookup of {what} failed (try again; is [dns] right?)", required)


def _mx(look: _Lookup, domain: str, host: str) -> Check:
    fix = f"{domain}. IN MX 10 {host}."
    found = look.records(domain, "MX")
    if found is None:
        return _failed("MX", domain)
    targets = [r.split()[-1].rstrip(".").lower() for r in found]
    if host.lower() in targets:
        return Check("MX", "ok", " ".join(found), record=fix)
    if not found:
        return Check("MX", "missing", f"add: {fix}", record=fix)
    return Check("MX", "wrong", f"found MX {', '.join(found)}, none is {host}: add {fix}", record=fix)


def _address(look: _Lookup, host: str) -> Check:
    v4, v6 = look.records(host, "A"), look.records(host, "AAAA")
    if v4 is None or v6 is None:
        return _failed("A/AAAA", host)
    if v4 or v6:
        return Check("A/AAAA", "ok", f"{host} has {', '.join((v4 or []) + (v6 or []))}")
    return Check("A/AAAA", "missing", f"add: {host}. IN A <this server's public IPv4 address> (and AAAA for IPv6)",
                 record=f"{host}. IN A <this server's public IPv4 address>")  # fmt: skip


def _spf(look: _Lookup, domain: str) -> Check:
    fix = f'{domain}. IN TXT "v=spf1 mx -all"'
    found = look.records(domain, "TXT")
    if found is None:
        return _failed("SPF", domain)
    spf = [r for r in found if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]
    if not spf:
        return Check("SPF", "missing", f"add: {fix}", record=fix)
    if len(spf) > 1:
        return Check("SPF", "wrong", f"{len(spf)} SPF records (receivers see a permerror): keep one, e.g. {fix}",
                     record=fix)  # fmt: skip
    terms = spf[0].lower().split()
    if terms[-1] in ("-all", "~all") or any(t.startswith("redirect=") for t in terms):
        return Check("SPF", "ok", spf[0], record=fix)
    return Check("SPF", "wrong", f'"{spf[0]}" does not end in -all or ~all: publish {fix}', record=fix)


def _dkim(look: _Lookup, key: DKIMKey) -> Check:
    name = f"DKIM {key.selector}"
    expected = key.dns_record()
    fix = f'{key.record_name}. IN TXT "{expected}"'
    found = look.records(key.record_name, "TXT")
    if found is None:
        return _failed(name, key.record_name)
    if not found:
        return Check(name, "missing", f"add: {fix}", record=fix)
    want = _tags(expected)
    if any(_tags(r).get("p") == want["p"] for r in found):
        return Check(name, "ok", f"{key.record_name} publishes the {key.algorithm} key", record=fix)
    return Check(name, "wrong", f"{key.record_name} publishes another key: replace it with {fix}", record=fix)


def _dmarc(look: _Lookup, domain: str) -> Check:
    fix = f'_dmarc.{domain}. IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"'
    found = look.records(f"_dmarc.{domain}", "TXT")
    if found is None:
        return _failed("DMARC", f"_dmarc.{domain}")
    records = [r for r in found if r.lstrip().startswith("v=DMARC1")]
    if not records:
        return Check("DMARC", "missing", f"add: {fix}", record=fix)
    if len(records) > 1:
        return Check("DMARC", "wrong", f"{len(records)} DMARC records (receivers ignore all): keep one, e.g. {fix}",
                     record=fix)  # fmt: skip
    if parse_record(records[0], domain) is None:
        return Check("DMARC", "wrong", f'"{records[0]}" has no valid p=: publish {fix}', record=fix)
    return Check("DMARC", "ok", records[0], record=fix)


def _mta_sts(look: _Lookup, domain: str) -> Check:
    found = look.records(f"_mta-sts.{domain}", "TXT")
    if found is None:
        return _failed("MTA-STS", f"_mta-sts.{domain}", required=False)
    fix = f'_mta-sts.{domain}. IN TXT "v=STSv1; id=1"'
    if any(r.startswith("v=STSv1") for r in found):
        return Check("MTA-STS", "ok", found[0], required=False, record=fix)
    return Check("MTA-STS", "missing", f"recommended: {fix} and a policy at "
                 f"https://mta-sts.{domain}/.well-known/mta-sts.txt (RFC 8461)", required=False,
                 record=fix)  # fmt: skip


def _tls_rpt(look: _Lookup, domain: str) -> Check:
    found = look.records(f"_smtp._tls.{domain}", "TXT")
    if found is None:
        return _failed("TLS-RPT", f"_smtp._tls.{domain}", required=False)
    fix = f'_smtp._tls.{domain}. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@{domain}"'
    if any(r.startswith("v=TLSRPTv1") for r in found):
        return Check("TLS-RPT", "ok", found[0], required=False, record=fix)
    return Check("TLS-RPT", "missing", f"recommended: {fix}", required=False, record=fix)


def _ptr(look: _Lookup, host: str) -> list[Check]:
    addresses = (look.records(host, "A") or []) + (look.records(host, "AAAA") or [])
    checks = []
    for address in addresses:
        name = dns.reversename.from_address(address).to_text()
        found = look.records(name, "PTR")
        if found is None:
            checks.append(_failed("PTR", name, required=False))
        elif any(r.rstrip(".").lower() == host.lower() for r in found):
            checks.append(Check("PTR", "ok", f"{address} -> {host}", required=False, record=f"{name} IN PTR {host}."))
        else:
            got = ", ".join(found) or "nothing"
            checks.append(Check("PTR", "wrong" if found else "missing",
                                f"{address} points to {got}; ask the address's provider for {name} IN PTR {host}.",
                                required=False, record=f"{name} IN PTR {host}."))  # fmt: skip
    return checks


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = "".join(value.split())
    return tags

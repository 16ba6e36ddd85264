"""`kartero dns DOMAIN`: the DNS records a mail domain needs, each checked against live DNS.

Each check says ok, missing or wrong, and for the last two the exact record to publish. Required: MX
pointing at this host, an address for the host, one SPF record that ends in -all or ~all, the record of
every DKIM key Kartero signs with, a DMARC record. Recommended (reported, not required): the MTA-STS
record with the id of the policy served now and an address for `mta-sts.DOMAIN`, a TLS-RPT record, the
`autoconfig.` and `autodiscover.` names of the domain pointing here, the RFC 6186 SRV records of the
client services (what `ClientRecords` lists; kartero/autoconfig/records.py makes it from the config),
and a PTR record for the host's addresses that names the host (many receivers refuse mail from
addresses without one).
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


@dataclass(frozen=True, slots=True)
class Srv:
    service: str  # imaps, imap, pop3s, pop3, submissions, submission (RFC 6186 §3)
    priority: int
    port: int  # 0: not offered here (§3.4: "0 0 0 .")


@dataclass(frozen=True, slots=True)
class ClientRecords:
    """What the domain publishes for the server's HTTP side and mail clients."""

    mta_sts_id: str  # the id of the MTA-STS policy served now
    tls_rpt: str  # the TLS-RPT rua ("mailto:...")
    srv: tuple[Srv, ...]


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


def check_domain(domain: str, hostname: str, keys: list[DKIMKey], resolver: dns.resolver.Resolver,
                 clients: ClientRecords) -> list[Check]:  # fmt: skip
    look = _Lookup(resolver)
    host = hostname.rstrip(".")
    checks = [_mx(look, domain, host), _address(look, host), _spf(look, domain)]
    checks += [_dkim(look, key) for key in keys] or [
        Check("DKIM", "missing", f"no signing key yet: run `kartero dkim keygen {domain}` and publish its record")
    ]
    here = set((look.records(host, "A") or []) + (look.records(host, "AAAA") or []))
    checks += [_dmarc(look, domain), _mta_sts(look, domain, clients.mta_sts_id),
               _web_host(look, "MTA-STS web", f"mta-sts.{domain}", host, here), _tls_rpt(look, domain, clients.tls_rpt),
               _web_host(look, "autoconfig", f"autoconfig.{domain}", host, here),
               _web_host(look, "autodiscover", f"autodiscover.{domain}", host, here),
               *(_srv(look, domain, host, srv) for srv in clients.srv), *_ptr(look, host)]  # fmt: skip
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


def _mta_sts(look: _Lookup, domain: str, policy_id: str) -> Check:
    name = f"_mta-sts.{domain}"
    found = look.records(name, "TXT")
    if found is None:
        return _failed("MTA-STS", name, required=False)
    fix = f'{name}. IN TXT "v=STSv1; id={policy_id}"'
    records = [r for r in found if r.startswith("v=STSv1")]
    if not records:
        return Check("MTA-STS", "missing", f"recommended: {fix} (the policy is served at "
                     f"https://mta-sts.{domain}/.well-known/mta-sts.txt, RFC 8461)", required=False,
                     record=fix)  # fmt: skip
    if len(records) > 1:
        return Check("MTA-STS", "wrong", f"{len(records)} MTA-STS records (senders ignore all, RFC 8461 §3.1): "
                     f"keep one, {fix}", required=False, record=fix)  # fmt: skip
    if _tags(records[0]).get("id") == policy_id:
        return Check("MTA-STS", "ok", records[0], required=False, record=fix)
    return Check("MTA-STS", "wrong", f'"{records[0]}" is not the id of the policy served now: publish {fix} '
                 "(senders fetch the policy again when the id changes)", required=False, record=fix)  # fmt: skip


def _web_host(look: _Lookup, label: str, name: str, host: str, here: set[str]) -> Check:
    """A name the HTTP side answers for (MTA-STS policy, autoconfiguration): it must lead here."""
    fix = f"{name}. IN CNAME {host}."
    found = (look.records(name, "A"), look.records(name, "AAAA"))
    if found[0] is None or found[1] is None:
        return _failed(label, name, required=False)
    addresses = found[0] + found[1]
    if not addresses:
        return Check(label, "missing", f"recommended: {fix} (and a certificate for {name} on the https "
                     "listener)", required=False, record=fix)  # fmt: skip
    if here.intersection(addresses):
        return Check(label, "ok", f"{name} has {', '.join(addresses)}", required=False, record=fix)
    return Check(label, "wrong", f"{name} has {', '.join(addresses)}, none of them {host}'s: publish {fix}",
                 required=False, record=fix)  # fmt: skip


def _tls_rpt(look: _Lookup, domain: str, rua: str) -> Check:
    found = look.records(f"_smtp._tls.{domain}", "TXT")
    if found is None:
        return _failed("TLS-RPT", f"_smtp._tls.{domain}", required=False)
    fix = f'_smtp._tls.{domain}. IN TXT "v=TLSRPTv1; rua={rua}"'
    if any(r.startswith("v=TLSRPTv1") for r in found):
        return Check("TLS-RPT", "ok", found[0], required=False, record=fix)
    return Check("TLS-RPT", "missing", f"recommended: {fix}", required=False, record=fix)


def _srv(look: _Lookup, domain: str, host: str, srv: Srv) -> Check:
    """RFC 6186 §3: the service's host and port, or `0 0 0 .` for a service not offered (§3.4)."""
    label, name = f"SRV {srv.service}", f"_{srv.service}._tcp.{domain}"
    target = host.lower() if srv.port else ""
    value = f"{srv.priority} 1 {srv.port} {host}." if srv.port else "0 0 0 ."
    fix = f"{name}. IN SRV {value}"
    found = look.records(name, "SRV")
    if found is None:
        return _failed(label, name, required=False)
    if not found:
        return Check(label, "missing", f"recommended: {fix}", required=False, record=fix)
    for record in found:
        parts = record.split()
        if len(parts) == 4 and parts[2] == str(srv.port) and parts[3].rstrip(".").lower() == target:
            return Check(label, "ok", f"{name} {record}", required=False, record=fix)
    what = f"{srv.service} is not offered here" if not srv.port else f"{srv.service} is at {host} port {srv.port}"
    return Check(label, "wrong", f"found {', '.join(found)}, but {what}: publish {fix}", required=False,
                 record=fix)  # fmt: skip


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

"""What the MX listener checks on every message: SPF, DKIM, DMARC, and the Authentication-Results
header (RFC 8601) that records them for the user's mail client and filters.

Blocking (DNS lookups, RSA verification): run it in a worker thread. Decisions:
- DMARC fail with p=reject (after pct) -> refuse at end of DATA with `550 5.7.1`;
- DMARC fail with p=quarantine -> deliver to the recipients' Junk folder;
- anything else -> deliver to INBOX, labelled.
Authentication-Results fields claiming our host name that arrive with the message are removed
(RFC 8601 §5): only ours may speak for this server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from email.utils import getaddresses

import dns.exception
import dns.resolver

from kartero.log import kv
from kartero.mailauth import dkim as dkim_module
from kartero.mailauth import spf as spf_module
from kartero.mailauth.dkim import DKIMVerdict, KeyLookupFailed
from kartero.mailauth.dmarc import DMARCResult, LookupFailed, evaluate
from kartero.mailauth.spf import SPFResult
from kartero.mime.headers import find_body_start, parse_header_block, remove_fields

log = logging.getLogger("kartero.mailauth")


@dataclass(frozen=True, slots=True)
class Checks:
    spf: bool = True
    dkim: bool = True
    dmarc: bool = True


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # "inbox", "junk" or "reject"
    header: bytes  # our Authentication-Results field, to go before the message (forged ones removed)
    reason: str = ""
    spf: SPFResult | None = None
    dkim: list[DKIMVerdict] = field(default_factory=list)
    dmarc: DMARCResult | None = None
    summary: str = ""  # the results on one line (`spf=pass dkim=pass:example.org dmarc=pass`), for the trace


class InboundChecker:
    def __init__(self, hostname: str, resolver: dns.resolver.Resolver, checks: Checks = Checks()) -> None:
        self.hostname = hostname
        self.resolver = resolver
        self.checks = checks
        spf_module.use_resolver(resolver)

    def _txt(self, name: str) -> list[str]:
        try:
            answer = self.resolver.resolve(name, "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"DNS error for {name}: {exc}") from None
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    def _dkim_key(self, name: str) -> bytes | None:
        try:
            records = self._txt(name)
        except LookupFailed as exc:
            raise KeyLookupFailed(str(exc)) from None
        return records[0].encode() if records else None

    def strip_forged(self, data: bytes) -> bytes:
        """The message (or its header block alone) without Authentication-Results fields that claim to
        be ours."""
        return remove_fields(data, self._is_forged)

    def check(self, client_ip: str, helo: str, mail_from: str, data: bytes) -> Verdict:
        data = self.strip_forged(data)
        spf = spf_module.check(client_ip, mail_from, helo) if self.checks.spf else None
        signatures = dkim_module.verify(data, self._dkim_key) if self.checks.dkim else []
        from_domain = _from_domain(data)
        dmarc = None
        if self.checks.dmarc and from_domain:
            passing = [v.domain for v in signatures if v.result == "pass"]
            dmarc = evaluate(from_domain, spf.result if spf else "none", spf.domain if spf else "", passing,
                             self._txt)  # fmt: skip
        action, reason = "inbox", ""
        if dmarc is not None and dmarc.result == "fail" and dmarc.disposition in ("reject", "quarantine"):
            action = "reject" if dmarc.disposition == "reject" else "junk"
            reason = f"DMARC policy of {dmarc.record.domain if dmarc.record else from_domain}: {dmarc.disposition}"
        header = self._header(spf, signatures, dmarc, from_domain)
        summary = " ".join([*([f"spf={spf.result}"] if spf else []),
                            *(f"dkim={v.result}:{v.domain or 'unknown'}" for v in signatures),
                            *(["dkim=none"] if self.checks.dkim and not signatures else []),
                            *([f"dmarc={dmarc.result}"] if dmarc else [])])  # fmt: skip
        log.info("%s", kv(event="mailauth.checked", client=client_ip, mail_from=f"<{mail_from}>",
                          spf=spf.result if spf else None,
                          dkim=",".join(f"{v.result}:{v.domain}" for v in signatures) or "none",
                          dmarc=dmarc.result if dmarc else None, header_from=from_domain or None,
                          action=action))  # fmt: skip
        return Verdict(action, header, reason, spf, signatures, dmarc, summary)

    def _is_forged(self, name: bytes, value: bytes) -> bool:
        if name != b"authentication-results":
            return False
        authserv_id = value.split(b";", 1)[0].strip().split()[0] if value.strip() else b""
        return authserv_id.decode("ascii", "replace").lower() == self.hostname.lower()

    def _header(self, spf: SPFResult | None, signatures: list[DKIMVerdict], dmarc: DMARCResult | None,
                from_domain: str) -> bytes:  # fmt: skip
        """`Authentication-Results: host; dkim=...; spf=...; dmarc=...` (RFC 8601 §2.2), folded."""
        results = []
        for v in signatures:
            reason = f' reason="{_quote(v.reason)}"' if v.reason and v.result != "pass" else ""
            results.append(
                f"dkim={v.result}{reason} header.d={v.domain or 'unknown'} header.s={v.selector or 'unknown'}"
                f" header.b={v.signature_prefix or 'none'}"
            )
        if self.checks.dkim and not signatures:
            results.append("dkim=none")
        if spf is not None:
            prop = "smtp.mailfrom" if spf.identity == "mailfrom" else "smtp.helo"
            value = spf.sender if spf.identity == "mailfrom" else spf.domain
            results.append(f"spf={spf.result} {prop}={_value(value)}")
        if dmarc is not None:
            policy = f" (p={dmarc.record.p} dis={dmarc.disposition})" if dmarc.record else ""
            results.append(f"dmarc={dmarc.result}{policy} header.from={from_domain}")
        if not results:
            return f"Authentication-Results: {self.hostname}; none\r\n".encode()
        return (f"Authentication-Results: {self.hostname};\r\n\t" + ";\r\n\t".join(results) + "\r\n").encode()


def _from_domain(data: bytes) -> str:
    """The domain of the single From: address (RFC 7489 §6.6.1); "" when there is none or several."""
    header = parse_header_block(data[: find_body_start(data)[0]])
    values = [v.decode("utf-8", "replace") for v in header.get_all("from")]
    addresses = [a for _, a in getaddresses(values) if a]
    domains = {a.rpartition("@")[2].lower().rstrip(".") for a in addresses if "@" in a}
    return domains.pop() if len(domains) == 1 and len(values) == 1 else ""


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')[:120]


def _value(text: str) -> str:
    """A property value: a bare token when it can be, else a quoted string (RFC 8601 §2.2)."""
    if text and all(c.isalnum() or c in "!#$%&'*+-/=?^_`{|}~.@" for c in text) and text.isascii():
        return text
    return f'"{_quote(text)}"'

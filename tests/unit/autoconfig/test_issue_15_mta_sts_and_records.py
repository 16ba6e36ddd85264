"""Issue 15: the MTA-STS policy served to mta-sts.DOMAIN (RFC 8461 §3.2) and its id, and the DNS records
`kartero dns` checks for it, TLS-RPT and the RFC 6186 SRV records."""

from __future__ import annotations

import re
from dataclasses import dataclass

import dns.resolver

from kartero.autoconfig.mtasts import policy_id, policy_text
from kartero.autoconfig.records import client_records
from kartero.config import MtaStsConfig
from kartero.delivery.mtasts import parse_policy
from kartero.mailauth.dnscheck import Check, ClientRecords, Srv, check_domain
from tests.unit.autoconfig.configs import make_config


def test_issue_15_policy_text_is_exact_with_crlf() -> None:
    text = policy_text("mail.example.org", MtaStsConfig())
    assert text == "version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\nmax_age: 604800\r\n"
    text = policy_text("mail.example.org", MtaStsConfig("enforce", 86400, ("mx2.example.net", "*.example.com",
                                                                           "mail.example.org")))  # fmt: skip
    assert text == ("version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\nmx: mx2.example.net\r\n"
                    "mx: *.example.com\r\nmax_age: 86400\r\n")  # fmt: skip
    # What Kartero's own MTA-STS client (and so any sender) reads from it
    policy = parse_policy("example.org", "x", text, 0.0)
    assert (policy.mode, policy.mx, policy.max_age_s) == ("enforce", ("mail.example.org", "mx2.example.net",
                                                                      "*.example.com"), 86400)  # fmt: skip


def test_issue_15_policy_id_changes_exactly_when_the_policy_does() -> None:
    testing = policy_id(policy_text("mail.example.org", MtaStsConfig()))
    assert re.fullmatch(r"[0-9a-f]{32}", testing)  # §3.1: 1*32(ALPHA / DIGIT)
    assert policy_id(policy_text("mail.example.org", MtaStsConfig())) == testing
    others = {policy_id(policy_text("mail.example.org", MtaStsConfig(mode="enforce"))),
              policy_id(policy_text("mail.example.org", MtaStsConfig(mode="none"))),
              policy_id(policy_text("mail.example.org", MtaStsConfig(max_age_s=86400))),
              policy_id(policy_text("mail.example.org", MtaStsConfig(mx=("mx2.example.org",)))),
              policy_id(policy_text("mx.example.org", MtaStsConfig()))}  # fmt: skip
    assert len(others) == 5 and testing not in others


def test_issue_15_client_records_from_the_config() -> None:
    config = make_config({"imaps": 9930, "imap": 143, "submission": 587, "pop3": 110},
                         {"imaps": 993, "pop3": 0}, mta_sts=MtaStsConfig(mode="enforce"))  # fmt: skip
    records = client_records(config, "example.net")
    assert records == ClientRecords(
        policy_id(policy_text("mail.example.org", MtaStsConfig(mode="enforce"))),
        "mailto:postmaster@example.net",
        (Srv("imaps", 0, 993), Srv("imap", 5, 143), Srv("pop3s", 10, 0), Srv("pop3", 15, 0),
         Srv("submissions", 0, 0), Srv("submission", 5, 587)),
    )  # fmt: skip
    other = make_config({"imaps": 993}, mta_sts=MtaStsConfig(tls_rpt="mailto:tls@example.com"))
    assert client_records(other, "example.net").tls_rpt == "mailto:tls@example.com"


@dataclass
class _Rdata:
    text: str

    @property
    def strings(self) -> list[bytes]:
        return [self.text.encode()]

    def to_text(self) -> str:
        return self.text


class _Zone:
    """A resolver answering from a dict {(name, type): [values]}; anything else does not exist."""

    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = records

    def resolve(self, name: str, rdtype: str, search: bool = False) -> list[_Rdata]:
        values = self.records.get((name, rdtype))
        if not values:
            raise dns.resolver.NXDOMAIN
        return [_Rdata(v) for v in values]


RECORDS = ClientRecords("0123abcd", "mailto:postmaster@example.org",
                        (Srv("imaps", 0, 993), Srv("pop3", 15, 0)))  # fmt: skip


def _checks(zone: dict[tuple[str, str], list[str]]) -> dict[str, Check]:
    found = check_domain("example.org", "mail.example.org", [], _Zone(zone), RECORDS)  # type: ignore[arg-type]
    return {c.name: c for c in found}


def test_issue_15_dns_check_of_the_client_records() -> None:
    here = {("mail.example.org", "A"): ["192.0.2.1"]}
    checks = _checks(here)
    assert [(name, c.status, c.required) for name, c in checks.items() if name not in ("MX", "A/AAAA", "SPF", "DKIM",
                                                                                         "DMARC", "PTR")] == [
        ("MTA-STS", "missing", False), ("MTA-STS web", "missing", False), ("TLS-RPT", "missing", False),
        ("autoconfig", "missing", False), ("autodiscover", "missing", False), ("SRV imaps", "missing", False),
        ("SRV pop3", "missing", False),
    ]  # fmt: skip
    assert checks["MTA-STS"].record == '_mta-sts.example.org. IN TXT "v=STSv1; id=0123abcd"'
    assert checks["MTA-STS web"].record == "mta-sts.example.org. IN CNAME mail.example.org."
    assert checks["TLS-RPT"].record == '_smtp._tls.example.org. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@example.org"'
    assert checks["autodiscover"].record == "autodiscover.example.org. IN CNAME mail.example.org."
    assert checks["SRV imaps"].record == "_imaps._tcp.example.org. IN SRV 0 1 993 mail.example.org."
    assert checks["SRV pop3"].record == "_pop3._tcp.example.org. IN SRV 0 0 0 ."

    checks = _checks({**here, ("_mta-sts.example.org", "TXT"): ["v=STSv1; id=0123abcd"],
                      ("mta-sts.example.org", "A"): ["192.0.2.1"],
                      ("_smtp._tls.example.org", "TXT"): ["v=TLSRPTv1; rua=mailto:tls@example.com"],
                      ("autoconfig.example.org", "A"): ["192.0.2.1"], ("autodiscover.example.org", "A"): ["192.0.2.1"],
                      ("_imaps._tcp.example.org", "SRV"): ["10 5 993 MAIL.example.org."],
                      ("_pop3._tcp.example.org", "SRV"): ["0 0 0 ."]})  # fmt: skip
    assert {name: c.status for name, c in checks.items() if name not in ("DKIM", "DMARC", "SPF", "MX")} == {
        "A/AAAA": "ok", "MTA-STS": "ok", "MTA-STS web": "ok", "TLS-RPT": "ok", "autoconfig": "ok",
        "autodiscover": "ok", "SRV imaps": "ok", "SRV pop3": "ok", "PTR": "missing",
    }  # fmt: skip

    checks = _checks({**here, ("_mta-sts.example.org", "TXT"): ["v=STSv1; id=old"],
                      ("mta-sts.example.org", "A"): ["198.51.100.7"],
                      ("_imaps._tcp.example.org", "SRV"): ["0 1 143 mail.example.org."],
                      ("_pop3._tcp.example.org", "SRV"): ["0 1 110 mail.example.org."]})  # fmt: skip
    assert checks["MTA-STS"].detail == (
        '"v=STSv1; id=old" is not the id of the policy served now: publish _mta-sts.example.org. IN TXT '
        '"v=STSv1; id=0123abcd" (senders fetch the policy again when the id changes)'
    )
    assert checks["MTA-STS web"].detail == ("mta-sts.example.org has 198.51.100.7, none of them mail.example.org's: "
                                            "publish mta-sts.example.org. IN CNAME mail.example.org.")  # fmt: skip
    assert checks["SRV imaps"].detail == (
        "found 0 1 143 mail.example.org., but imaps is at mail.example.org port 993: "
        "publish _imaps._tcp.example.org. IN SRV 0 1 993 mail.example.org."
    )
    assert checks["SRV pop3"].detail == ("found 0 1 110 mail.example.org., but pop3 is not offered here: "
                                         "publish _pop3._tcp.example.org. IN SRV 0 0 0 .")  # fmt: skip
    assert all(checks[n].status == "wrong" for n in ("MTA-STS", "MTA-STS web", "SRV imaps", "SRV pop3"))

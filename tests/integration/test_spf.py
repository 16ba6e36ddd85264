"""SPF evaluation (kartero/mailauth/spf.py) against a real DNS server on loopback: the examples of
RFC 7208 Appendix A, then every result code and the processing limits of §4.6.4."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kartero.dns.resolver import blocking_resolver
from kartero.mailauth import spf
from tests.integration.dnsserver import LoopbackDNS

# RFC 7208 Appendix A: the example zones.
APPENDIX_A = """
example.com. 60 IN MX 10 mail-a.example.com.
example.com. 60 IN MX 20 mail-b.example.com.
example.com. 60 IN A 192.0.2.10
example.com. 60 IN A 192.0.2.11
amy.example.com. 60 IN A 192.0.2.65
bob.example.com. 60 IN A 192.0.2.66
mail-a.example.com. 60 IN A 192.0.2.129
mail-b.example.com. 60 IN A 192.0.2.130
www.example.com. 60 IN CNAME example.com.
mail-c.example.org. 60 IN A 192.0.2.140
example.org. 60 IN MX 10 mail-c.example.org.
10.2.0.192.in-addr.arpa. 60 IN PTR example.com.
11.2.0.192.in-addr.arpa. 60 IN PTR example.com.
65.2.0.192.in-addr.arpa. 60 IN PTR amy.example.com.
66.2.0.192.in-addr.arpa. 60 IN PTR bob.example.com.
129.2.0.192.in-addr.arpa. 60 IN PTR mail-a.example.com.
130.2.0.192.in-addr.arpa. 60 IN PTR mail-b.example.com.
140.2.0.192.in-addr.arpa. 60 IN PTR mail-c.example.org.
4.0.0.10.in-addr.arpa. 60 IN PTR bob.example.com.
"""

# Further zones for the result codes and limits (names under .test).
OTHERS = """
soft.test. 60 IN TXT "v=spf1 ip4:192.0.2.1 ~all"
neutral.test. 60 IN TXT "v=spf1 ?all"
norecord.test. 60 IN A 192.0.2.1
twice.test. 60 IN TXT "v=spf1 -all"
twice.test. 60 IN TXT "v=spf1 +all"
syntax.test. 60 IN TXT "v=spf1 ip4:not-an-address -all"
inc.test. 60 IN TXT "v=spf1 include:_spf.inc.test -all"
_spf.inc.test. 60 IN TXT "v=spf1 ip4:198.51.100.0/24 ip6:2001:db8::/32 -all"
redir.test. 60 IN TXT "v=spf1 redirect=inc.test"
macro.test. 60 IN TXT "v=spf1 exists:%{ir}.%{l1r+-}._spf.macro.test -all"
1.2.0.192.alice._spf.macro.test. 60 IN A 127.0.0.2
loop0.test. 60 IN TXT "v=spf1 include:loop1.test -all"
void.test. 60 IN TXT "v=spf1 a:v1.void.test a:v2.void.test a:v3.void.test ip4:192.0.2.1 -all"
helo.mx.test. 60 IN TXT "v=spf1 a -all"
helo.mx.test. 60 IN A 192.0.2.77
"""


def chain(length: int) -> str:
    """loop1 includes loop2 ... loopN: N DNS-querying terms."""
    return "".join(f'loop{i}.test. 60 IN TXT "v=spf1 include:loop{i + 1}.test -all"\n' for i in range(1, length)) + (
        f'loop{length}.test. 60 IN TXT "v=spf1 ip4:192.0.2.1 -all"\n'
    )


@pytest.fixture(scope="module")
def zones() -> Iterator[LoopbackDNS]:
    with LoopbackDNS(APPENDIX_A + OTHERS + chain(11)) as server:
        server.zones.servfail.add("broken.test")
        spf.use_resolver(blocking_resolver([(server.host, server.port)], timeout_s=2))
        yield server


def with_record(server: LoopbackDNS, record: str) -> None:
    server.zones.set_zone(APPENDIX_A + OTHERS + chain(11) + f'example.com. 60 IN TXT "{record}"\n')


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("v=spf1 +all", {"192.0.2.10": "pass", "10.1.1.1": "pass"}),
        ("v=spf1 a -all", {"192.0.2.10": "pass", "192.0.2.11": "pass", "192.0.2.12": "fail"}),
        ("v=spf1 a:example.org -all", {"192.0.2.10": "fail", "192.0.2.140": "fail"}),
        ("v=spf1 mx -all", {"192.0.2.129": "pass", "192.0.2.130": "pass", "192.0.2.10": "fail"}),
        ("v=spf1 mx:example.org -all", {"192.0.2.140": "pass", "192.0.2.129": "fail"}),
        ("v=spf1 mx mx:example.org -all", {"192.0.2.129": "pass", "192.0.2.130": "pass", "192.0.2.140": "pass"}),
        ("v=spf1 mx/30 mx:example.org/30 -all", {"192.0.2.131": "pass", "192.0.2.143": "pass", "192.0.2.132": "fail"}),
        ("v=spf1 ptr -all", {"192.0.2.65": "pass", "192.0.2.140": "fail", "10.0.0.4": "fail"}),
        ("v=spf1 ip4:192.0.2.128/28 -all", {"192.0.2.65": "fail", "192.0.2.129": "pass"}),
    ],
)
def test_rfc7208_appendix_a(zones: LoopbackDNS, record: str, expected: dict[str, str]) -> None:
    with_record(zones, record)
    got = {ip: spf.check(ip, "user@example.com", "mail.example.net").result for ip in expected}
    assert got == expected


@pytest.mark.parametrize(
    ("sender", "ip", "result"),
    [
        ("a@soft.test", "192.0.2.9", "softfail"),
        ("a@soft.test", "192.0.2.1", "pass"),
        ("a@neutral.test", "192.0.2.9", "neutral"),
        ("a@norecord.test", "192.0.2.9", "none"),
        ("a@nxdomain.test", "192.0.2.9", "none"),
        ("a@twice.test", "192.0.2.9", "permerror"),  # two SPF records: §4.5
        ("a@syntax.test", "192.0.2.9", "permerror"),
        ("a@broken.test", "192.0.2.9", "temperror"),  # SERVFAIL
        ("a@inc.test", "198.51.100.7", "pass"),
        ("a@inc.test", "2001:db8::25", "pass"),
        ("a@inc.test", "203.0.113.1", "fail"),
        ("a@redir.test", "198.51.100.7", "pass"),
        ("alice@macro.test", "192.0.2.1", "pass"),  # exists:%{ir}.%{l1r+-} -> 1.2.0.192.alice
        ("bob@macro.test", "192.0.2.1", "fail"),
        ("a@loop0.test", "192.0.2.1", "permerror"),  # 11 includes: more than 10 lookups (§4.6.4)
        ("a@void.test", "192.0.2.1", "permerror"),  # 3 void lookups before the match: more than 2
    ],
)
def test_result_codes_and_limits(zones: LoopbackDNS, sender: str, ip: str, result: str) -> None:
    with_record(zones, "v=spf1 -all")
    checked = spf.check(ip, sender, "mail.example.net")
    assert (checked.result, checked.identity, checked.domain) == (result, "mailfrom", sender.rpartition("@")[2])


def test_null_sender_checks_the_helo_name(zones: LoopbackDNS) -> None:
    with_record(zones, "v=spf1 -all")
    assert spf.check("192.0.2.77", "", "helo.mx.test") == spf.SPFResult(
        "pass", "helo", "helo.mx.test", "postmaster@helo.mx.test", "sender SPF authorized"
    )
    assert spf.check("192.0.2.78", "", "helo.mx.test").result == "fail"

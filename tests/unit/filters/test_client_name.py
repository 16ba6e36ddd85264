"""Issue 13: the client's forward-confirmed reverse name that milters get ({client_name}, {client_ptr},
{client_resolve}), against a real DNS server on loopback."""

from __future__ import annotations

import asyncio

from kartero.dns.resolver import ClientName, Resolver
from tests.integration.dnsserver import LoopbackDNS

ZONE = """
7.2.0.192.in-addr.arpa. 60 IN PTR mail.sender.test.
mail.sender.test. 60 IN A 192.0.2.7
8.2.0.192.in-addr.arpa. 60 IN PTR forged.sender.test.
forged.sender.test. 60 IN A 192.0.2.99
9.2.0.192.in-addr.arpa. 60 IN PTR a.sender.test.
9.2.0.192.in-addr.arpa. 60 IN PTR b.sender.test.
b.sender.test. 60 IN AAAA 2001:db8::9
b.sender.test. 60 IN A 192.0.2.9
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 60 IN PTR six.sender.test.
six.sender.test. 60 IN AAAA 2001:db8::1
"""


def names(*addresses: str, servfail: tuple[str, ...] = ()) -> list[ClientName]:
    with LoopbackDNS(ZONE) as dns:
        dns.zones.servfail.update(servfail)
        resolver = Resolver([(dns.host, dns.port)], timeout_s=2.0)

        async def go() -> list[ClientName]:
            return [await resolver.client_name(a) for a in addresses]

        return asyncio.run(go())


def test_issue_13_client_names() -> None:
    assert names("192.0.2.7", "192.0.2.8", "192.0.2.9", "2001:db8::1", "192.0.2.10", "127.0.0.5", "::1") == [
        ClientName("mail.sender.test", "mail.sender.test", "OK"),
        ClientName("unknown", "forged.sender.test", "FORGED"),  # its A record leads elsewhere
        ClientName("b.sender.test", "b.sender.test", "OK"),  # the second PTR name leads back
        ClientName("six.sender.test", "six.sender.test", "OK"),
        ClientName("unknown", "", "FAIL"),  # no PTR at all
        ClientName("localhost", "localhost", "OK"),  # loopback: no lookup
        ClientName("localhost", "localhost", "OK"),
    ]


def test_issue_13_a_failing_lookup_is_temporary() -> None:
    assert names("192.0.2.7", servfail=("7.2.0.192.in-addr.arpa",)) == [ClientName("unknown", "", "TEMP")]

"""Issue 15: what mail clients and sending MTAs fetch over real HTTP from one server: Thunderbird's
autoconfig file, Outlook's autodiscover answer, a signed-in user's Apple profile, the MTA-STS policy
(for mta-sts.DOMAIN only), each with the Host header a client sends; and `kartero dns` suggesting the
records they need.

The server has two local domains; IMAPS and SUBMISSIONS are published on other ports than bound
(`[http] public_ports`, as behind port forwarding) and POP3 is hidden from clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import plistlib
from collections.abc import Iterator
from xml.etree import ElementTree as ET

import pytest

from kartero.delivery.mtasts import MTASTS, Policy
from kartero.dns.resolver import Resolver
from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import PASSWORD, KarteroServer, run_cli, tls_context
from tests.integration.web_client import Browser

USER = "bob@example.test"
POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmx: *.backup.example.net\r\nmax_age: 86400\r\n"
CONFIG = """[http]
public_ports = {imaps = 993, submissions = 465, pop3 = 0}
[mta_sts]
mode = "enforce"
max_age = "1d"
mx = ["*.backup.example.net"]
"""
RESPONSE_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
POX = (b'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/'
       b'autodiscover/outlook/requestschema/2006"><Request><EMailAddress>%s</EMailAddress><AcceptableResponseSchema>'
       b"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>"
       b"</Request></Autodiscover>")  # fmt: skip


@pytest.fixture(scope="module")
def dns() -> Iterator[LoopbackDNS]:
    with LoopbackDNS("") as dns:  # an empty zone: `kartero dns` finds every record missing, at once
        yield dns


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, dns: LoopbackDNS) -> Iterator[KarteroServer]:
    server = KarteroServer(tmp_path_factory.mktemp("autoconfig") / "k", http=True, hostname="mail.example.test",
                           domains=("example.test", "example.net"), extra_config=dns.config + CONFIG)  # fmt: skip
    server.add_user(USER)
    server.start()
    yield server
    assert server.stop() == 0, server.log


def fetch(server: KarteroServer, method: str, path: str, host: str, body: bytes | None = None, *,
          https: bool = False) -> tuple[int, str, bytes]:  # fmt: skip
    """(status, content type, body) of one request with the Host header `host`."""
    if https:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(server.host, server.https_port, timeout=10,
                                                                       context=tls_context())  # fmt: skip
    else:
        conn = http.client.HTTPConnection(server.host, server.http_port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": host, "Content-Type": "text/xml"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def expected_servers(server: KarteroServer) -> list[tuple[str, str, str, str, str]]:
    host = "mail.example.test"
    return [
        ("incomingServer", "imap", host, "993", "SSL"),
        ("incomingServer", "imap", host, str(server.imap_port), "STARTTLS"),
        ("incomingServer", "pop3", host, str(server.pop3s_port), "SSL"),  # POP3 itself: public port 0
        ("outgoingServer", "smtp", host, "465", "SSL"),
        ("outgoingServer", "smtp", host, str(server.submission_port), "STARTTLS"),
    ]


def servers_of(xml: bytes, domain: str) -> list[tuple[str, str, str, str, str]]:
    provider = ET.fromstring(xml).find("emailProvider")
    assert provider is not None and provider.get("id") == domain and provider.findtext("domain") == domain
    found = []
    for element in provider:
        if element.tag in ("incomingServer", "outgoingServer"):
            assert element.findtext("username") == "%EMAILADDRESS%"
            assert element.findtext("authentication") == "password-cleartext"
            found.append((element.tag, element.get("type", ""), element.findtext("hostname") or "",
                          element.findtext("port") or "", element.findtext("socketType") or ""))  # fmt: skip
    return found


def test_issue_15_thunderbird_autoconfig(server: KarteroServer) -> None:
    status, kind, body = fetch(server, "GET", "/mail/config-v1.1.xml?emailaddress=bob%40example.test",
                               "autoconfig.example.test")  # fmt: skip
    assert (status, kind) == (200, "application/xml; charset=utf-8")
    assert servers_of(body, "example.test") == expected_servers(server)
    # The well-known URL at the domain itself, with or without the address; the second domain alike.
    for path, host, domain in [("/.well-known/autoconfig/mail/config-v1.1.xml", "example.net", "example.net"),
                               ("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=a%40example.net",
                                "example.test", "example.net"),
                               ("/mail/config-v1.1.xml", "autoconfig.example.net:80", "example.net")]:  # fmt: skip
        status, _, other = fetch(server, "GET", path, host)
        assert status == 200 and servers_of(other, domain) == expected_servers(server), (path, host)
    # A mailbox that does not exist gets the same answer as one that does.
    assert fetch(server, "GET", "/mail/config-v1.1.xml?emailaddress=nobody%40example.test",
                 "autoconfig.example.test")[2] == body  # fmt: skip
    # Not a local domain, or no domain to tell: 404; a foreign host name: 421.
    for path, host, code in [("/mail/config-v1.1.xml?emailaddress=bob%40other.example", "autoconfig.example.test",
                              404), ("/mail/config-v1.1.xml", "mail.example.test", 404),
                             ("/mail/config-v1.1.xml?emailaddress=junk", "autoconfig.example.test", 404),
                             ("/mail/config-v1.1.xml", "autoconfig.other.example", 421)]:  # fmt: skip
        assert fetch(server, "GET", path, host)[0] == code, (path, host)


def test_issue_15_outlook_autodiscover(server: KarteroServer) -> None:
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        status, kind, body = fetch(server, "POST", path, "autodiscover.example.net", POX % b"Alice@Example.NET")
        assert (status, kind) == (200, "application/xml; charset=utf-8"), body
        account = ET.fromstring(body).find(f"{RESPONSE_NS}Response/{RESPONSE_NS}Account")
        assert account is not None
        assert [(p.findtext(f"{RESPONSE_NS}Type"), p.findtext(f"{RESPONSE_NS}Server"), p.findtext(f"{RESPONSE_NS}Port"),
                 p.findtext(f"{RESPONSE_NS}Encryption"), p.findtext(f"{RESPONSE_NS}LoginName"))
                for p in account.findall(f"{RESPONSE_NS}Protocol")] == [
            ("IMAP", "mail.example.test", "993", "SSL", "Alice@example.net"),
            ("POP3", "mail.example.test", str(server.pop3s_port), "SSL", "Alice@example.net"),
            ("SMTP", "mail.example.test", "465", "SSL", "Alice@example.net"),
        ]  # fmt: skip
    # An account (bob) and no account (nobody) get the same answer but for the name echoed.
    bob = fetch(server, "POST", "/autodiscover/autodiscover.xml", "example.test", POX % USER.encode())
    nobody = fetch(server, "POST", "/autodiscover/autodiscover.xml", "example.test", POX % b"nobody@example.test")
    assert bob[0] == 200 and bob[2].replace(b"bob@", b"nobody@") == nobody[2]
    assert fetch(server, "POST", "/autodiscover/autodiscover.xml", "autodiscover.example.net",
                 POX % b"x@other.example")[0] == 404  # fmt: skip
    doctype = POX.replace(b"?><", b'?><!DOCTYPE a [<!ENTITY x "y">]><') % b"&x;@example.test"
    assert fetch(server, "POST", "/autodiscover/autodiscover.xml", "autodiscover.example.test", doctype)[0] == 400
    big = POX % (b"a" * 20_000 + b"@example.test")
    assert fetch(server, "POST", "/autodiscover/autodiscover.xml", "autodiscover.example.test", big)[0] == 413
    assert fetch(server, "GET", "/autodiscover/autodiscover.xml", "autodiscover.example.test")[0] == 405
    assert fetch(server, "POST", "/autodiscover/autodiscover.xml", "autodiscover.evil.example", POX)[0] == 421


def test_issue_15_mobileconfig_for_the_signed_in_user(server: KarteroServer) -> None:
    async def body() -> None:
        async with Browser(server.http_url) as browser:
            status, _, response = await browser.get("/mail.mobileconfig")
            assert (status, response.headers["Location"]) == (303, "/")
            await browser.login(USER, PASSWORD, admin=False)
            status, page, _ = await browser.get("/")
            assert status == 200 and 'href="/mail.mobileconfig"' in page and "<td>993</td>" in page
            async with browser.session.get(server.http_url + "/mail.mobileconfig") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "application/x-apple-aspen-config"
                assert response.headers["Content-Disposition"] == 'attachment; filename="example.test.mobileconfig"'
                data = await response.read()
        document = plistlib.loads(data)
        [mail] = document["PayloadContent"]
        assert (mail["PayloadType"], mail["EmailAddress"], mail["IncomingMailServerUsername"]) == (
            "com.apple.mail.managed", USER, USER)  # fmt: skip
        assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"],
                mail["OutgoingMailServerPortNumber"]) == ("mail.example.test", 993, 465)  # fmt: skip
        assert PASSWORD.encode() not in data

    asyncio.run(body())


def test_issue_15_mta_sts_policy_only_for_mta_sts_hosts(server: KarteroServer) -> None:
    for host, https in [("mta-sts.example.test", True), ("mta-sts.example.net", False),
                        ("MTA-STS.example.net.", False)]:  # fmt: skip
        status, kind, body = fetch(server, "GET", "/.well-known/mta-sts.txt", host, https=https)
        assert (status, kind, body) == (200, "text/plain; charset=utf-8", POLICY.encode()), host
    for host in ("example.test", "mail.example.test", f"127.0.0.1:{server.http_port}", "autoconfig.example.test",
                 "mta-sts.mail.example.test"):  # fmt: skip
        assert fetch(server, "GET", "/.well-known/mta-sts.txt", host)[0] == 404, host
    status, _, body = fetch(server, "GET", "/.well-known/mta-sts.txt", "mta-sts.evil.example")
    assert (status, body) == (421, b"this server does not answer for that host name\n")


def test_issue_15_a_sender_fetches_the_policy_through_dns_and_https(server: KarteroServer, dns: LoopbackDNS) -> None:
    """Kartero's own MTA-STS client (delivery/mtasts.py) as any sender: the TXT record, the address of
    mta-sts.DOMAIN, the policy over HTTPS with that Host and SNI, parsed."""
    dns.zones.set_zone('_mta-sts.example.net. 60 IN TXT "v=STSv1; id=x1"\n'
                       f"mta-sts.example.net. 60 IN A {server.host}\n")  # example.test stays empty for `kartero dns`

    async def fetch_policy() -> Policy | None:
        resolver = Resolver([(dns.host, dns.port)], timeout_s=2.0)
        return await MTASTS(resolver, tls_context(), port=server.https_port).policy("example.net")

    policy = asyncio.run(fetch_policy())
    assert policy is not None
    assert (policy.id, policy.mode, policy.mx, policy.max_age_s) == (
        "x1", "enforce", ("mail.example.test", "*.backup.example.net"), 86400)  # fmt: skip
    assert policy.allows("mail.example.test") and policy.allows("mx7.backup.example.net")


def test_issue_15_kartero_dns_suggests_the_records(server: KarteroServer) -> None:
    result = run_cli(server.config, "dns", "example.test", check=False)
    assert result.returncode == 1  # the zone is empty
    details = {line[10:25].strip(): line[26:] for line in result.stdout.splitlines()[1:] if line[:1] != "*"}
    policy_id = hashlib.sha256(POLICY.encode()).hexdigest()[:32]
    zone = "example.test"
    assert {name: text for name, text in details.items() if name not in ("MX", "A/AAAA", "SPF", "DKIM", "DMARC")} == {
        "MTA-STS": f'recommended: _mta-sts.{zone}. IN TXT "v=STSv1; id={policy_id}" (the policy is served at '
                   f"https://mta-sts.{zone}/.well-known/mta-sts.txt, RFC 8461)",
        "MTA-STS web": f"recommended: mta-sts.{zone}. IN CNAME mail.example.test. (and a certificate for "
                       f"mta-sts.{zone} on the https listener)",
        "TLS-RPT": f'recommended: _smtp._tls.{zone}. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@{zone}"',
        "autoconfig": f"recommended: autoconfig.{zone}. IN CNAME mail.example.test. (and a certificate for "
                      f"autoconfig.{zone} on the https listener)",
        "autodiscover": f"recommended: autodiscover.{zone}. IN CNAME mail.example.test. (and a certificate for "
                        f"autodiscover.{zone} on the https listener)",
        "SRV imaps": f"recommended: _imaps._tcp.{zone}. IN SRV 0 1 993 mail.example.test.",
        "SRV imap": f"recommended: _imap._tcp.{zone}. IN SRV 5 1 {server.imap_port} mail.example.test.",
        "SRV pop3s": f"recommended: _pop3s._tcp.{zone}. IN SRV 10 1 {server.pop3s_port} mail.example.test.",
        "SRV pop3": f"recommended: _pop3._tcp.{zone}. IN SRV 0 0 0 .",
        "SRV submissions": f"recommended: _submissions._tcp.{zone}. IN SRV 0 1 465 mail.example.test.",
        "SRV submission": f"recommended: _submission._tcp.{zone}. IN SRV 5 1 {server.submission_port} "
                          "mail.example.test.",
    }  # fmt: skip

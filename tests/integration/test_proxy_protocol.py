"""Issue 8: the PROXY protocol (v1 and v2) on every listener, from `[listen] proxy_from` only.

127.0.0.1 plays the load balancer (trusted); 127.0.0.2 is anyone else. What the sessions see as the
client is the address in the header: the Received field, SPF, the per-address limits, the loopback
login rule and the logs.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.net.proxy_header import V2_SIGNATURE
from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import KarteroServer, tls_context
from tests.integration.spares import fresh_server

PASSWORD = "bob password"
TRUSTED, UNTRUSTED = "127.0.0.1", "127.0.0.2"


class ProxiedServer(KarteroServer):
    """The harness's server with `proxy_from` in its [listen] table."""

    proxy_from = f'["{TRUSTED}/32"]'

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config.read_text().replace("[listen]\n", f"[listen]\nproxy_from = {self.proxy_from}\n", 1)
        self.config.write_text(text)


def v1(client: str, port: int = 40000) -> bytes:
    family = "TCP6" if ":" in client else "TCP4"
    server = "::1" if ":" in client else "127.0.0.1"
    return f"PROXY {family} {client} {server} {port} 25\r\n".encode()


def v2(client: str | None, port: int = 40000) -> bytes:
    """A v2 PROXY header for a TCP client, or LOCAL when `client` is None (both with a TLV)."""
    tlv = b"\x05\x00\x03abc"  # PP2_TYPE_UNIQUE_ID
    if client is None:
        return V2_SIGNATURE + b"\x20\x00" + struct.pack("!H", len(tlv)) + tlv
    address = ipaddress.ip_address(client)
    server = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    block = address.packed + server.packed + struct.pack("!HH", port, 143) + tlv
    family = b"\x21" if address.version == 6 else b"\x11"
    return V2_SIGNATURE + b"\x21" + family + struct.pack("!H", len(block)) + block


class Line:
    """A raw client connection that reads replies line by line."""

    def __init__(self, port: int, source: str = TRUSTED, header: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        if header:
            self.sock.sendall(header)
        self.buffer = b""

    def tls(self) -> None:
        self.sock = tls_context().wrap_socket(self.sock, server_hostname="mx.example.test")

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(4096)
            if not data:
                raise EOFError(self.buffer)
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> bytes:
        """One SMTP reply, the lines of a multi-line one joined."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"\n".join(lines)

    def command(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()

    def is_closed_silently(self) -> bool:
        try:
            return self.sock.recv(4096) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def dns() -> Iterator[LoopbackDNS]:
    """One DNS server for the module: its zone never changes and no test counts its queries."""
    with LoopbackDNS('sender.example. 60 IN TXT "v=spf1 ip4:203.0.113.7 -all"\n') as server:
        yield server


@pytest.fixture
def server(request: pytest.FixtureRequest, dns: LoopbackDNS) -> Iterator[KarteroServer]:
    """A server of its own for each test, started while the test before ran (spares.py)."""

    def build(root: Path, store_url: str) -> KarteroServer:
        mx = ProxiedServer(
            root,
            checks=True,
            extra_config=dns.config,
            limits='connections_per_ip = 2\ncommand_deadline = "2s"',
            store_url=store_url,
        )
        mx.add_user("bob@example.test", PASSWORD)
        return mx

    mx = fresh_server(request, build)
    yield mx
    if mx.process and mx.process.poll() is None:
        assert mx.stop() == 0, mx.log


def send_message(c: Line) -> bytes:
    assert c.reply().startswith(b"220 ")
    assert c.command("EHLO client.example").startswith(b"250-")
    assert c.command("MAIL FROM:<alice@sender.example>") == b"250 2.1.0 Sender OK"
    assert c.command("RCPT TO:<bob@example.test>") == b"250 2.1.5 Recipient OK"
    assert c.command("DATA").startswith(b"354 ")
    return c.command("From: alice@sender.example\r\nSubject: proxied\r\n\r\nhi\r\n.")


def test_issue_8_smtp_behind_a_proxy_sees_the_client_it_names(server: KarteroServer) -> None:
    c = Line(server.port, header=v1("203.0.113.7"))
    assert send_message(c).startswith(b"250 2.0.0 Message accepted as ")
    c.close()
    [stored] = server.messages("bob@example.test")
    assert b"Received: from client.example ([203.0.113.7])" in stored
    assert b"spf=pass smtp.mailfrom=alice@sender.example" in stored  # the SPF record allows 203.0.113.7 only
    [connect] = server.wait_events("smtp.connect", 1)
    assert " client=203.0.113.7 via=127.0.0.1" in connect
    assert " client=203.0.113.7 " in server.wait_events("smtp.message", 1)[0]


def test_issue_8_limits_count_the_client_a_proxy_names(server: KarteroServer) -> None:
    first, second = Line(server.port, header=v1("203.0.113.7")), Line(server.port, header=v2("203.0.113.7"))
    assert first.reply().startswith(b"220 ") and second.reply().startswith(b"220 ")
    third = Line(server.port, header=v1("203.0.113.7", 40001))
    assert third.reply() == b"421 4.7.0 Too many connections from your address (more than 2 connections at once)"
    other = Line(server.port, header=v1("203.0.113.8"))  # another client behind the same proxy
    assert other.reply().startswith(b"220 ")
    local = Line(server.port, header=v2(None))  # the proxy's own health check: the real peer, exempt
    assert local.reply().startswith(b"220 ")
    for c in (first, second, third, other, local):
        c.close()


def test_issue_8_the_loopback_login_rule_sees_the_proxied_client(server: KarteroServer) -> None:
    remote = Line(server.imap_port, header=v2("2001:db8::7"))
    assert b" LOGINDISABLED" in remote.line()  # no plaintext login for a remote client without TLS
    local = Line(server.imap_port, header=v1("127.0.0.9"))
    assert b" AUTH=PLAIN" in local.line()
    local.sock.sendall(f'a LOGIN bob@example.test "{PASSWORD}"\r\n'.encode())
    assert local.line().startswith(b"a OK ")
    remote.close()
    local.close()
    connects = server.wait_events("imap.connect", 2)
    assert " client=2001:db8::7 via=127.0.0.1" in connects[0] and " client=127.0.0.9 via=127.0.0.1" in connects[1]
    pop = Line(server.pop3_port, header=v1("203.0.113.7"))
    assert pop.line().startswith(b"+OK ")
    pop.close()
    assert " client=203.0.113.7 via=127.0.0.1" in server.wait_events("pop3.connect", 1)[0]


def test_issue_8_implicit_tls_after_the_header(server: KarteroServer) -> None:
    for port in (server.submissions_port, server.imaps_port, server.pop3s_port):
        c = Line(port, header=v1("203.0.113.7"))
        c.tls()
        assert c.line()[:3] in (b"220", b"* O", b"+OK")
        c.close()
        plain = Line(port, source=UNTRUSTED)  # anyone else: TLS from the first byte
        plain.tls()
        assert plain.line()[:3] in (b"220", b"* O", b"+OK")
        plain.close()
    assert " client=203.0.113.7 via=127.0.0.1" in server.wait_events("smtp.connect", 2)[0]


def test_issue_8_a_trusted_address_must_send_the_header(server: KarteroServer) -> None:
    direct = Line(server.port)
    direct.sock.sendall(b"EHLO client.example\r\n")
    assert direct.is_closed_silently()
    garbage = Line(server.imap_port, header=b"PROXY TCP4 203.0.113.7 nonsense\r\n")
    assert garbage.is_closed_silently()
    silent = Line(server.pop3_port)  # nothing at all: dropped after command_deadline
    assert silent.is_closed_silently()
    for c in (direct, garbage, silent):
        c.close()
    refusals = server.wait_events("proxy.refused", 3)
    assert {line.split("reason=", 1)[1] for line in refusals} == {
        '"not a PROXY protocol header"',
        '"v1 header: expected TCP4, TCP6 or UNKNOWN with two addresses and two ports"',
        '"no PROXY header in time"',
    }
    assert all(" peer=127.0.0.1 " in line for line in refusals)


def test_issue_8_a_header_from_anyone_else_is_a_protocol_error(server: KarteroServer) -> None:
    c = Line(server.port, source=UNTRUSTED, header=v1("203.0.113.7"))
    assert c.reply().startswith(b"220 ")
    assert c.reply() == b"500 5.5.1 Command unrecognized"
    assert c.command("QUIT") == b"221 2.0.0 Bye"
    c.close()
    i = Line(server.imap_port, source=UNTRUSTED, header=v1("203.0.113.7"))
    assert i.line().startswith(b"* OK ")
    assert i.line().startswith(b"PROXY BAD ")
    i.close()
    assert server.wait_events("smtp.connect", 1)[0].endswith(" listener=smtp client=127.0.0.2")  # no via


def test_issue_8_tls_handshake_failure_after_the_header_ends_only_that_connection(server: KarteroServer) -> None:
    c = Line(server.submissions_port, header=v1("203.0.113.7"))
    c.sock.sendall(b"this is no TLS ClientHello\r\n")
    assert c.is_closed_silently()
    c.close()
    ok = Line(server.submissions_port, header=v1("203.0.113.8"))
    ok.tls()
    assert ok.line().startswith(b"220 ")
    ok.close()
    assert server.wait_events("tls.handshake_failed", 1)

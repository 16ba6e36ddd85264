"""Mail signed by Kartero verifies with an independent verifier looking the key up in live DNS:
dkimpy's `dkimverify` command, run as its own process.

`dkimverify` uses the system resolver, which only speaks to port 53 at the address in
/etc/resolv.conf: the test DNS server listens on 127.0.0.153:53 and the tool runs in a private mount
namespace (`unshare -m`) where /etc/resolv.conf names that address. Needs root, like the Postfix tests.
(OpenDKIM's tools cannot take part: their libunbound resolver refuses to query loopback addresses, and
Debian 12's opendkim-testmsg answers "dkim_chunk(): Syntax error" to any input.)
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dkim
import dns.resolver
import pytest

from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import KarteroServer, run_cli, tls_context, wait_for

DNS_HOST = "127.0.0.153"
DKIMVERIFY = [sys.executable, "-m", "dkim.dkimverify"]  # dkimpy's `dkimverify` command
PASSWORD = "alice password"
MESSAGE = (
    b"From: Alice <alice@a.test>\r\nTo: Bob <bob@a.test>\r\nSubject: signed \xc3\xa9t\xc3\xa9\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"Caf\xc3\xa9.\r\n\r\n\r\n"
)


@pytest.fixture
def signed_setup(tmp_path: Path) -> Iterator[tuple[KarteroServer, LoopbackDNS, Path]]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare is missing (Debian util-linux)")
    if os.geteuid() != 0:
        pytest.fail("needs root: a DNS server on port 53 and a private mount namespace")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_HOST}\noptions attempts:1 timeout:2\n")
    server = KarteroServer(tmp_path / "a", domains=("a.test",), hostname="mx.a.test")
    server.add_user("alice@a.test", PASSWORD)
    server.add_user("bob@a.test")
    try:
        zone_server = LoopbackDNS("a.test. 60 IN MX 10 mx.a.test.\n", host=DNS_HOST, port=53)
    except OSError as exc:
        pytest.fail(f"cannot serve DNS on {DNS_HOST}:53: {exc}")
    with zone_server:
        server.start()
        try:
            yield server, zone_server, resolv
        finally:
            assert server.stop() == 0, server.log


def publish(server: KarteroServer, zone_server: LoopbackDNS, *args: str) -> str:
    out = run_cli(server.config, "dkim", "keygen", "a.test", *args).stdout
    record = re.search(r'^(\S+)\. IN TXT "(.+)"$', out, re.M)
    assert record is not None, out
    # A TXT string holds at most 255 octets; an RSA-2048 record is split into several, as in real zones.
    value = record.group(2)
    chunks = " ".join(f'"{value[i : i + 200]}"' for i in range(0, len(value), 200))
    zone_server.zones.add(f"{record.group(1)}. 60 IN TXT {chunks}\n")
    return record.group(1)


def in_namespace(resolv: Path, command: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run `command` where /etc/resolv.conf points at the test DNS server."""
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, str(resolv), *command], input=stdin,
                          capture_output=True, timeout=60)  # fmt: skip


def test_signature_verifies_with_opendkim_and_dkimpy(
    signed_setup: tuple[KarteroServer, LoopbackDNS, Path],
) -> None:
    server, zone_server, resolv = signed_setup
    publish(server, zone_server, "--selector", "s2026")
    ed_name = publish(server, zone_server, "--algorithm", "ed25519", "--selector", "ed2026")
    with smtplib.SMTP(server.host, server.submission_port, timeout=30) as client:
        client.starttls(context=tls_context())
        client.login("alice@a.test", PASSWORD)
        client.sendmail("alice@a.test", ["bob@a.test"], MESSAGE)
    (stored,) = server.messages("bob@a.test")
    assert stored.count(b"\r\nDKIM-Signature: v=1; ") == 2
    assert b"a=rsa-sha256; c=relaxed/relaxed; d=a.test;" in stored and b"s=s2026;" in stored
    # dkimpy's command line verifies the first signature (RSA) with the key from DNS.
    result = in_namespace(resolv, DKIMVERIFY, stored)
    assert (result.returncode, result.stdout) == (0, b"signature ok\n"), result
    tampered = stored.replace(b"Caf\xc3\xa9.", b"Cafe.")
    result = in_namespace(resolv, DKIMVERIFY, tampered)
    assert result.returncode == 1 and b"body hash mismatch" in result.stderr, result
    # The Ed25519 signature (RFC 8463), with the key fetched from the same DNS server.
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [DNS_HOST]

    def txt(name: bytes, timeout: int = 5) -> bytes:
        return b"".join(resolver.resolve(name.decode(), "TXT")[0].strings)

    checker = dkim.DKIM(stored)
    assert [checker.verify(idx=i, dnsfunc=txt) for i in (0, 1)] == [True, True]
    assert ed_name == "ed2026._domainkey.a.test" and b"a=ed25519-sha256" in stored
    # Mail from scripts (kartero sendmail) is signed the same way.
    run_cli(server.config, "sendmail", "-f", "alice", "bob", stdin="From: alice@a.test\nSubject: cron\n\nreport\n")
    wait_for(lambda: len(server.messages("bob@a.test")) == 2)
    from_cron = server.messages("bob@a.test")[1]
    assert from_cron.count(b"\r\nDKIM-Signature: v=1; ") == 2
    result = in_namespace(resolv, DKIMVERIFY, from_cron)
    assert (result.returncode, result.stdout) == (0, b"signature ok\n"), result


def test_issue_8_large_submitted_message_is_signed_from_its_spool_file(
    signed_setup: tuple[KarteroServer, LoopbackDNS, Path],
) -> None:
    """Past the 1 MiB spool threshold a submitted message is signed over its whole body, read from the
    spool file, and dkimpy's `dkimverify` agrees."""
    server, zone_server, resolv = signed_setup
    publish(server, zone_server, "--selector", "big2026")
    body = b"".join(b"line %07d of a large message \xc3\xa9\r\n" % i for i in range(70_000))  # ~2.6 MB
    big = MESSAGE.replace(b"Caf\xc3\xa9.\r\n", body)
    with smtplib.SMTP(server.host, server.submission_port, timeout=60) as client:
        client.starttls(context=tls_context())
        client.login("alice@a.test", PASSWORD)
        client.sendmail("alice@a.test", ["bob@a.test"], big)
    (stored,) = server.messages("bob@a.test")
    assert stored.count(b"\r\nDKIM-Signature: v=1; ") == 1 and stored.endswith(body + b"\r\n\r\n")
    result = in_namespace(resolv, DKIMVERIFY, stored)
    assert (result.returncode, result.stdout) == (0, b"signature ok\n"), result

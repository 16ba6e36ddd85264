"""MTA-STS on outbound delivery: two destination domains publish `enforce` policies, served over HTTPS
from 127.0.0.60:443 with a certificate of a test CA that Kartero is told to trust. One domain's MX
presents a valid certificate (delivered, over TLS); the other's presents a certificate for another
name: the message is deferred, never delivered in clear."""

from __future__ import annotations

import http.server
import os
import shutil
import smtplib
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import KarteroServer, free_port, run_cli, tls_context, wait_for
from tests.integration.testca import TestCA

A, GOOD_MX, BAD_MX, HTTPS = "127.0.0.2", "127.0.0.5", "127.0.0.6", "127.0.0.60"
PASSWORD = "alice password"
ZONE = f"""
good-sts.test. 60 IN MX 10 mx.good-sts.test.
mx.good-sts.test. 60 IN A {GOOD_MX}
_mta-sts.good-sts.test. 60 IN TXT "v=STSv1; id=20261126"
mta-sts.good-sts.test. 60 IN A {HTTPS}
bad-sts.test. 60 IN MX 10 mx.bad-sts.test.
mx.bad-sts.test. 60 IN A {BAD_MX}
_mta-sts.bad-sts.test. 60 IN TXT "v=STSv1; id=1"
mta-sts.bad-sts.test. 60 IN A {HTTPS}
"""


class PolicyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        domain = (self.headers.get("Host") or "").removeprefix("mta-sts.")
        if self.path != "/.well-known/mta-sts.txt" or domain not in ("good-sts.test", "bad-sts.test"):
            self.send_error(404)
            return
        body = f"version: STSv1\r\nmode: enforce\r\nmx: mx.{domain}\r\nmax_age: 86400\r\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[KarteroServer, KarteroServer, KarteroServer]]:
    if os.geteuid() != 0:
        pytest.fail("needs root: the policy server listens on port 443")
    root = Path(tempfile.mkdtemp(prefix="kartero-mtasts-"))
    ca = TestCA(root / "ca")
    ca.issue(["mta-sts.good-sts.test", "mta-sts.bad-sts.test"], root / "https" / "cert.pem", root / "https" / "key.pem")
    https = http.server.ThreadingHTTPServer((HTTPS, 443), PolicyHandler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(root / "https" / "cert.pem", root / "https" / "key.pem")
    https.socket = ctx.wrap_socket(https.socket, server_side=True)
    threading.Thread(target=https.serve_forever, daemon=True).start()
    port = free_port(GOOD_MX)
    peers = []
    for host, name, cert_names in ((GOOD_MX, "mx.good-sts.test", ["mx.good-sts.test"]),
                                   (BAD_MX, "mx.bad-sts.test", ["some-other-name.test"])):  # fmt: skip
        folder = root / name
        ca.issue(cert_names, folder / "tls" / "cert.pem", folder / "tls" / "key.pem")
        peer = KarteroServer(folder, host=host, port=port, domains=(name.removeprefix("mx."),), hostname=name)
        peer.add_user(f"user@{name.removeprefix('mx.')}")
        peers.append(peer)
    try:
        with LoopbackDNS(ZONE) as dns:
            a = KarteroServer(root / "a", host=A, domains=("a.test",), hostname="mx.a.test", extra_config=(
                dns.config + f'[delivery]\nport = {port}\nsource_address = "{A}"\nretry_first = "1s"\n'
                f'retry_max = "1s"\ntls_ca_file = "{ca.cert_path}"\n'
            ))  # fmt: skip
            a.add_user("alice@a.test", PASSWORD)
            for server in (*peers, a):
                server.start()
            try:
                yield a, peers[0], peers[1]
            finally:
                for server in (*peers, a):
                    assert server.stop() == 0, server.log
    finally:
        https.shutdown()
        https.server_close()
        shutil.rmtree(root, ignore_errors=True)


def test_enforce_policy_delivers_only_over_verified_tls(
    setup: tuple[KarteroServer, KarteroServer, KarteroServer],
) -> None:
    a, good, bad = setup
    with smtplib.SMTP(a.host, a.submission_port, timeout=30) as client:
        client.starttls(context=tls_context())
        client.login("alice@a.test", PASSWORD)
        client.sendmail("alice@a.test", ["user@good-sts.test", "user@bad-sts.test"],
                        b"From: alice@a.test\r\nSubject: sts\r\n\r\nhello\r\n")  # fmt: skip
    wait_for(lambda: len(good.messages("user@good-sts.test")) == 1, 20)
    (stored,) = good.messages("user@good-sts.test")
    assert b"by mx.good-sts.test (Kartero) with ESMTPS (version=TLSv1.3" in stored
    wait_for(
        lambda: any("domain=good-sts.test" in line and "mode=enforce" in line for line in a.log_events("mtasts.policy"))
    )
    # The other MX's certificate names someone else: tried over and over, never in clear.
    wait_for(lambda: len([r for r in a.log_events("queue.result") if "rcpt=user@bad-sts.test" in r]) >= 3, 20)
    failures = [line for line in a.log_events("delivery.tls_failed") if "mx.bad-sts.test" in line]
    assert failures and all("policy=enforce" in line and "certificate verify failed" in line for line in failures)
    listing = run_cli(a.config, "queue", "list").stdout
    assert "deferred  user@bad-sts.test" in listing
    assert "451 4.7.5 TLS with mx.bad-sts.test failed, and the MTA-STS policy of bad-sts.test requires it" in listing
    assert bad.log_events("smtp.message") == [] and bad.messages("user@bad-sts.test") == []

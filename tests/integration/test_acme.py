"""ACME certificates against Debian's pebble (a private ACME CA, started once for the module): issuance
over http-01, the certificate every TLS listener serves replaced without a restart, renewal of a short-lived
certificate, `kartero cert status`, and issuance over tls-alpn-01 on the https listener (no http listener)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import KarteroServer, free_port, run_cli, tls_context, wait_for
from tests.integration.testca import TestCA
from tests.pgserver import PrivatePostgres

PEBBLE = shutil.which("pebble")
pytestmark = pytest.mark.skipif(PEBBLE is None, reason="pebble (Debian package) not installed")

NAME = "mail.example.test"
VALIDITY_S = 9  # pebble's certificateValidityPeriod: renewal is due with a third of it left (schedule.py)


@dataclass
class Pebble:
    directory: str
    ca_file: Path
    http_port: int  # where pebble validates http-01: Kartero's http listener
    tls_port: int  # where pebble validates tls-alpn-01: Kartero's https listener
    management: str
    context: ssl.SSLContext  # trusts pebble's own HTTPS certificate
    dns: LoopbackDNS  # where pebble looks NAME up

    def root(self) -> bytes:
        """The root pebble issues under (made anew at each start)."""
        import urllib.request

        with urllib.request.urlopen(f"{self.management}/roots/0", context=self.context, timeout=10) as r:
            return bytes(r.read())


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    folder = tmp_path_factory.mktemp("pebble")
    ca = TestCA(folder / "ca")
    ca.issue(["localhost"], folder / "cert.pem", folder / "key.pem")
    port, management, http_port, tls_port = (free_port() for _ in range(4))
    (folder / "config.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{port}", "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(folder / "cert.pem"), "privateKey": str(folder / "key.pem"),
        "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "", "externalAccountBindingRequired": False,
        "certificateValidityPeriod": VALIDITY_S,
    }}))  # fmt: skip
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    with LoopbackDNS(f"{NAME}. 60 A 127.0.0.1\n") as dns, open(folder / "pebble.log", "wb") as log:
        # PEBBLE_AUTHZREUSE=0: every order is validated anew (pebble reuses half of them by default)
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        command = [PEBBLE, "-config", str(folder / "config.json"), "-dnsserver", f"{dns.host}:{dns.port}"]
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: _accepts(port), 10)
            yield Pebble(f"https://localhost:{port}/dir", ca.cert_path, http_port, tls_port,
                         f"https://localhost:{management}", context, dns)  # fmt: skip
        finally:
            process.terminate()
            process.wait(10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return False
    return True


def _acme_config(pebble: Pebble) -> str:
    return (f'[acme]\ndirectory = "{pebble.directory}"\nemail = "postmaster@example.test"\nnames = ["{NAME}"]\n'
            f'ca_file = "{pebble.ca_file}"\n')  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pebble: Pebble) -> Iterator[KarteroServer]:
    server = KarteroServer(tmp_path_factory.mktemp("kartero"), hostname=NAME, http=True,
                           http_port=pebble.http_port, https_port=pebble.tls_port,
                           extra_config=_acme_config(pebble))  # fmt: skip
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop()


def implicit_tls_certificate(port: int, server_name: str = NAME, host: str = "127.0.0.1") -> x509.Certificate:
    with socket.create_connection((host, port), 5) as raw, \
            tls_context().wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def starttls_certificate(port: int) -> x509.Certificate:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        smtp.ehlo("client.example.test")
        smtp.starttls(context=tls_context())
        der = smtp.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None
    return x509.load_der_x509_certificate(der)


def is_pebbles(certificate: x509.Certificate) -> bool:
    issuer = certificate.issuer.rfc4514_string()
    return "Pebble" in issuer and certificate.issuer != certificate.subject


def names_of(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def test_issue_15_acme_certificate_reaches_every_tls_listener_without_a_restart(server: KarteroServer,
                                                                                 pebble: Pebble) -> None:
    pid = server.process.pid if server.process else 0
    wait_for(lambda: is_pebbles(implicit_tls_certificate(server.submissions_port)), 15)
    ports = {"submissions": server.submissions_port, "imaps": server.imaps_port, "pop3s": server.pop3s_port,
             "https": server.https_port}  # fmt: skip
    for listener, port in ports.items():
        certificate = implicit_tls_certificate(port)
        assert is_pebbles(certificate), listener
        assert names_of(certificate) == [NAME], listener
    starttls = starttls_certificate(server.submission_port)
    assert is_pebbles(starttls) and names_of(starttls) == [NAME]
    assert server.process is not None and server.process.pid == pid and server.process.poll() is None
    # the chain verifies up to the root pebble made at its start
    root = pebble.root()
    (server.root / "pebble-root.pem").write_bytes(root)
    verify = ssl.create_default_context(cafile=str(server.root / "pebble-root.pem"))
    with socket.create_connection(("127.0.0.1", server.imaps_port), 5) as raw, \
            verify.wrap_socket(raw, server_hostname=NAME) as tls:
        assert tls.version() is not None
    assert server.log_events("acme.challenge")[0].split("type=")[1].startswith("http-01")
    # http-01 answers whatever the Host (the CA names the name it validates), without a login
    for host, path, status in [("elsewhere.example", "/.well-known/acme-challenge/unknownToken", 404),
                               ("elsewhere.example", "/.well-known/acme-challenge/../../acme/account.key", 404),
                               ("elsewhere.example", "/admin/login", 421)]:  # fmt: skip
        with socket.create_connection(("127.0.0.1", server.http_port), 5) as plain:
            plain.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            assert plain.makefile("rb").readline().split()[1] == str(status).encode(), path
    files = server.root / "data" / "acme"
    assert (files / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (files / "account.key").stat().st_mode & 0o777 == 0o600


def test_issue_15_acme_short_lived_certificate_is_renewed(server: KarteroServer) -> None:
    wait_for(lambda: is_pebbles(implicit_tls_certificate(server.imaps_port)), 15)
    first = implicit_tls_certificate(server.imaps_port).serial_number
    # due with a third of its VALIDITY_S left: a new serial on every listener within the lifetime
    wait_for(lambda: implicit_tls_certificate(server.imaps_port).serial_number != first, VALIDITY_S + 5)
    renewed = implicit_tls_certificate(server.imaps_port)
    assert is_pebbles(renewed) and names_of(renewed) == [NAME]
    wait_for(lambda: starttls_certificate(server.submission_port).serial_number != first, 5)
    assert len(server.log_events("acme.certificate_installed")) >= 2


def test_issue_15_cert_status_shows_the_acme_certificate(server: KarteroServer, pebble: Pebble) -> None:
    out = run_cli(server.config, "cert", "status").stdout
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["source"] == "acme"
    assert lines["names"] == NAME
    assert "Pebble Intermediate CA" in lines["issuer"]
    assert float(lines["days left"]) < 1
    assert lines["acme directory"] == pebble.directory
    assert lines["acme challenge"] == "http-01"
    assert lines["last renewal error"] == "none"


def test_issue_15_acme_over_tls_alpn_without_an_http_listener(server: KarteroServer, pebble: Pebble,
                                                              tmp_path: Path) -> None:
    server.stop()  # its https port is where pebble validates tls-alpn-01
    alpn = KarteroServer(tmp_path, hostname=NAME, http=True, plain_http=False, https_port=pebble.tls_port,
                         extra_config=_acme_config(pebble))  # fmt: skip
    alpn.start()
    try:
        wait_for(lambda: is_pebbles(implicit_tls_certificate(alpn.https_port)), 15)
        assert is_pebbles(implicit_tls_certificate(alpn.submissions_port))
        assert alpn.log_events("acme.challenge")[0].split("type=")[1].startswith("tls-alpn-01")
        started = time.monotonic()
        assert "acme challenge: tls-alpn-01" in run_cli(alpn.config, "cert", "status").stdout
        assert time.monotonic() - started < 10
    finally:
        alpn.stop()


def test_issue_15_acme_in_a_cluster_one_node_orders_any_node_answers_all_serve_it(server: KarteroServer,
                                                                                pebble: Pebble, tmp_path: Path,
                                                                                postgres: PrivatePostgres) -> None:
    """Two nodes on one PostgreSQL store: node a orders (it holds the lead), the CA's http-01 request
    reaches node b (NAME resolves to b's address), which answers from the database; b then serves the
    certificate a got, without ordering one of its own."""
    if server.process is not None and server.process.poll() is None:
        server.stop()  # the http and https ports pebble validates on
    url = postgres.migrated_database()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('acme:lead', %s)", (f"a {time.time() + 3600}",))
    pebble.dns.zones.set_zone(f"{NAME}. 60 A 127.0.0.2\n")
    nodes = {name: KarteroServer(tmp_path / name, host=host, hostname=NAME, http=True, http_port=pebble.http_port,
                                 https_port=pebble.tls_port, store_url=url, node=name,
                                 extra_config=_acme_config(pebble))
             for name, host in (("b", "127.0.0.2"), ("a", "127.0.0.1"))}
    try:
        with ThreadPoolExecutor(2) as starting:  # both at once: a server start is seconds of mostly waiting
            list(starting.map(KarteroServer.start, nodes.values()))
        a, b = nodes["a"], nodes["b"]
        wait_for(lambda: is_pebbles(implicit_tls_certificate(a.imaps_port, host=a.host)), 15)
        assert a.log_events("acme.challenge") and not b.log_events("acme.ordering")
        assert b.process is not None
        b.process.send_signal(signal.SIGHUP)  # look now rather than at the next minute
        issued = implicit_tls_certificate(a.imaps_port, host=a.host).serial_number
        wait_for(lambda: implicit_tls_certificate(b.imaps_port, host=b.host).serial_number == issued, 10)
        assert b.log_events("acme.certificate_synced") and not b.log_events("acme.ordering")
        status = run_cli(b.config, "cert", "status").stdout
        assert "source: acme\n" in status and "last renewal error: none\n" in status
        assert "\nlast renewal: 20" in status  # the cluster's state, from the database (b never ordered)
    finally:
        pebble.dns.zones.set_zone(f"{NAME}. 60 A 127.0.0.1\n")
        for node in nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.stop()


def test_issue_15_a_failed_order_keeps_the_self_signed_certificate_and_backs_off(tmp_path: Path,
                                                                                 pebble: Pebble) -> None:
    """A CA that cannot be reached: the listeners keep serving the [tls] certificate, the failure is
    logged with the next attempt a minute later, and `cert status` shows it. SIGTERM while an order
    hangs on a CA that never answers does not wait for it."""
    closed = free_port()
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    config = (f'[acme]\ndirectory = "https://127.0.0.1:{closed}/dir"\nca_file = "{pebble.ca_file}"\n')
    hanging = (f'[acme]\ndirectory = "https://127.0.0.1:{silent.getsockname()[1]}/dir"\n'
               f'ca_file = "{pebble.ca_file}"\n')  # fmt: skip
    unknown = _acme_config(pebble).replace(f'names = ["{NAME}"]', 'names = ["nowhere.example.test"]')
    servers = [KarteroServer(tmp_path / name, hostname=NAME, http=True, extra_config=extra)
               for name, extra in (("refused", config), ("hanging", hanging), ("unknown", unknown))]  # fmt: skip
    try:
        with ThreadPoolExecutor(3) as starting:
            list(starting.map(KarteroServer.start, servers))
        refused, hung, invalid = servers
        # the CA refuses a name that does not resolve: its reason is logged and kept
        rejected = invalid.wait_events("acme.order_failed", 1)[0]
        assert "could not resolve" in rejected and "nowhere.example.test" in rejected and "retry_in_s=60 " in rejected
        failed = refused.wait_events("acme.order_failed", 1)[0]
        assert "failures=1 " in failed and "retry_in_s=60 " in failed
        certificate = implicit_tls_certificate(refused.imaps_port)
        assert certificate.issuer == certificate.subject  # the self-signed one from [tls]
        lines = dict(line.split(": ", 1) for line in run_cli(refused.config, "cert", "status").stdout.splitlines())
        assert lines["source"] == "self-signed" and lines["names"] == NAME
        assert lines["last renewal error"].startswith("20") and "(1 in a row): " in lines["last renewal error"]
        hung.wait_events("acme.ordering", 1)
        started = time.monotonic()
        assert hung.stop() == 0
        assert time.monotonic() - started < 10  # the order's requests would take 30 s
    finally:
        silent.close()
        for server in servers:
            if server.process is not None and server.process.poll() is None:
                server.stop()


def test_issue_15_acme_under_serve_workers_every_worker_serves_the_new_certificate(
        server: KarteroServer, pebble: Pebble, tmp_path: Path, postgres: PrivatePostgres) -> None:
    """`serve --workers 2`: worker 1 orders; the CA's http-01 request may reach either worker (answers in
    the database); after the order worker 1 has the supervisor SIGHUP every worker, so every connection
    (the kernel spreads them over both) gets the CA's certificate."""
    if server.process is not None and server.process.poll() is None:
        server.stop()
    node = KarteroServer(tmp_path / "w", hostname=NAME, http=True, http_port=pebble.http_port,
                         https_port=pebble.tls_port, store_url=postgres.migrated_database(), node="w",
                         serve_args=("--workers", "2"), extra_config=_acme_config(pebble))  # fmt: skip
    node.start()
    try:
        wait_for(lambda: is_pebbles(implicit_tls_certificate(node.imaps_port)), 15)
        for _ in range(12):  # both workers, but for a chance of 2 in 4096
            assert is_pebbles(implicit_tls_certificate(node.imaps_port))
            assert is_pebbles(implicit_tls_certificate(node.https_port))
        assert len(node.log_events("acme.ordering")) >= 1
    finally:
        node.stop()

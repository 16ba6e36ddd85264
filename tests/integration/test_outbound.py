"""Store and forward between real servers on loopback: Kartero A (a.test, 127.0.0.2) sends through its
queue to Kartero B (b.test, 127.0.0.3) and Postfix (c.test, 127.0.0.4), finding them through a real DNS
server (tests/integration/dnsserver.py) with MX, A, null-MX and SERVFAIL answers. Every peer listens on
the same port number on its own address, as MX hosts all listen on 25 (`[delivery] port` in A's config).
`kartero queue` runs in this process (harness.run_cli_in_process: its output is what is checked);
`kartero sendmail` runs as the process cron would start.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import smtplib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from kartero.tls import make_self_signed
from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import KarteroServer, free_port, run_cli, run_cli_in_process, tls_context, wait_for
from tests.integration.postfix import PostfixInstance, is_available

PASSWORD = "alice password"
Sender = Callable[..., KarteroServer]
A, B, C, DOWN = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"

ZONE = f"""
a.test. 60 IN MX 10 mx.a.test.
mx.a.test. 60 IN A {A}
b.test. 60 IN MX 10 mx.b.test.
mx.b.test. 60 IN A {B}
b2.test. 60 IN MX 5 dead.b2.test.
b2.test. 60 IN MX 10 mx.b.test.
dead.b2.test. 60 IN A 127.0.0.9
implicit.test. 60 IN A {B}
c.test. 60 IN MX 10 mx.c.test.
mx.c.test. 60 IN A {C}
null.test. 60 IN MX 0 .
down.test. 60 IN MX 10 mx.down.test.
mx.down.test. 60 IN A {DOWN}
refuse.test. 60 IN MX 10 mx.b.test.
"""


def _shared_port() -> int:
    """A port free on every peer address."""
    for _ in range(50):
        port = free_port(A)
        try:
            for host in (B, C, DOWN):
                import socket

                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on all peer addresses")


@dataclass
class Network:
    root: Path
    port: int
    dns: LoopbackDNS
    b: KarteroServer
    postfix: PostfixInstance
    carol_maildir: Path

    def sender(self, name: str, delivery: dict[str, str]) -> KarteroServer:
        """A fresh Kartero A for one test, with alice@a.test; `delivery` overrides [delivery] settings."""
        settings = {"port": str(self.port), "source_address": f'"{A}"', "retry_first": '"1s"', "retry_max": '"2s"',
                    "connect_timeout": '"5s"', **delivery}  # fmt: skip
        server = KarteroServer(
            self.root / name,
            host=A,
            port=self.port,
            domains=("a.test",),
            hostname="mx.a.test",
            extra_config=self.dns.config + "[delivery]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()),
        )
        server.add_user("alice@a.test", PASSWORD)
        return server

    def carol_messages(self) -> list[bytes]:
        new = self.carol_maildir / "new"
        return [p.read_bytes() for p in sorted(new.iterdir(), key=lambda p: p.stat().st_mtime)] if new.exists() else []


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    reason = is_available()
    if reason:
        pytest.fail(reason)
    root = Path(tempfile.mkdtemp(prefix="kartero-outbound-"))
    root.chmod(0o755)  # Postfix daemons must reach their folders
    port = _shared_port()
    vmail = root / "vmail"
    vmail.mkdir()
    os.chown(vmail, 65534, 65534)
    b = KarteroServer(
        root / "b", host=B, port=port, domains=("b.test", "b2.test", "implicit.test"), hostname="mx.b.test"
    )
    for user in ("bob@b.test", "bob2@b2.test", "imp@implicit.test"):
        b.add_user(user)
    cert, key = root / "postfix-tls" / "cert.pem", root / "postfix-tls" / "key.pem"
    make_self_signed(cert, key, ["mx.c.test"])
    postfix = PostfixInstance(root / "postfix", C, port, main_cf={
        "myhostname": "mx.c.test",
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(cert),
        "smtpd_tls_key_file": str(key),
        "virtual_mailbox_domains": "c.test",
        "virtual_mailbox_base": str(vmail),
        "virtual_mailbox_maps": "inline:{ carol@c.test=carol/ }",
        "virtual_uid_maps": "static:65534",
        "virtual_gid_maps": "static:65534",
    })  # fmt: skip
    with LoopbackDNS(ZONE) as dns:
        dns.zones.servfail.add("servfail.test")
        b.start()
        try:
            postfix.start()
            yield Network(root, port, dns, b, postfix, vmail / "carol")
        finally:
            postfix.stop()
            assert b.stop() == 0, b.log
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_sender(network: Network, request: pytest.FixtureRequest) -> Iterator[Callable[..., KarteroServer]]:
    started: list[KarteroServer] = []

    def make(*, start: bool = True, **delivery: str) -> KarteroServer:
        server = network.sender(request.node.name, delivery)
        if start:
            server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        if server.process and server.process.poll() is None:
            assert server.stop() == 0, server.log


def submit(a: KarteroServer, recipients: list[str], message: bytes, *, implicit: bool = False) -> None:
    if implicit:
        client: smtplib.SMTP = smtplib.SMTP_SSL(a.host, a.submissions_port, context=tls_context(), timeout=30)
    else:
        client = smtplib.SMTP(a.host, a.submission_port, local_hostname="laptop.a.test", timeout=30)
        client.starttls(context=tls_context())
    with client:
        client.login("alice@a.test", PASSWORD)
        assert client.sendmail("alice@a.test", recipients, message) == {}


def message(subject: str) -> bytes:
    return (
        b"From: Alice <alice@a.test>\r\nTo: friends:;\r\n"
        + f"Subject: {subject}\r\n".encode()
        + b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nMessage-ID: <"
        + subject.replace(" ", "-").encode()
        + b"@laptop.a.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        + b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe aus A.\r\n.leading dot\r\n"
    )


def after_received(stored: bytes) -> bytes:
    """The message below the last Received: field (what the submitting client sent, plus Date/ID)."""
    lines = stored.split(b"\r\n") if b"\r\n" in stored else stored.split(b"\n")
    eol = b"\r\n" if b"\r\n" in stored else b"\n"
    last = max(i for i, line in enumerate(lines) if line.startswith(b"Received:"))
    i = last + 1
    while lines[i][:1] in (b"\t", b" "):
        i += 1
    return eol.join(lines[i:])


def queue_is_empty(a: KarteroServer) -> bool:
    """What `kartero queue list` reads, read here: cheaper to poll than a CLI process (~0.5 s each)."""
    store = a.store()
    try:
        return not store.queue.queue_entries()
    finally:
        store.close()


def dsns(a: KarteroServer) -> list[EmailMessage]:
    found = []
    for raw in a.messages("alice@a.test"):
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        if parsed.get_content_type() == "multipart/report":
            found.append(parsed)
    return found


def report_fields(dsn: EmailMessage) -> list[dict[str, str]]:
    """The per-recipient blocks of a DSN's message/delivery-status part."""
    part = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    payload = part.get_payload()
    assert isinstance(payload, list)
    return [{k.lower(): str(v) for k, v in block.items()} for block in payload[1:]]


def test_submitted_mail_reaches_kartero_and_postfix(network: Network, make_sender: Sender) -> None:
    a = make_sender()
    body = message("to b and c")
    submit(a, ["bob@b.test", "carol@c.test"], body)
    wait_for(lambda: len(network.b.messages("bob@b.test")) == 1 and len(network.carol_messages()) == 1, 20)
    (at_b,) = network.b.messages("bob@b.test")
    # Return-Path from B, B's Received naming A, then A's Received for the authenticated submission.
    assert at_b.startswith(b"Return-Path: <alice@a.test>\r\nReceived: from mx.a.test ([127.0.0.2])")
    received = re.findall(rb"Received: .*?(?=\r\n[^\t])", at_b, re.S)
    assert len(received) == 2
    assert b"by mx.b.test (Kartero) with ESMTPS (version=TLSv1.3" in received[0]
    assert b"by mx.a.test (Kartero) with ESMTPSA" in received[1] and b"(authenticated as alice@a.test)" in received[1]
    assert after_received(at_b) == body
    (at_c,) = network.carol_messages()  # Postfix's Maildir: LF line endings
    assert at_c.startswith(b"Return-Path: <alice@a.test>\n")
    assert b"Received: from mx.a.test (unknown [127.0.0.2])\n\tby mx.c.test (Postfix) with ESMTPS id " in at_c, at_c
    assert after_received(at_c) == body.replace(b"\r\n", b"\n")
    assert dsns(a) == []
    wait_for(lambda: queue_is_empty(a), 10)  # Postfix may have the message a moment before A records it
    assert run_cli_in_process(a.config, "queue", "list").stdout == "queue is empty\n"


def test_465_and_swaks_to_remote(network: Network, make_sender: Callable[..., KarteroServer], tmp_path: Path) -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.fail("swaks is not installed (Debian package swaks; .ci/run installs it)")
    a = make_sender()
    before_b, before_c = len(network.b.messages("bob@b.test")), len(network.carol_messages())
    submit(a, ["bob@b.test"], message("over 465"), implicit=True)
    eml = tmp_path / "m.eml"
    eml.write_bytes(message("swaks 587"))
    import subprocess

    result = subprocess.run(
        [swaks, "--server", A, "--port", str(a.submission_port), "--tls", "--auth", "PLAIN", "--auth-user",
         "alice@a.test", "--auth-password", PASSWORD, "--from", "alice@a.test", "--to", "carol@c.test",
         "--data", f"@{eml}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: len(network.b.messages("bob@b.test")) == before_b + 1
             and len(network.carol_messages()) == before_c + 1, 20)  # fmt: skip
    assert after_received(network.b.messages("bob@b.test")[-1]) == message("over 465")
    assert after_received(network.carol_messages()[-1]) == (message("swaks 587") + b"\r\n").replace(b"\r\n", b"\n")


def test_mx_fallback_and_implicit_mx(network: Network, make_sender: Sender) -> None:
    a = make_sender()
    submit(a, ["bob2@b2.test", "imp@implicit.test"], message("fallback"))
    wait_for(lambda: network.b.messages("bob2@b2.test") and network.b.messages("imp@implicit.test"), 20)
    assert after_received(network.b.messages("bob2@b2.test")[-1]) == message("fallback")
    # b2.test's first MX (dead.b2.test, nothing listening) was tried first, then mx.b.test.
    assert network.dns.queried(["dead.b2.test"]) and network.dns.queried(["implicit.test"])
    assert dsns(a) == []


def test_refused_recipients_bounce_once_and_only_them(network: Network, make_sender: Sender) -> None:
    a = make_sender()
    before = len(network.b.messages("bob@b.test"))
    submit(a, ["bob@b.test", "nobody@b.test", "x@refuse.test"], message("partly refused"))
    wait_for(lambda: len(dsns(a)) >= 1 and len(network.b.messages("bob@b.test")) == before + 1, 20)
    time.sleep(1.5)  # would a second DSN come?
    (dsn,) = dsns(a)
    assert dsn["From"] == "Mail Delivery System <MAILER-DAEMON@mx.a.test>"
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert dsn.get_content_type() == "multipart/report" and dsn.get_param("report-type") == "delivery-status"
    fields = sorted(report_fields(dsn), key=lambda f: f["final-recipient"])
    assert [f["final-recipient"] for f in fields] == ["rfc822; nobody@b.test", "rfc822; x@refuse.test"]
    assert [(f["action"], f["status"], f["remote-mta"]) for f in fields] == [
        ("failed", "5.1.1", "dns; mx.b.test"), ("failed", "5.7.1", "dns; mx.b.test")
    ]  # fmt: skip
    assert fields[0]["diagnostic-code"] == "smtp; 550 5.1.1 No such user here"
    assert fields[1]["diagnostic-code"].startswith("smtp; 554 5.7.1 ")
    returned = next(p for p in dsn.walk() if p.get_content_type() == "message/rfc822")
    assert b"Subject: partly refused" in returned.as_bytes()
    raw_dsn = next(m for m in a.messages("alice@a.test") if b"multipart/report" in m)
    assert raw_dsn.startswith(b"Return-Path: <>\r\n")
    assert run_cli_in_process(a.config, "queue", "list").stdout == "queue is empty\n"


def test_null_mx_and_nxdomain_fail_with_one_dsn_each(network: Network, make_sender: Sender) -> None:
    a = make_sender()
    submit(a, ["x@null.test"], message("null mx"))
    submit(a, ["y@nosuch.test"], message("no such domain"))
    wait_for(lambda: len(dsns(a)) == 2, 30)
    time.sleep(1.5)
    by_recipient = {report_fields(d)[0]["final-recipient"]: report_fields(d)[0] for d in dsns(a)}
    null = by_recipient["rfc822; x@null.test"]
    assert (null["action"], null["status"]) == ("failed", "5.1.10")
    nx = by_recipient["rfc822; y@nosuch.test"]
    assert (nx["action"], nx["status"]) == ("failed", "5.1.2")
    # A null MX fails at once; a missing domain is believed only at the third answer.
    results = a.log_events("queue.result")
    assert len([r for r in results if "rcpt=x@null.test" in r]) == 1
    nx_results = [r for r in results if "rcpt=y@nosuch.test" in r]
    assert [("result=failed" in r) for r in nx_results] == [False, False, True]


def test_down_host_is_retried_with_backoff_then_delivered(network: Network, make_sender: Sender) -> None:
    a = make_sender(delay_notice='"2s"')
    submit(a, ["dan@down.test"], message("patience"))
    wait_for(lambda: len(a.log_events("queue.result")) >= 3, 20)
    listing = run_cli_in_process(a.config, "queue", "list").stdout
    expected = r"    deferred  dan@down\.test  attempts=\d+  next=\S+ \S+  451 4\.4\.1 Cannot connect to mx\.down\.test"
    assert re.search(expected, listing), listing
    stamps = [_log_time(line) for line in a.log_events("queue.result")[:3]]
    assert stamps[1] - stamps[0] >= 0.9 and stamps[2] - stamps[1] >= 1.9  # 1 s, then 2 s (retry_max)
    # Past delay_notice, alice hears once that it is late.
    wait_for(lambda: len(dsns(a)) == 1, 10)
    (delayed,) = dsns(a)
    assert delayed["Subject"] == "Delayed Mail (still being retried)"
    (fields,) = report_fields(delayed)
    assert (fields["action"], fields["status"]) == ("delayed", "4.4.1") and "will-retry-until" in fields
    down = KarteroServer(network.root / "down", host=DOWN, port=network.port, domains=("down.test",),
                         hostname="mx.down.test")  # fmt: skip
    down.add_user("dan@down.test")
    down.start()
    try:
        wait_for(lambda: len(down.messages("dan@down.test")) == 1, 20)
        assert after_received(down.messages("dan@down.test")[0]) == message("patience")
        wait_for(lambda: queue_is_empty(a), 10)
        assert run_cli_in_process(a.config, "queue", "list").stdout == "queue is empty\n"
    finally:
        assert down.stop() == 0, down.log
    assert len(dsns(a)) == 1  # delivered: no failure notice


def _log_time(line: str) -> float:
    stamp = line.split(" ", 1)[0]  # 2026-11-26T18:54:05.550Z
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float(stamp[19:-1] or 0)


def test_expired_message_fails_with_one_dsn(network: Network, make_sender: Sender) -> None:
    a = make_sender(queue_lifetime='"3s"')
    submit(a, ["z@servfail.test"], message("too late"))
    wait_for(lambda: len(dsns(a)) == 1, 20)
    time.sleep(1.5)
    (dsn,) = dsns(a)
    (fields,) = report_fields(dsn)
    assert (fields["action"], fields["status"]) == ("failed", "5.4.7")
    assert "gave up: the message is older than the queue lifetime" in fields["diagnostic-code"]
    assert "servfail.test" in fields["diagnostic-code"]  # the last error says why
    results = [r for r in a.log_events("queue.result") if "rcpt=z@servfail.test" in r]
    assert all("result=deferred" in r for r in results[:-1]) and "result=failed" in results[-1]
    assert run_cli_in_process(a.config, "queue", "list").stdout == "queue is empty\n"


def test_sendmail_queues_local_and_remote_and_null_sender_never_bounces(network: Network, make_sender: Sender) -> None:
    a = make_sender(start=False)
    # Written while the server is down: the maildrop keeps it until the server starts.
    cron = b"To: alice, bob@b.test\nBcc: bob2@b2.test\nSubject: cron output\n\nline one\n.\nnot part of it\n"
    result = run_cli(a.config, "sendmail", "-t", "-F", "Cron Daemon", "-f", "alice", stdin=cron.decode())
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    typo = run_cli(a.config, "sendmail", "nobody@a.test", stdin="Subject: x\n\nx\n", check=False)
    assert (typo.returncode, typo.stderr) == (67, "kartero: nobody@a.test: no such local user or alias\n")
    assert len(list((a.root / "data" / "maildrop").glob("*.msg"))) == 1
    # The null sender: a failure is final and nobody hears of it (no bounce loops).
    run_cli(a.config, "sendmail", "-f", "<>", "x@null.test", stdin="Subject: bounce of a bounce\n\n.\n")
    # A remote sender hears of its failure through the queue: carol's Postfix mailbox gets the DSN.
    carol_before = len(network.carol_messages())
    run_cli(a.config, "sendmail", "-f", "carol@c.test", "y@null.test", stdin="Subject: for null\n\nhi\n")
    bob_before, bob2_before = len(network.b.messages("bob@b.test")), len(network.b.messages("bob2@b2.test"))
    a.start()
    wait_for(lambda: len(network.b.messages("bob@b.test")) == bob_before + 1
             and len(network.b.messages("bob2@b2.test")) == bob2_before + 1
             and len(network.carol_messages()) == carol_before + 1, 20)  # fmt: skip
    local = a.messages("alice@a.test")
    assert len(local) == 1 and local[0].startswith(b"Return-Path: <alice@a.test>\r\nReceived: by mx.a.test (Kartero ")
    at_b = network.b.messages("bob@b.test")[-1]
    assert after_received(network.b.messages("bob2@b2.test")[-1]) == after_received(at_b)
    header, _, body = after_received(at_b).partition(b"\r\n\r\n")
    assert body == b"line one\r\n"
    assert b"Bcc" not in at_b and b"From: Cron Daemon <alice@a.test>\r\n" in header
    assert header.startswith(b"Date: ") and b"\r\nMessage-ID: <" in header and b"Subject: cron output" in header
    dsn = network.carol_messages()[-1]
    assert dsn.startswith(b"Return-Path: <>\n") and b"Final-Recipient: rfc822; y@null.test\nAction: failed\n" in dsn
    time.sleep(1.5)
    assert dsns(a) == [] and len(network.carol_messages()) == carol_before + 1
    null_results = [r for r in a.log_events("queue.result") if "rcpt=x@null.test" in r]
    assert len(null_results) == 1 and "result=failed" in null_results[0]
    assert not [line for line in a.log_events("queue.dsn") if "x@null.test" in line]
    assert run_cli_in_process(a.config, "queue", "list").stdout == "queue is empty\n"


def test_flush_sends_the_waiting_messages_over_one_connection(network: Network, make_sender: Sender) -> None:
    a = make_sender(retry_first='"1h"', retry_max='"1h"')
    for n in range(3):
        submit(a, ["dan@down.test"], message(f"waiting {n}"))
    wait_for(lambda: len(a.log_events("queue.result")) == 3, 20)
    listing = run_cli_in_process(a.config, "queue", "list", "--json").stdout.splitlines()
    assert len(listing) == 3
    down = KarteroServer(network.root / "down2", host=DOWN, port=network.port, domains=("down.test",),
                         hostname="mx.down.test")  # fmt: skip
    down.add_user("dan@down.test")
    down.start()
    try:
        assert run_cli_in_process(a.config, "queue", "flush").stdout == "3 recipients due now\n"
        wait_for(lambda: len(down.messages("dan@down.test")) == 3, 20)
        sessions = {line.split("session=")[1].split()[0] for line in down.wait_events("smtp.message", 3)}
        assert len(sessions) == 1, down.log
    finally:
        assert down.stop() == 0, down.log
    assert sorted(after_received(m) for m in down.messages("dan@down.test")) == [
        message(f"waiting {n}") for n in range(3)
    ]


def test_sigkill_during_delivery_loses_nothing_and_repeats_nothing_recorded(
    network: Network, make_sender: Sender
) -> None:
    a = make_sender(retry_first='"1h"', retry_max='"1h"')
    count = 400
    client = smtplib.SMTP(A, a.submission_port, local_hostname="laptop.a.test", timeout=30)
    with client:
        client.starttls(context=tls_context())
        client.login("alice@a.test", PASSWORD)
        for n in range(count):
            client.sendmail("alice@a.test", ["dan@down.test"], message(f"kill {n}"))
    wait_for(lambda: len(a.log_events("queue.result")) == count, 30)  # each tried once, deferred for an hour
    down = KarteroServer(network.root / "down3", host=DOWN, port=network.port, domains=("down.test",),
                         hostname="mx.down.test")  # fmt: skip
    down.add_user("dan@down.test")
    down.start()
    try:
        run_cli_in_process(a.config, "queue", "flush")
        wait_for(lambda: len(down.log_events("smtp.message")) >= 40, 20)
        a.kill()
        listed = run_cli_in_process(a.config, "queue", "list", "--json").stdout
        queued_at_kill = {json.loads(line)["id"] for line in listed.splitlines()}
        assert 0 < len(queued_at_kill) < count, "the kill came after the run; nothing was tested"
        a.start()
        wait_for(lambda: queue_is_empty(a), 30)
        assert run_cli_in_process(a.config, "queue", "list").stdout == "queue is empty\n"
        arrived = [re.search(rb"by mx\.a\.test \(Kartero\).*?\tid ([0-9a-f]+)[ ;]", m, re.S) for m in
                   down.messages("dan@down.test")]  # fmt: skip
    finally:
        assert down.stop() == 0, down.log
    ids = [m.group(1).decode() for m in arrived if m is not None]
    assert len(ids) == len(arrived)
    counts = {i: ids.count(i) for i in set(ids)}
    assert len(counts) == count  # every acknowledged message arrived
    repeated = {i for i, c in counts.items() if c > 1}
    assert repeated <= queued_at_kill  # only what was in flight and unrecorded may come twice
    assert all(c <= 2 for c in counts.values())

"""Issue 12: forwarding to another provider with SRS, between real servers on loopback. Kartero F (f.test)
has aliases pointing at remote.test, which a second Kartero (the sink, acting as remote.test's MX,
reached through a `[routes]` entry) receives; its stored Return-Path shows the envelope sender F used.
F's SRS secret is in its config, so the test can make valid, forged and expired SRS addresses itself.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kartero.mail.srs import SRS
from tests.integration.harness import KarteroServer, wait_for

SECRET = "forwarding-test-secret-0123456789"
SRS_ = SRS((SECRET.encode(),))
DAY = 86400.0


@dataclass
class Pair:
    forwarder: KarteroServer
    sink: KarteroServer

    def send(self, sender: str, recipients: list[str], subject: str, extra: str = "") -> None:
        with smtplib.SMTP(self.forwarder.host, self.forwarder.port, timeout=30) as client:
            client.sendmail(sender, recipients, f"{extra}Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode())

    def arrived(self, address: str, subject: str, timeout_s: float = 30.0) -> bytes:
        """The message with `subject` once it is in `address`'s INBOX at the sink."""
        found: list[bytes] = []

        def look() -> bool:
            found[:] = [m for m in self.sink.messages(address) if f"Subject: {subject}\r\n".encode() in m]
            return bool(found)

        wait_for(look, timeout_s)
        assert len(found) == 1
        return found[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("forwarding")
    sink = KarteroServer(root / "sink", domains=("remote.test",), hostname="mx.remote.test", tls=False)
    for user in ("dave@remote.test", "alice@remote.test"):
        sink.add_user(user)
    sink.start()
    forwarder = KarteroServer(
        root / "f",
        domains=("f.test",),
        hostname="mx.f.test",
        tls=False,
        extra_config=f'[srs]\nsecret = "{SECRET}"\n[routes]\n"remote.test" = "{sink.host}:{sink.port}"\n'
        '[delivery]\nretry_first = "1s"\nretry_max = "2s"\nconnect_timeout = "5s"\n',
    )
    forwarder.add_user("bob@f.test")
    forwarder.add_alias("fwd@f.test", "dave@remote.test")
    forwarder.add_alias("team@f.test", "bob@f.test")
    forwarder.add_alias("team@f.test", "dave@remote.test")
    forwarder.add_alias("gone@f.test", "nobody@remote.test")  # the sink refuses it: F's DSN goes back
    forwarder.start()
    try:
        yield Pair(forwarder, sink)
    finally:
        for server in (forwarder, sink):
            if server.process and server.process.poll() is None:
                server.stop()


def return_path(message: bytes) -> str:
    first = message.split(b"\r\n", 1)[0].decode()
    assert first.startswith("Return-Path: <") and first.endswith(">"), first
    return first[len("Return-Path: <") : -1]


def test_issue_12_alias_to_remote_arrives_with_an_srs_sender_and_delivered_to(pair: Pair) -> None:
    pair.send("alice@remote.test", ["fwd@f.test"], "forwarded")
    message = pair.arrived("dave@remote.test", "forwarded")
    sender = return_path(message)
    assert sender.startswith("SRS0=") and sender.endswith("=remote.test=alice@f.test")
    assert SRS_.reverse(sender, time.time()) == "alice@remote.test"
    assert b"\r\nDelivered-To: fwd@f.test\r\nReceived: from " in message  # before F's Received field
    assert message.endswith(b"Subject: forwarded\r\n\r\nbody of forwarded\r\n")


def test_issue_12_mixed_alias_delivers_locally_and_forwards(pair: Pair) -> None:
    pair.send("alice@remote.test", ["team@f.test"], "mixed")
    message = pair.arrived("dave@remote.test", "mixed")
    assert return_path(message).startswith("SRS0=") and b"Delivered-To: team@f.test\r\n" in message
    (local,) = [m for m in pair.forwarder.messages("bob@f.test") if b"Subject: mixed\r\n" in m]
    assert local.startswith(b"Return-Path: <alice@remote.test>\r\n") and b"Delivered-To" not in local


def test_issue_12_a_bounce_to_the_srs_address_reaches_the_original_sender(pair: Pair) -> None:
    srs_address = SRS_.forward("alice@remote.test", "f.test", time.time())
    pair.send("", [srs_address], "bounce", "From: MAILER-DAEMON@remote.test\r\n")
    message = pair.arrived("alice@remote.test", "bounce")
    assert return_path(message) == ""  # still a bounce: the null sender kept


def test_issue_12_a_failed_forward_sends_its_dsn_back_to_the_original_sender(pair: Pair) -> None:
    """The sink refuses the alias's destination: F's failure notice goes to the SRS sender of the
    forwarded copy, which F itself reverses to the original sender."""
    pair.send("alice@remote.test", ["gone@f.test"], "will fail")
    dsn = pair.arrived("alice@remote.test", "Undelivered Mail Returned to Sender", timeout_s=30.0)
    assert return_path(dsn) == "" and b"nobody@remote.test" in dsn


@pytest.mark.parametrize("which", ["forged", "expired", "other secret"])
def test_issue_12_forged_or_expired_srs_addresses_are_refused_at_rcpt(pair: Pair, which: str) -> None:
    now = time.time()
    valid = SRS_.forward("alice@remote.test", "f.test", now)
    address = {
        "forged": valid[:5] + ("B" if valid[5] in "aA" else "A") + valid[6:],
        "expired": SRS_.forward("alice@remote.test", "f.test", now - 22 * DAY),
        "other secret": SRS((b"not the forwarder's secret",)).forward("alice@remote.test", "f.test", now),
    }[which]
    with smtplib.SMTP(pair.forwarder.host, pair.forwarder.port, timeout=30) as client:
        client.ehlo("bounce.remote.test")
        client.mail("")
        assert client.rcpt(address) == (550, b"5.1.1 Invalid or expired SRS address")


def test_issue_12_a_delivered_to_loop_is_not_delivered_again(pair: Pair) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        pair.send("alice@remote.test", ["fwd@f.test"], "looping", "Delivered-To: fwd@f.test\r\n")
    assert (refused.value.smtp_code, refused.value.smtp_error) == (554, b"5.4.6 Mail forwarding loop detected")
    (line,) = pair.forwarder.wait_events("intake.loop", 1)
    assert "rcpt=fwd@f.test" in line

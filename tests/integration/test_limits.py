"""Abuse limits on a real `kartero serve`, clients over loopback (with the loopback exemption turned
off): refused with a 4xx at the limit, accepted again once under it."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import KarteroServer, tls_context
from tests.integration.spares import fresh_server

PASSWORD = "alice password"


def _server(root: Path, store_url: str) -> KarteroServer:
    mx = KarteroServer(
        root,
        limits="connections_per_ip = 3\nconnections_per_ip_per_minute = 8\nmessages_per_user_per_hour = 2\nexempt = []",
        extra_config='[greylisting]\nenabled = true\ndelay = "2s"\nexempt = []\n',
        store_url=store_url,
    )
    mx.add_user("alice@example.test", PASSWORD)
    mx.add_user("carol@example.test", PASSWORD)
    mx.add_user("bob@example.test")
    return mx


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[KarteroServer]:
    mx = fresh_server(request, _server)
    yield mx
    if mx.process and mx.process.poll() is None:
        assert mx.stop() == 0, mx.log


def greeting(server: KarteroServer, source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((server.host, server.port), timeout=10, source_address=(source, 0))
    return sock, sock.recv(1024)


@pytest.mark.store_unused("greetings and 421s: per-address limits count in memory (policy/limits.py ConnectionLimits)")
def test_connections_per_address(server: KarteroServer) -> None:
    open_ones = [greeting(server) for _ in range(3)]
    assert all(g.startswith(b"220 ") for _, g in open_ones)
    refused, reply = greeting(server)
    assert reply == b"421 4.7.0 Too many connections from your address (more than 3 connections at once)\r\n"
    assert refused.recv(1024) == b""  # closed
    refused.close()
    other, reply = greeting(server, "127.0.0.21")  # another address is not affected
    assert reply.startswith(b"220 ")
    other.close()
    open_ones[0][0].close()
    time.sleep(0.3)
    again, reply = greeting(server)  # one left: room again
    assert reply.startswith(b"220 ")
    for sock, _ in [*open_ones[1:], (again, b"")]:
        sock.close()
    # 5 connections so far from 127.0.0.1 in this minute (the refused one counts); the 9th is over the rate.
    for _ in range(3):
        sock, reply = greeting(server)
        assert reply.startswith(b"220 ")
        sock.close()
    sock, reply = greeting(server)
    assert reply == b"421 4.7.0 Too many connections from your address (more than 8 connections a minute)\r\n"
    sock.close()
    assert len(server.wait_events("smtp.limited", 2)) == 2


def test_messages_per_user_per_hour(server: KarteroServer) -> None:
    def submit(user: str) -> tuple[int, bytes]:
        with smtplib.SMTP(server.host, server.submission_port, timeout=30, source_address=("127.0.0.31", 0)) as c:
            c.starttls(context=tls_context())
            c.login(user, PASSWORD)
            code, reply = c.mail(user)
            if code != 250:
                return code, reply
            c.rcpt("bob@example.test")
            return c.data(f"From: {user}\r\nSubject: n\r\n\r\nhi\r\n".encode())

    assert submit("alice@example.test")[0] == 250
    assert submit("alice@example.test")[0] == 250
    assert submit("alice@example.test") == (
        451, b"4.7.1 Sending limit of 2 messages an hour reached, try again in 60 minutes"
    )  # fmt: skip
    assert submit("carol@example.test")[0] == 250  # per user
    assert len(server.messages("bob@example.test")) == 3


def test_greylisting(server: KarteroServer) -> None:
    def attempt(sender: str, rcpt: str = "bob@example.test") -> tuple[int, bytes]:
        with smtplib.SMTP(server.host, server.port, timeout=30, source_address=("127.0.0.41", 0)) as c:
            c.ehlo()
            c.mail(sender)
            code, reply = c.rcpt(rcpt)
            if code == 250:
                code, reply = c.data(b"Subject: grey\r\n\r\nhi\r\n")
            return code, reply

    assert attempt("a@sender.example") == (451, b"4.7.1 Greylisted, please try again in 2 seconds")
    assert attempt("a@sender.example")[0] == 451  # too soon
    assert attempt("nobody-checks@sender.example", "nosuchuser@example.test")[0] == 550  # not greylisted
    time.sleep(2.1)
    assert attempt("a@sender.example")[0] == 250
    assert attempt("a@sender.example")[0] == 250  # the triplet is known now
    assert attempt("b@sender.example")[0] == 451  # another sender is not
    assert len(server.messages("bob@example.test")) == 2
    assert len(server.wait_events("policy.greylisted", 3)) == 3


def test_dnsbl(tmp_path: Path) -> None:
    zone = (
        "41.0.0.127.bl.test. 60 IN A 127.0.0.2\n"
        "42.0.0.127.bl.test. 60 IN A 127.255.255.254\n"  # "you may not query": not a listing
    )
    with LoopbackDNS(zone) as dns:
        mx = KarteroServer(tmp_path / "bl", extra_config=dns.config + '[dnsbl]\nzones = ["bl.test"]\nexempt = []\n')
        mx.add_user("bob@example.test")
        mx.start()
        try:

            def rcpt_from(source: str) -> tuple[int, bytes]:
                with smtplib.SMTP(mx.host, mx.port, timeout=30, source_address=(source, 0)) as c:
                    c.ehlo()
                    c.mail("someone@sender.example")
                    return c.rcpt("bob@example.test")

            assert rcpt_from("127.0.0.41") == (
                554, b"5.7.1 Service unavailable; client [127.0.0.41] blocked using bl.test"
            )  # fmt: skip
            assert rcpt_from("127.0.0.41")[0] == 554  # from the cache
            assert rcpt_from("127.0.0.42") == (250, b"2.1.5 Recipient OK")
            assert rcpt_from("127.0.0.43") == (250, b"2.1.5 Recipient OK")
            assert len(mx.wait_events("policy.dnsbl", 2)) == 2
            assert dns.queried(["41.0.0.127.bl.test"]) == [("41.0.0.127.bl.test", "A")]
        finally:
            assert mx.stop() == 0, mx.log

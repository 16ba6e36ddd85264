"""Issue 8, finding 4: one address (or one flooded service) cannot take the others offline.

Real `kartero serve`, with the loopback exemption turned off; the crowd connects from 127.0.0.1 (or
from many 127.0.1.x addresses), the well-behaved client from 127.0.0.2.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer, tls_context

PASSWORD = "bob password"


@pytest.fixture(autouse=True)
def many_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 8192):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))


class Crowd:
    """Many connections read together; `replies[sock]` is all each one has received."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self.replies: dict[socket.socket, bytes] = {}
        self.closed: set[socket.socket] = set()
        self._selector = selectors.DefaultSelector()

    def connect(self, port: int, count: int, sources: list[str]) -> list[socket.socket]:
        new = []
        for i in range(count):
            source = (sources[i % len(sources)], 0)
            sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=source)
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
            self.replies[sock] = b""
            new.append(sock)
        self.socks += new
        return new

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in self._selector.select(left):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    self.replies[sock] += data
                else:
                    self._selector.unregister(sock)
                    self.closed.add(sock)

    def read_until(self, done: object, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():  # type: ignore[operator]
            assert time.monotonic() < deadline, "the crowd did not get its replies in time"
            self.read(0.1)

    def send(self, socks: list[socket.socket], data: bytes) -> None:
        for sock in socks:
            if sock not in self.closed:
                with contextlib.suppress(OSError):
                    sock.send(data)

    def close(self) -> None:
        self._selector.close()
        for sock in self.socks:
            sock.close()


@pytest.fixture
def crowd() -> Iterator[Crowd]:
    c = Crowd()
    yield c
    c.close()


def send_message_from_elsewhere(server: KarteroServer) -> float:
    started = time.monotonic()
    with smtplib.SMTP(server.host, server.port, timeout=5, source_address=("127.0.0.2", 0)) as client:
        client.sendmail("a@sender.example", ["bob@example.test"], b"Subject: still here\r\n\r\nhi\r\n")
    return time.monotonic() - started


def imap_login_from_elsewhere(server: KarteroServer) -> float:
    started = time.monotonic()
    with socket.create_connection((server.host, server.imap_port), timeout=5, source_address=("127.0.0.2", 0)) as s:
        data = b""
        s.sendall(f'a LOGIN bob@example.test "{PASSWORD}"\r\n'.encode())
        while b"\r\na " not in data:
            more = s.recv(4096)
            assert more, data
            data += more
        assert b"\r\na OK [CAPABILITY " in data, data
    return time.monotonic() - started


def test_issue_8_a_thousand_slowloris_connections_from_one_address(tmp_path: Path, crowd: Crowd) -> None:
    server = KarteroServer(tmp_path / "mx", limits='exempt = []\ncommand_deadline = "2s"\nlogin_deadline = "6s"')
    server.add_user("bob@example.test", PASSWORD)
    server.start()
    try:
        imap = crowd.connect(server.imap_port, 1000, ["127.0.0.1"])
        smtp = crowd.connect(server.port, 100, ["127.0.0.1"])
        connected = time.monotonic()
        crowd.read_until(lambda: all(b"\r\n" in crowd.replies[s] for s in crowd.socks))
        imap_in = [s for s in imap if crowd.replies[s].startswith(b"* OK ")]
        smtp_in = [s for s in smtp if crowd.replies[s].startswith(b"220 ")]
        assert len(imap_in) == 10 and len(smtp_in) == 50
        for sock in set(imap) - set(imap_in):
            assert crowd.replies[sock] == (
                b"* BYE Too many connections from your address (more than 10 connections at once)\r\n"
            )
        for sock in set(smtp) - set(smtp_in):
            assert crowd.replies[sock] == (
                b"421 4.7.0 Too many connections from your address (more than 50 connections at once)\r\n"
            )
        # Half the IMAP sessions and all SMTP ones trickle a command a byte at a time; the other IMAP
        # half sends complete commands but never logs in.
        tricklers, chatters = imap_in[:5] + smtp_in, imap_in[5:]
        for i in range(3):
            crowd.send(tricklers, b"n"[:1] if i == 0 else b"o")
            crowd.send(chatters, f"c{i} NOOP\r\n".encode())
            crowd.read(0.5)
        # Meanwhile, from another address, a message is accepted and an IMAP login completes at once.
        assert send_message_from_elsewhere(server) < 1.0
        assert imap_login_from_elsewhere(server) < 1.0
        for _ in range(12):  # a byte (or a command) every half second: the deadlines pass anyway
            if all(s in crowd.closed for s in imap_in + smtp_in):
                break
            crowd.send(tricklers, b"o")
            crowd.send(chatters, b"c NOOP\r\n")
            crowd.read(0.5)
        crowd.read_until(lambda: all(s in crowd.closed for s in imap_in + smtp_in))
        took = time.monotonic() - connected
        assert took < 10.0, f"the slow sessions lasted {took:.1f} s"
        for sock in imap_in[:5]:
            assert crowd.replies[sock].endswith(b"* BYE Command not completed in time\r\n")
        for sock in smtp_in:
            assert crowd.replies[sock].endswith(b"421 4.4.2 Command not completed in time, closing connection\r\n")
        for sock in chatters:
            assert crowd.replies[sock].endswith(b"* BYE Login not completed in time\r\n")
        assert len(server.messages("bob@example.test")) == 1
        server.wait_events("imap.deadline", 10)
        assert len(server.log_events("smtp.deadline")) == 50
        assert len(server.log_events("imap.limited")) == 990 and len(server.log_events("smtp.limited")) == 50
        deadline_lines = server.log_events("imap.deadline")
        assert sum("deadline=login" in line for line in deadline_lines) == 5
        assert sum("deadline=command" in line for line in deadline_lines) == 5
    finally:
        assert server.stop() == 0, server.log


def test_issue_8_an_imap_flood_never_refuses_smtp(tmp_path: Path, crowd: Crowd) -> None:
    server = KarteroServer(tmp_path / "mx", limits="imap_connections = 500")
    server.add_user("bob@example.test", PASSWORD)
    server.start()
    try:
        sources = [f"127.0.1.{i}" for i in range(1, 251)]  # 4 each: under every per-address limit
        imap = crowd.connect(server.imap_port, 1000, sources)
        crowd.read_until(lambda: all(b"\r\n" in crowd.replies[s] for s in imap))
        refused = [s for s in imap if crowd.replies[s] == b"* BYE Too many connections, try later\r\n"]
        admitted = [s for s in imap if crowd.replies[s].startswith(b"* OK ")]
        assert len(refused) == 500 and len(admitted) == 500
        assert send_message_from_elsewhere(server) < 1.0
        with smtplib.SMTP(server.host, server.submission_port, timeout=5, source_address=("127.0.0.2", 0)) as c:
            assert c.noop()[0] == 250
        assert len(server.messages("bob@example.test")) == 1
    finally:
        assert server.stop() == 0, server.log


def test_issue_8_connections_that_never_finish_a_tls_handshake_count_too(tmp_path: Path, crowd: Crowd) -> None:
    server = KarteroServer(tmp_path / "mx", limits="exempt = []")
    server.add_user("bob@example.test", PASSWORD)
    server.start()
    try:
        stalled = crowd.connect(server.imaps_port, 30, ["127.0.0.1"])  # TCP only: no ClientHello, ever
        crowd.read_until(lambda: len(crowd.closed) >= 20, timeout_s=10)
        crowd.read(0.5)
        assert len(crowd.closed) == 20 and all(crowd.replies[s] == b"" for s in stalled)  # dropped unanswered
        assert len(server.wait_events("imap.limited", 20)) == 20
        started = time.monotonic()
        raw = socket.create_connection((server.host, server.imaps_port), timeout=5, source_address=("127.0.0.2", 0))
        with tls_context().wrap_socket(raw, server_hostname=server.hostname) as tls:
            tls.sendall(f'a LOGIN bob@example.test "{PASSWORD}"\r\n'.encode())
            data = b""
            while b"\r\na " not in data:
                data += tls.recv(4096)
            assert b"\r\na OK " in data
        assert time.monotonic() - started < 1.0
    finally:
        assert server.stop() == 0, server.log


def test_issue_8_login_deadline_and_sessions_per_account(tmp_path: Path) -> None:
    limits = 'exempt = []\nlogin_deadline = "2s"\nconnections_per_user_and_ip = 2'
    server = KarteroServer(tmp_path / "mx", limits=limits)
    server.add_user("bob@example.test", PASSWORD)
    server.start()
    try:
        started = time.monotonic()
        submission = smtplib.SMTP(server.host, server.submission_port, timeout=10)
        pop3 = socket.create_connection((server.host, server.pop3_port), timeout=10)
        assert pop3.recv(1024).startswith(b"+OK ")
        submission.ehlo()
        while time.monotonic() - started < 1.8:  # busy, but never logging in
            assert submission.noop()[0] == 250
            pop3.sendall(b"CAPA\r\n")
            time.sleep(0.3)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            for _ in range(20):
                submission.noop()
                time.sleep(0.2)
        pop3.settimeout(5)
        data = b""
        while not data.endswith(b"-ERR Login not completed in time\r\n"):
            more = pop3.recv(4096)
            assert more, data
            data += more
        assert time.monotonic() - started < 3.5
        pop3.close()
        lines = server.wait_events("smtp.deadline", 1) + server.wait_events("pop3.deadline", 1)
        assert all(line.endswith(" deadline=login") for line in lines)
        # Two logged-in IMAP sessions of bob from one address; a third is refused after its login.
        sessions = []
        for _ in range(3):
            s = socket.create_connection((server.host, server.imap_port), timeout=10)
            s.recv(1024)
            s.sendall(f'a LOGIN bob@example.test "{PASSWORD}"\r\n'.encode())
            sessions.append(s)
        replies = []
        for s in sessions:
            data = b""
            while not data.endswith(b"\r\n") or (b"a OK" not in data and b"* BYE" not in data):
                data += s.recv(4096)
            replies.append(data)
        assert [r.startswith(b"a OK ") for r in replies].count(True) == 2
        refusal = b"* BYE Too many connections for this account from your address (more than 2 connections at once)\r\n"
        assert refusal in replies
        for s in sessions:
            s.close()
    finally:
        assert server.stop() == 0, server.log

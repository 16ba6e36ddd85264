"""Issue 8, finding 6: memory is bounded by a constant, not by the message.

A real `kartero serve`; a raw SMTP client streams a 200 MB message, then raw IMAP and POP3 clients fetch
it, and one is APPENDed over IMAP. The server's peak resident memory (VmHWM, reset before each step) must
grow by less than 100 MB for the receipt, the FETCH, the RETR and the APPEND, and by less than 200 MB for 8
parallel fetches of a 45 MB message.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import socket
import time
from pathlib import Path

from tests.integration.harness import KarteroServer
from tests.integration.test_backpressure import peak_growth_kb, reset_peak

PASSWORD = "bob password"
LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklm\r\n"  # 80+2


def recv_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        more = sock.recv(1 << 16)
        if not more:
            raise AssertionError(f"closed before {marker!r}: {data[-300:]!r}")
        data += more
    return data


def send_message(server: KarteroServer, lines: int, subject: str) -> tuple[bytes, int, str]:
    """Stream a message of `lines` body lines over SMTP; returns (the reply, its size, its SHA-256)."""
    header = f"From: alice@example.org\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\r\n".encode()
    digest = hashlib.sha256(header)
    block = LINE * 1000
    with socket.create_connection((server.host, server.port), timeout=120) as sock:
        recv_until(sock, b"220 ")
        sock.sendall(b"EHLO client.example.org\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.test>\r\n"
                     b"DATA\r\n")  # fmt: skip
        recv_until(sock, b"354 ")
        sock.sendall(header)
        for _ in range(lines // 1000):
            sock.sendall(block)
            digest.update(block)
        sock.sendall(b".\r\nQUIT\r\n")
        reply = recv_until(sock, b"221 ")
    return reply, len(header) + len(block) * (lines // 1000), digest.hexdigest()


def fetch_digest(server: KarteroServer, uid: int) -> tuple[int, str]:
    """BODY.PEEK[] of one message over a raw IMAP connection, hashed as it arrives (the client keeps
    no copy); returns (literal size, SHA-256 of the literal)."""
    with socket.create_connection((server.host, server.imap_port), timeout=120) as sock:
        recv_until(sock, b"* OK")
        sock.sendall(f"a LOGIN bob@example.test \"{PASSWORD}\"\r\nb SELECT INBOX\r\n".encode())
        recv_until(sock, b"b OK")
        sock.sendall(f"c UID FETCH {uid} (BODY.PEEK[])\r\n".encode())
        data = recv_until(sock, b"}\r\n")
        match = re.search(rb"\{(\d+)\}\r\n", data)
        assert match is not None, data[:200]
        size = int(match.group(1))
        rest = data[match.end() :]
        digest = hashlib.sha256()
        got = 0
        while True:
            take = rest[: size - got]
            digest.update(take)
            got += len(take)
            if got == size:
                break
            rest = sock.recv(1 << 20)
            assert rest, "connection closed inside the literal"
        return size, digest.hexdigest()


def retr_digest(server: KarteroServer, number: int) -> tuple[int, str]:
    """POP3 RETR over a raw connection, undone (dot-stuffing) and hashed as it arrives."""
    with socket.create_connection((server.host, server.pop3_port), timeout=120) as sock:
        recv_until(sock, b"+OK")
        sock.sendall(f"USER bob@example.test\r\nPASS {PASSWORD}\r\nRETR {number}\r\n".encode())
        data = recv_until(sock, b"+OK message follows\r\n")
        data = data[data.index(b"+OK message follows\r\n") + 21 :]
        digest, size = hashlib.sha256(), 0
        while True:
            end = data.find(b"\r\n.\r\n")
            if end >= 0:
                last = data[: end + 2]
                digest.update(last)
                return size + len(last), digest.hexdigest()
            keep = data[-4:]  # the terminator may straddle two reads
            digest.update(data[:-4])
            size += len(data) - 4
            more = sock.recv(1 << 20)
            assert more, "connection closed inside the message"
            data = keep + more


def append_message(server: KarteroServer, lines: int) -> tuple[bytes, int, str]:
    """APPEND a message of `lines` body lines as one synchronising literal; returns (the tagged reply,
    the message size, its SHA-256)."""
    header = b"From: bob@example.test\r\nSubject: appended\r\n\r\n"
    block = LINE * 1000
    size = len(header) + len(block) * (lines // 1000)
    digest = hashlib.sha256(header)
    with socket.create_connection((server.host, server.imap_port), timeout=120) as sock:
        recv_until(sock, b"* OK")
        sock.sendall(f"a LOGIN bob@example.test \"{PASSWORD}\"\r\nb APPEND Archive {{{size}}}\r\n".encode())
        recv_until(sock, b"+ ")
        sock.sendall(header)
        for _ in range(lines // 1000):
            sock.sendall(block)
            digest.update(block)
        sock.sendall(b"\r\n")
        reply = recv_until(sock, b"b ")
        return recv_until(sock, b"\r\n", reply), size, digest.hexdigest()


def test_issue_8_200_mb_message_in_and_out_with_bounded_memory(tmp_path: Path) -> None:
    server = KarteroServer(tmp_path / "mx", domains=("example.test",), limits='message_size = "300MB"')
    server.add_user("bob@example.test", PASSWORD)
    server.start()
    try:
        assert server.process is not None
        pid = server.process.pid
        before = reset_peak(pid)
        reply, size, sent_digest = send_message(server, 2_450_000, "big")  # ~201 MB
        receive_growth_mb = peak_growth_kb(pid, before) / 1024
        assert b"250 2.0.0" in reply, reply
        before = reset_peak(pid)
        fetched_size, digest = fetch_digest(server, 1)
        fetch_growth_mb = peak_growth_kb(pid, before) / 1024
        stored = server.messages("bob@example.test")
        assert len(stored) == 1
        trace = len(stored[0]) - size  # Return-Path and Received come first
        assert fetched_size == len(stored[0]) and hashlib.sha256(stored[0][trace:]).hexdigest() == sent_digest
        assert digest == hashlib.sha256(stored[0]).hexdigest()
        before = reset_peak(pid)
        assert retr_digest(server, 1) == (fetched_size, digest)  # no line of it starts with a dot
        retr_growth_mb = peak_growth_kb(pid, before) / 1024
        del stored
        print(f"200 MB message: receive +{receive_growth_mb:.0f} MB, IMAP FETCH +{fetch_growth_mb:.0f} MB,"
              f" POP3 RETR +{retr_growth_mb:.0f} MB")
        assert receive_growth_mb < 100, receive_growth_mb
        assert fetch_growth_mb < 100, fetch_growth_mb
        assert retr_growth_mb < 100, retr_growth_mb

        before = reset_peak(pid)
        reply, size, sent_digest = append_message(server, 2_450_000)
        append_growth_mb = peak_growth_kb(pid, before) / 1024
        assert b"b OK [APPENDUID " in reply, reply
        (appended,) = server.messages("bob@example.test", "Archive")
        assert len(appended) == size and hashlib.sha256(appended).hexdigest() == sent_digest
        del appended
        print(f"200 MB APPEND: +{append_growth_mb:.0f} MB")
        assert append_growth_mb < 100, append_growth_mb

        reply, _, _ = send_message(server, 550_000, "medium")  # ~45 MB
        assert b"250 2.0.0" in reply
        before = reset_peak(pid)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: fetch_digest(server, 2), range(8)))
        parallel_growth_mb = peak_growth_kb(pid, before) / 1024
        assert len(set(results)) == 1
        print(f"8 parallel fetches of 45 MB: +{parallel_growth_mb:.0f} MB")
        assert parallel_growth_mb < 200, parallel_growth_mb
    finally:
        server.stop()


def test_issue_8_spool_files_never_mix_two_messages(tmp_path: Path) -> None:
    """A large BDAT chunk abandoned with RSET, and a large APPEND whose command line turns out bad, leave
    spool files behind that the next large message must not be written after (found in review: the
    next message was stored with the abandoned one's bytes in front, or refused)."""
    server = KarteroServer(tmp_path / "mx", domains=("example.test",))
    server.add_user("bob@example.test", PASSWORD)
    server.start()
    try:
        stale = b"Subject: stale\r\n\r\n" + (b"O" * 78 + b"\r\n") * 20_000  # 1.6 MB: spilled
        fresh = b"Subject: fresh\r\n\r\n" + (b"N" * 78 + b"\r\n") * 20_000
        with socket.create_connection((server.host, server.port), timeout=60) as sock:
            recv_until(sock, b"220 ")
            for command in (b"EHLO c.example.org", b"MAIL FROM:<a@example.org>", b"RCPT TO:<bob@example.test>"):
                sock.sendall(command + b"\r\n")
                recv_until(sock, b"250 ")
            sock.sendall(b"BDAT %d\r\n" % len(stale) + stale)
            assert b"250 2.0.0 %d octets received" % len(stale) in recv_until(sock, b"received\r\n")
            sock.sendall(b"RSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\n")
            recv_until(sock, b"Recipient OK\r\n")
            sock.sendall(b"BDAT %d LAST\r\n" % len(fresh) + fresh)
            assert b"250 2.0.0 Message accepted" in recv_until(sock, b"accepted as")
        (stored,) = server.messages("bob@example.test")
        assert stored.endswith(b"\r\n" + fresh) and b"stale" not in stored

        with socket.create_connection((server.host, server.imap_port), timeout=60) as sock:
            recv_until(sock, b"* OK")
            sock.sendall(f'a LOGIN bob@example.test "{PASSWORD}"\r\n'.encode())
            recv_until(sock, b"a OK")
            sock.sendall(b"b APPEND Archive {%d+}\r\n" % len(stale) + stale + b" )\r\n")  # junk after it
            assert b"b BAD" in recv_until(sock, b"b BAD")
            sock.sendall(b"c APPEND Archive {%d+}\r\n" % len(fresh) + fresh + b"\r\n")
            assert b"c OK [APPENDUID" in recv_until(sock, b"c ")
        assert server.messages("bob@example.test", "Archive") == [fresh]
    finally:
        server.stop()


def test_issue_8_large_message_is_relayed_with_bounded_memory(tmp_path: Path) -> None:
    """A 60 MB message submitted to A for a remote domain goes out to B (A's route for b.test) read a
    piece at a time: A's peak RSS grows by less than 100 MB over submission and delivery, and B stores
    the message byte for byte."""
    import smtplib

    from tests.integration.harness import tls_context

    b = KarteroServer(tmp_path / "b", domains=("b.test",), limits='message_size = "100MB"')
    b.add_user("carol@b.test", PASSWORD)
    b.start()
    a = KarteroServer(tmp_path / "a", domains=("a.test",), limits='message_size = "100MB"',
                      extra_config=f'[routes]\n"b.test" = "{b.host}:{b.port}"\n')  # fmt: skip
    a.add_user("alice@a.test", PASSWORD)
    a.start()
    try:
        assert a.process is not None
        body = LINE * 730_000  # ~60 MB
        message = b"From: alice@a.test\r\nTo: carol@b.test\r\nSubject: big\r\n\r\n" + body
        before = reset_peak(a.process.pid)
        with smtplib.SMTP(a.host, a.submission_port, timeout=120) as client:
            client.starttls(context=tls_context())
            client.login("alice@a.test", PASSWORD)
            client.sendmail("alice@a.test", ["carol@b.test"], message)
        deadline = time.monotonic() + 120
        while not b.messages("carol@b.test") and time.monotonic() < deadline:
            time.sleep(0.2)
        growth_mb = peak_growth_kb(a.process.pid, before) / 1024
        (stored,) = b.messages("carol@b.test")
        assert stored.endswith(b"\r\n" + message[message.index(b"From:") :])
        print(f"60 MB submitted and relayed: sender +{growth_mb:.0f} MB")
        assert growth_mb < 100, growth_mb
    finally:
        a.stop()
        b.stop()

"""Issue 9's session extensions against a real `kartero serve`: MULTIAPPEND (RFC 3502), UNAUTHENTICATE
(RFC 8437) and NOTIFY (RFC 5465), driven with imaplib (and a raw socket where imaplib has no verb)."""

from __future__ import annotations

import imaplib
import re
import socket

import pytest

from tests.integration.harness import KarteroServer

PASSWORD = "secret-password"


class Raw:
    """A line-oriented IMAP connection for what imaplib cannot say."""

    def __init__(self, mx: KarteroServer) -> None:
        self.sock = socket.create_connection((mx.host, mx.imap_port), timeout=30)
        self.reader = self.sock.makefile("rb")
        assert self.reader.readline().startswith(b"* OK")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, tag: bytes) -> list[bytes]:
        """Lines up to and including the tagged response of `tag` (literals are read as lines)."""
        lines = []
        while True:
            line = self.reader.readline()
            assert line, lines
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def test_multiappend_stores_large_and_small_messages_all_at_once(mx: KarteroServer) -> None:
    """Two messages past the 1 MiB spool threshold and one small one in one APPEND: each large one goes
    to the session's spool file as it arrives, and all three are stored byte for byte, in order."""
    first = b"Subject: one\r\n\r\n" + (b"a" * 1022 + b"\r\n") * 1500
    second = b"Subject: two\r\n\r\nsmall\r\n"
    third = b"Subject: three\r\n\r\n" + (b"c" * 998 + b"\r\n") * 2000
    raw = Raw(mx)
    raw.send(f"a LOGIN bob@example.test {PASSWORD}\r\n".encode())
    raw.until(b"a")
    raw.send(b"b APPEND Archive (\\Flagged) {%d+}\r\n" % len(first) + first)
    raw.send(b' " 7-Feb-1994 22:43:04 -0800" {%d+}\r\n' % len(second) + second)
    raw.send(b" {%d+}\r\n" % len(third) + third + b"\r\n")
    (done,) = raw.until(b"b")
    assert re.fullmatch(rb"b OK \[APPENDUID \d+ 1:3\] APPEND completed\r\n", done)
    raw.close()
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        imap.select("Archive", readonly=True)
        for number, message in enumerate((first, second, third), 1):
            _, fetched = imap.fetch(str(number), "(BODY.PEEK[])")
            assert fetched[0][1] == message  # type: ignore[index]
        _, flags = imap.fetch("1:3", "(FLAGS)")
        assert b"\\Flagged" in flags[0] and b"\\Flagged" not in flags[1]  # type: ignore[operator]
    assert not list((mx.root / "data" / "spool").iterdir())  # the spool file went with the command


def test_multiappend_refused_whole_stores_nothing(mx: KarteroServer) -> None:
    raw = Raw(mx)
    raw.send(f"a LOGIN bob@example.test {PASSWORD}\r\n".encode())
    raw.until(b"a")
    raw.send(b"b APPEND Nowhere {5+}\r\nhello {5+}\r\nworld\r\n")
    assert raw.until(b"b") == [b"b NO [TRYCREATE] No such mailbox\r\n"]
    raw.close()
    assert mx.messages("bob@example.test", "INBOX") == []


def test_unauthenticate_with_imaplib(mx: KarteroServer) -> None:
    imaplib.Commands.setdefault("UNAUTHENTICATE", ("AUTH", "SELECTED"))
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        assert b" UNAUTHENTICATE " in imap.capability()[1][0]  # type: ignore[operator]
        imap.select("INBOX")
        assert imap._simple_command("UNAUTHENTICATE")[0] == "OK"
        with pytest.raises(imaplib.IMAP4.error, match="SELECT not allowed now"):  # the server's answer
            imap.select("INBOX")
        imap.state = "NONAUTH"  # imaplib does not know the verb: tell it where the session is
        assert imap.login("carol@example.test", PASSWORD)[0] == "OK"
        assert imap.status("INBOX", "(MESSAGES)")[1] == [b'"INBOX" (MESSAGES 0)']
    assert mx.wait_events("imap.unauthenticate", 1)

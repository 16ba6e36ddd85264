"""Issue 8: mail built to hurt the server is stored like any other and never holds or sinks other mail.

A real `kartero serve` on loopback; several smtplib clients at once, one of them hostile.
"""

from __future__ import annotations

import concurrent.futures
import imaplib
import smtplib
import time

from tests.integration.harness import KarteroServer, strip_trace

# Bytes-to-bytes and other non-text codecs Python knows by name: asking `bytes.decode` for them raised
# LookupError inside the store's transaction, so each poisoned message rolled back a whole batch.
POISON_CHARSETS = ("rot13", "hex", "zlib", "base64", "uu", "bz2", "quopri", "idna", "undefined", "punycode")


def message(n: int, subject: str) -> bytes:
    return (f"From: sender{n}@example.org\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{n}.{time.monotonic_ns()}@example.org>\r\n\r\nmessage {n}\r\n").encode()  # fmt: skip


def send(mx: KarteroServer, messages: list[bytes]) -> list[tuple[int, bytes]]:
    """Send each message on one connection; the reply to each DATA (smtplib raises on a refusal)."""
    replies = []
    with smtplib.SMTP(mx.host, mx.port, local_hostname="client.example.org", timeout=60) as smtp:
        for data in messages:
            smtp.ehlo_or_helo_if_needed()
            smtp.mail("sender@example.org")
            smtp.rcpt("bob@example.test")
            replies.append(smtp.data(data))
    return replies


def test_issue_8_poison_headers_never_refuse_other_mail(mx: KarteroServer) -> None:
    poison = [message(1000 + i, f"=?{charset}?q?x?=") for i, charset in enumerate(POISON_CHARSETS * 2)]
    honest = [[message(100 * s + i, f"honest {s} {i}") for i in range(15)] for s in range(4)]
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda batch: send(mx, batch), [poison, *honest]))
    assert all(code == 250 for replies in results for code, _ in replies), results
    stored = {strip_trace(m) for m in mx.messages("bob@example.test")}
    assert stored == {*poison, *(m for batch in honest for m in batch)}  # every one, byte for byte
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        imap.login("bob@example.test", "secret-password")
        imap.select("INBOX")
        _, data = imap.search(None, "ALL")
        assert len(data[0].split()) == len(poison) + 60
        _, fetched = imap.fetch("1:*", "(ENVELOPE BODYSTRUCTURE)")  # answerable for every message
        assert sum(1 for item in fetched if isinstance(item, bytes) and b"ENVELOPE" in item) == len(poison) + 60



def test_issue_8_huge_tagged_subject_is_stored_without_holding_other_mail(mx: KarteroServer) -> None:
    # 10x the issue's 120 KB Subject of list tags (each "[a]" made the old base-subject loop re-scan the
    # rest: 36 s at 120 KB, in the thread that commits everyone's mail), folded into lines of ~80 octets.
    subject = "\r\n ".join("[a] " * 20 for _ in range(15_000))
    hostile = message(1, subject + "base")
    assert len(hostile) > 1_200_000
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        big = pool.submit(send, mx, [hostile])
        for i in range(5):
            started = time.monotonic()
            assert send(mx, [message(10 + i, f"meanwhile {i}")])[0][0] == 250
            assert time.monotonic() - started < 2.0
        assert big.result(timeout=60)[0][0] == 250
    assert hostile in {strip_trace(m) for m in mx.messages("bob@example.test")}
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        imap.login("bob@example.test", "secret-password")
        imap.select("INBOX")
        typ, data = imap.uid("SORT", "(SUBJECT)", "UTF-8", "ALL")
        assert typ == "OK" and len(data[0].split()) == 6

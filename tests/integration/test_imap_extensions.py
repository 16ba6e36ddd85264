"""IMAP extensions of issue 9 against a real `kartero serve`, driven by imapclient and imaplib: SORT=DISPLAY
(RFC 5957), THREAD (RFC 5256), ESORT and CONTEXT=SEARCH/SORT (RFC 5267)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import KarteroServer

imapclient = pytest.importorskip("imapclient", reason="imapclient is in the test extras")

PASSWORD = "secret-password"


def message(sender: str, subject: str, *, message_id: str = "", references: str = "", date: str = "") -> bytes:
    lines = [f"From: {sender}", "To: bob@example.test", f"Subject: {subject}"]
    if date:
        lines.append(f"Date: {date}")
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    if references:
        lines.append(f"References: {references}")
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


@pytest.fixture
def client(mx: KarteroServer) -> Iterator[imapclient.IMAPClient]:
    with imapclient.IMAPClient(mx.host, port=mx.imap_port, ssl=False) as imap:
        imap.login("bob@example.test", PASSWORD)  # plain text: allowed on loopback
        yield imap


def test_sort_display_with_imapclient(client: imapclient.IMAPClient) -> None:
    assert b"SORT=DISPLAY" in client.capabilities()
    for sender in ('"Zoe Zed" <aaa@example.org>', "bob@example.org", "=?utf-8?q?=C3=84rger?= <zz@example.org>"):
        client.append("INBOX", message(sender, "hello"))
    client.select_folder("INBOX")
    assert client.sort(["DISPLAYFROM"]) == [3, 2, 1]
    assert client.sort(["REVERSE DISPLAYFROM"]) == [1, 2, 3]
    assert client.sort(["FROM"]) == [1, 2, 3]


def test_thread_with_imapclient(client: imapclient.IMAPClient) -> None:
    caps = client.capabilities()
    assert b"THREAD=REFERENCES" in caps and b"THREAD=ORDEREDSUBJECT" in caps
    date = "Mon, {:02d} Mar 2026 10:00:00 +0000"
    client.append("INBOX", message("a@example.org", "lunch", message_id="<1@x>", date=date.format(1)))
    client.append("INBOX", message("b@example.org", "other", message_id="<2@x>", date=date.format(2)))
    client.append("INBOX", message("c@example.org", "Re: lunch", message_id="<3@x>", references="<1@x>",
                                   date=date.format(3)))  # fmt: skip
    client.append("INBOX", message("d@example.org", "Re: lunch", message_id="<4@x>", references="<1@x> <3@x>",
                                   date=date.format(4)))  # fmt: skip
    client.append("INBOX", message("e@example.org", "Re: other", date=date.format(5)))
    client.select_folder("INBOX")
    assert client.thread("REFERENCES") == ((1, 3, 4), (2, 5))
    assert client.thread("ORDEREDSUBJECT") == ((1, (3,), (4,)), (2, 5))
    assert client.thread("REFERENCES", ["FROM", "d@example.org"]) == ((4,),)

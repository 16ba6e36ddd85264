"""IMAP extensions of issue 9 against a real `kartero serve`, driven by imapclient and imaplib: SORT=DISPLAY
(RFC 5957), THREAD (RFC 5256), ESORT and CONTEXT=SEARCH/SORT (RFC 5267), CATENATE (RFC 4469)."""

from __future__ import annotations

import imaplib
import re
import socket
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


def test_esort_and_partial_with_imaplib(client: imapclient.IMAPClient) -> None:
    assert {b"ESORT", b"CONTEXT=SEARCH", b"CONTEXT=SORT"} <= set(client.capabilities())
    date = "Mon, {:02d} Mar 2026 10:00:00 +0000"
    for day in (3, 1, 2):
        client.append("INBOX", message("a@example.org", f"day {day}", date=date.format(day)))
    client.select_folder("INBOX")
    imap = client._imap  # imaplib underneath: ESEARCH responses as the server sent them
    typ, _ = imap._simple_command("UID", "SORT", "RETURN", "(ALL MIN COUNT)", "(DATE)", "UTF-8", "ALL")
    assert typ == "OK"
    _, [esort] = imap._untagged_response(typ, [None], "ESEARCH")
    assert re.fullmatch(rb'\(TAG "\w+"\) UID MIN 2 COUNT 3 ALL 2:3,1', esort), esort
    typ, _ = imap._simple_command("SEARCH", "RETURN", "(PARTIAL 2:9)", "ALL")
    _, [partial] = imap._untagged_response(typ, [None], "ESEARCH")
    assert partial.endswith(b" PARTIAL (2:9 2:3)"), partial


def test_context_updates_from_another_sessions_store_append_and_expunge(mx: KarteroServer) -> None:
    # RFC 5267 §4.3: a session IDLEs with a UID SEARCH context and a SORT context; another session's
    # STORE, APPEND and EXPUNGE reach it as exact ADDTO/REMOVEFROM lines, ADDTO after EXISTS and
    # REMOVEFROM before EXPUNGE.
    date = "Mon, {:02d} Mar 2026 10:00:00 +0000"
    with imaplib.IMAP4(mx.host, mx.imap_port) as other:
        other.login("bob@example.test", PASSWORD)
        for day in (3, 1, 2):
            other.append("INBOX", None, None, message("a@example.org", f"day {day}", date=date.format(day)))
        sock = socket.create_connection((mx.host, mx.imap_port), timeout=10)
        reader = sock.makefile("rb")

        def expect(*lines: bytes) -> None:
            assert [reader.readline() for _ in lines] == list(lines)

        def command(line: str) -> list[bytes]:
            sock.sendall(line.encode() + b"\r\n")
            tag = line.split()[0].encode()
            received = [reader.readline()]
            while not received[-1].startswith(tag + b" "):
                received.append(reader.readline())
            return received

        reader.readline()
        assert command(f"a LOGIN bob@example.test {PASSWORD}")[-1].startswith(b"a OK")
        assert command("b ENABLE IMAP4rev2")[-1].startswith(b"b OK")  # no \Recent in the flags below
        assert command("c SELECT INBOX")[-1].startswith(b"c OK")
        assert command("u1 UID SEARCH RETURN (UPDATE COUNT) UNSEEN") == [
            b'* ESEARCH (TAG "u1") UID COUNT 3\r\n', b"u1 OK UID SEARCH completed\r\n"]  # fmt: skip
        assert command("u2 SORT RETURN (UPDATE) (REVERSE DATE) UTF-8 ALL") == [
            b'* ESEARCH (TAG "u2") ALL 1,3,2\r\n', b"u2 OK SORT completed\r\n"]  # fmt: skip
        other.select("INBOX")
        other.store("1", "+FLAGS", "(\\Deleted)")  # still UNSEEN: no update
        assert command("n NOOP") == [b"* 1 FETCH (UID 1 FLAGS (\\Deleted))\r\n", b"n OK NOOP completed\r\n"]
        sock.sendall(b"i IDLE\r\n")
        expect(b"+ idling\r\n")
        other.store("2", "+FLAGS", "(\\Seen)")
        expect(b"* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n", b'* ESEARCH (TAG "u1") UID REMOVEFROM (0 2)\r\n')
        other.append("INBOX", None, None, message("b@example.org", "day 4", date=date.format(4)))
        expect(b"* 4 EXISTS\r\n", b'* ESEARCH (TAG "u1") UID ADDTO (0 4)\r\n', b'* ESEARCH (TAG "u2") ADDTO (1 4)\r\n')
        other.expunge()
        expect(b'* ESEARCH (TAG "u1") UID REMOVEFROM (0 1)\r\n', b'* ESEARCH (TAG "u2") REMOVEFROM (2 1)\r\n',
               b"* 1 EXPUNGE\r\n")  # fmt: skip
        sock.sendall(b"DONE\r\n")
        expect(b"i OK IDLE terminated\r\n")
        assert command('x CANCELUPDATE "u1" "u2"') == [b"x OK No further updates\r\n"]
        other.store("2", "+FLAGS", "(\\Seen)")  # UID 3: no update any more
        assert command("y NOOP") == [b"* 2 FETCH (UID 3 FLAGS (\\Seen))\r\n", b"y OK NOOP completed\r\n"]
        sock.close()


def test_catenate_over_a_socket_with_a_spooled_text_part(mx: KarteroServer) -> None:
    # RFC 4469 against the real server: a 1.2 MB TEXT literal goes through the adapter's spool file, the
    # URL part is copied from a stored message, and the assembled message (past 1 MiB) from a spool file.
    forwarded = message("alice@example.org", "forwarded")
    head = b"From: bob@example.test\r\nSubject: fwd\r\nContent-Type: text/plain\r\n\r\n"
    filler = b"long line of text\r\n" * 63_000  # 1.2 MB
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        assert b"CATENATE" in imap.capability()[1][0].split()
        imap.append("INBOX", None, None, forwarded)
        imap.select("INBOX")
        validity = imap.response("UIDVALIDITY")[1][0].decode()  # type: ignore[union-attr]
        sock = socket.create_connection((mx.host, mx.imap_port), timeout=30)
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(f"a LOGIN bob@example.test {PASSWORD}\r\n".encode())
        assert reader.readline().startswith(b"a OK")
        url = f"/INBOX;UIDVALIDITY={validity}/;UID=1/;SECTION=TEXT".encode()
        sock.sendall(b'b APPEND INBOX (\\Draft) CATENATE (TEXT {%d+}\r\n%s URL "%s" TEXT {%d+}\r\n%s)\r\n'
                     % (len(head), head, url, len(filler), filler))  # fmt: skip
        assert reader.readline() == f"b OK [APPENDUID {validity} 2] APPEND completed\r\n".encode()
        sock.sendall(b'c APPEND INBOX CATENATE (URL "/INBOX/;UID=7")\r\n')
        assert reader.readline() == b"c NO [BADURL /INBOX/;UID=7] Bad URL\r\n"
        sock.close()
        imap.noop()  # the new message comes into this session's view
        typ, data = imap.uid("FETCH", "2", "(FLAGS BODY.PEEK[])")
        assert typ == "OK"
        assert data[0][1] == head + forwarded.split(b"\r\n\r\n", 1)[1] + filler  # type: ignore[index]
        assert b"\\Draft" in data[0][0]  # type: ignore[index]

"""The POP3 core fed byte transcripts: authorization, listing, retrieval, deletion at QUIT only."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.pop3.connection import (
    ConnectionClosed,
    DotStuffer,
    LoginRequested,
    MaildropEntry,
    MessageWanted,
    Pop3Connection,
    Pop3Settings,
    StartTLSRequested,
    UpdateRequested,
    dot_stuff,
)

SETTINGS = Pop3Settings(hostname="pop.example.test", is_tls_available=True)
MESSAGES = {
    7: b"Subject: one\r\n\r\nline 1\r\n.dotted\r\nline 3\r\n",
    9: b"Subject: two\r\n\r\nbody\r\n",
}
MAILDROP = [MaildropEntry(7, len(MESSAGES[7])), MaildropEntry(9, len(MESSAGES[9]))]


class Peer:
    """Plays the adapter: the password is "pw"; messages come from MESSAGES."""

    def __init__(self, *, is_loopback: bool = True) -> None:
        self.conn = Pop3Connection(SETTINGS, is_loopback=is_loopback)
        self.conn.start()
        self.updates: list[tuple[int, ...]] = []
        self.greeting = self.conn.data_to_send()

    def send(self, data: bytes, *, bytewise: bool = False) -> bytes:
        out = b""
        for piece in [data[i : i + 1] for i in range(len(data))] if bytewise else [data]:
            self.conn.receive_data(piece)
            while (event := self.conn.next_event()) is not None:
                match event:
                    case LoginRequested(password=password):
                        self.conn.login_result("bob@example.test" if password == "pw" else None, MAILDROP)
                    case MessageWanted(uid=uid):
                        data_ = MESSAGES[uid]
                        self.conn.message_result(data_)
                    case UpdateRequested(deleted_uids=uids):
                        self.updates.append(uids)
                        self.conn.update_result(True)
                    case StartTLSRequested():
                        self.conn.tls_established()
                    case ConnectionClosed():
                        pass
            out += self.conn.data_to_send()
        return out


SESSION = (
    b"CAPA\r\nUSER bob@example.test\r\nPASS wrong\r\nUSER bob@example.test\r\nPASS pw\r\nSTAT\r\nLIST\r\nUIDL 2\r\n"
    b"RETR 1\r\nTOP 1 1\r\nDELE 2\r\nRETR 2\r\nSTAT\r\nRSET\r\nDELE 1\r\nQUIT\r\n"
)
EXPECTED = (
    b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\nUSER\r\n"
    b"SASL PLAIN\r\nIMPLEMENTATION Kartero\r\n.\r\n"
    b"+OK Send PASS\r\n-ERR [AUTH] Authentication failed\r\n+OK Send PASS\r\n+OK Logged in, 2 messages\r\n"
    b"+OK 2 %d\r\n"
    % (len(MESSAGES[7]) + len(MESSAGES[9]))
    + b"+OK listing follows\r\n1 %d\r\n2 %d\r\n.\r\n" % (len(MESSAGES[7]), len(MESSAGES[9]))
    + b"+OK 2 9\r\n"
    b"+OK message follows\r\nSubject: one\r\n\r\nline 1\r\n..dotted\r\nline 3\r\n.\r\n"
    b"+OK message follows\r\nSubject: one\r\n\r\nline 1\r\n.\r\n"
    b"+OK Message 2 deleted\r\n-ERR Message is deleted\r\n+OK 1 %d\r\n"
    % len(MESSAGES[7])
    + b"+OK Maildrop reset\r\n+OK Message 1 deleted\r\n+OK Bye\r\n"
)


def test_whole_session_pipelined_and_byte_by_byte() -> None:
    for bytewise in (False, True):
        peer = Peer()
        assert peer.greeting == b"+OK pop.example.test Kartero POP3 ready\r\n"
        assert peer.send(SESSION, bytewise=bytewise) == EXPECTED
        assert peer.updates == [(7,)]
        assert peer.conn.is_closed


def test_lost_connection_deletes_nothing() -> None:
    peer = Peer()
    peer.send(b"USER bob@example.test\r\nPASS pw\r\nDELE 1\r\nDELE 2\r\n")
    peer.conn.receive_data(b"")
    assert peer.conn.next_event() == ConnectionClosed("peer closed")
    assert peer.updates == []


def test_plaintext_login_needs_tls_off_loopback() -> None:
    peer = Peer(is_loopback=False)
    capa = peer.send(b"CAPA\r\n")
    assert b"STLS\r\n" in capa and b"USER\r\n" not in capa and b"SASL" not in capa
    assert peer.send(b"USER bob\r\n") == b"-ERR [AUTH] Use STLS first\r\n"
    assert peer.send(b"AUTH PLAIN AGJvYgBwdw==\r\n") == b"-ERR [AUTH] Use STLS first\r\n"
    assert peer.send(b"STLS\r\nUSER injected\r\n") == b"+OK Begin TLS negotiation\r\n"  # pipelined input dropped
    assert b"USER\r\n" in peer.send(b"CAPA\r\n")
    assert peer.send(b"USER bob\r\nPASS pw\r\n").endswith(b"+OK Logged in, 2 messages\r\n")


def test_sasl_plain() -> None:
    good = base64.b64encode(b"\0bob\0pw")
    peer = Peer()
    assert peer.send(b"AUTH\r\n") == b"+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n"
    assert peer.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert peer.send(good + b"\r\n") == b"+OK Logged in, 2 messages\r\n"


def test_errors() -> None:
    peer = Peer()
    assert peer.send(b"STAT\r\n") == b"-ERR STAT not allowed now\r\n"
    assert peer.send(b"BOGUS\r\n") == b"-ERR Unknown command\r\n"
    assert peer.send(b"PASS pw\r\n") == b"-ERR Send USER first\r\n"
    assert peer.send(b"USER " + b"x" * 300 + b"\r\n") == b"-ERR Line too long\r\n"
    peer.send(b"USER bob\r\nPASS pw\r\n")
    assert peer.send(b"RETR 3\r\n") == b"-ERR No such message\r\n"
    assert peer.send(b"RETR x\r\n") == b"-ERR Invalid message number\r\n"
    assert peer.send(b"TOP 1\r\n") == b"-ERR Syntax: TOP msg n\r\n"
    assert peer.send(b"\xff\xfe\r\n") == b"-ERR Invalid characters in command\r\n"


def test_dot_stuffing_and_top() -> None:
    assert dot_stuff(b".a\r\nb\r\n..c\r\n") == b"..a\r\nb\r\n...c\r\n"
    assert dot_stuff(b"no final newline") == b"no final newline\r\n"
    message = b"H: 1\r\n\r\na\r\nb\r\nc\r\n"
    assert top(message, 0) == b"H: 1\r\n\r\n"
    assert top(message, 2) == b"H: 1\r\n\r\na\r\nb\r\n"
    assert top(message, 99) == message


def top(data: bytes, lines: int) -> bytes:
    stuffer = DotStuffer(lines)
    return stuffer.feed(data) + stuffer.finish()


def reference(data: bytes, lines: int | None) -> bytes:
    """What RETR/TOP sent when the core took messages whole: normalise, cut for TOP, stuff."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if lines is not None:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            position = end + 4
            for _ in range(lines):
                nxt = data.find(b"\r\n", position)
                if nxt < 0:
                    position = len(data)
                    break
                position = nxt + 2
            data = data[:position]
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


@settings(max_examples=500, deadline=None)
@given(parts=st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"a", b"H: x", b"\r\n\r\n"]), max_size=25),
       cuts=st.lists(st.integers(0, 100), max_size=6), lines=st.none() | st.integers(0, 4))  # fmt: skip
def test_issue_8_streamed_retr_and_top_match_the_whole_message_rules(
    parts: list[bytes], cuts: list[int], lines: int | None
) -> None:
    data = b"".join(parts)
    stuffer = DotStuffer(lines)
    out, previous = b"", 0
    for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        out += stuffer.feed(data[previous:cut])
        previous = cut
    assert out + stuffer.finish() == reference(data, lines)

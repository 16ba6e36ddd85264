"""Issue 8, finding 10 and unbounded buffering for the POP3 core: inputs that raised before, responses a
client could misread, and a buffer that grew with whatever the client sent while the adapter was busy."""

from __future__ import annotations

from kartero.pop3.connection import LoginRequested, Pop3Connection, dot_stuff
from tests.unit.pop3.test_pop3_core import SETTINGS, Peer


def test_issue_8_superscript_digits_are_no_message_numbers() -> None:
    # "²".isdigit() is True but int("²") raises ValueError.
    peer = Peer()
    peer.send(b"USER bob@example.test\r\nPASS pw\r\n")
    assert peer.send("RETR \u00b2\r\n".encode()) == b"-ERR Invalid message number\r\n"
    assert peer.send("DELE \u00b2\r\n".encode()) == b"-ERR Invalid message number\r\n"
    assert peer.send("TOP 1 \u00b2\r\n".encode()) == b"-ERR Syntax: TOP msg n\r\n"
    assert peer.send("LIST \u0661\r\n".encode()) == b"-ERR Invalid message number\r\n"
    assert peer.send(b"RETR 1\r\n").startswith(b"+OK message follows\r\n")


def test_issue_8_bare_line_ends_in_a_message_become_crlf() -> None:
    # Sent as stored, "a\n.\r\n" ended the response early for a client splitting lines at LF, and the
    # message's next line was read as the server's next response.
    assert dot_stuff(b"a\n.\r\n+OK injected\rb\r\n") == b"a\r\n..\r\n+OK injected\r\nb\r\n"
    assert dot_stuff(b".a\r\n.\r\n") == b"..a\r\n..\r\n"  # CRLF-only messages are unchanged


def test_issue_8_a_line_without_end_is_not_buffered_while_the_adapter_waits() -> None:
    # The core kept every octet while a password check was pending: 10 MB without a line end, 10 MB held.
    conn = Pop3Connection(SETTINGS, is_loopback=True)
    conn.start()
    conn.receive_data(b"USER bob\r\nPASS pw\r\n")
    assert isinstance(conn.next_event(), LoginRequested)
    for _ in range(160):
        conn.receive_data(b"x" * 65536)
    assert conn.buffered_bytes == 8193
    conn.login_result(None)
    conn.receive_data(b"\r\nNOOP\r\n")
    assert conn.next_event() is None
    assert conn.data_to_send().endswith(
        b"-ERR [AUTH] Authentication failed\r\n-ERR Line too long\r\n-ERR NOOP not allowed now\r\n"
    )
    assert conn.buffered_bytes == 0


def test_issue_8_verbs_are_ascii() -> None:
    peer = Peer()
    assert peer.send("\u017fTAT\r\n".encode()) == b"-ERR Unknown command\r\n"
    assert peer.send("AUTH PLA\u0131N\r\n".encode()) == b"-ERR Unsupported mechanism\r\n"
    assert peer.send(b"quit\r\n") == b"+OK Bye\r\n"


def test_issue_8_pipelined_capa_cannot_pile_up_responses() -> None:
    from kartero.pop3.connection import OUTPUT_HIGH_WATER, OutputReady

    conn = Pop3Connection(SETTINGS)
    conn.start()
    conn.data_to_send()
    conn.receive_data(b"CAPA\r\n" * 100_000)
    largest = stops = 0
    while (event := conn.next_event()) is not None:
        assert isinstance(event, OutputReady)
        stops += 1
        largest = max(largest, len(conn.data_to_send()))
    assert stops > 100 and largest < OUTPUT_HIGH_WATER + 1024

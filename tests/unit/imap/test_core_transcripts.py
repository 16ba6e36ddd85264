"""The IMAP core fed byte transcripts: framing, literals, limits, authentication, state rules."""

from __future__ import annotations

import base64

from kartero.imap.connection import ImapConnection, StartTLSRequested
from tests.unit.imap.harness import SETTINGS, Client, play

GREETING = (
    r"S~ \* OK \[CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL\+ SASL-IR ID ENABLE STARTTLS AUTH=PLAIN\] "
    r"imap\.example\.test Kartero IMAP4rev2 ready"
)


def test_greeting_capability_and_logout() -> None:
    play(
        Client,
        GREETING
        + """
        C: a1 CAPABILITY
        S: * CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE STARTTLS AUTH=PLAIN
        S: a1 OK CAPABILITY completed
        C: a2 NOOP
        S: a2 OK NOOP completed
        C: a2b SELECT INBOX
        S: a2b BAD SELECT not allowed now
        C: a3 LOGOUT
        S: * BYE Logging out
        S: a3 OK LOGOUT completed
        """,
    )


def test_login_disabled_without_tls_on_remote_connections() -> None:
    client = Client(is_loopback=False)
    assert b"LOGINDISABLED" in client.greeting and b"AUTH=PLAIN" not in client.greeting
    assert client.command("a LOGIN bob pw") == [b"a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"]
    assert client.command("b AUTHENTICATE PLAIN AGJvYgBwdw==") == [b"b NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"]
    # After STARTTLS the same connection may log in.
    assert client.command("c STARTTLS") == [b"c OK Begin TLS negotiation now\r\n"]
    assert client.command("d CAPABILITY")[0] == (
        b"* CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE AUTH=PLAIN\r\n"
    )
    assert client.command("e LOGIN bob pw")[-1].startswith(b"e OK [CAPABILITY IMAP4rev1 IMAP4rev2")


def test_login_with_quoted_strings_and_literals() -> None:
    play(
        Client,
        GREETING
        + """
        C: a1 LOGIN {3}
        S: + Ready for literal data
        C: bob {2}
        S: + Ready for literal data
        C: xx
        S: a1 NO [AUTHENTICATIONFAILED] Authentication failed
        C: a2 LOGIN "bob" {2+}
        C: pw
        S~ a2 OK \\[CAPABILITY IMAP4rev1 IMAP4rev2 .*COMPRESS=DEFLATE\\] Logged in
        """,
    )


def test_authenticate_plain_with_and_without_initial_response() -> None:
    good = base64.b64encode(b"\0bob\0pw").decode()
    bad = base64.b64encode(b"\0bob\0nope").decode()
    play(
        Client,
        GREETING
        + f"""
        C: a1 AUTHENTICATE PLAIN {bad}
        S: a1 NO [AUTHENTICATIONFAILED] Authentication failed
        C: a2 AUTHENTICATE PLAIN
        S~ \\+\\s
        C: *
        S: a2 BAD AUTHENTICATE cancelled
        C: a3 AUTHENTICATE PLAIN
        S~ \\+\\s
        C: !!notbase64
        S: a3 BAD Bad PLAIN response: invalid base64
        C: a4 AUTHENTICATE CRAM-MD5
        S: a4 NO [CANNOT] Unsupported mechanism CRAM-MD5
        C: a5 AUTHENTICATE PLAIN
        S~ \\+\\s
        C: {good}
        S~ a5 OK \\[CAPABILITY .*\\] Logged in
        """,
    )


def test_malformed_commands_get_bad_and_the_session_goes_on() -> None:
    play(
        Client,
        GREETING
        + """
        C: a1 LOGIN bob pw
        S~ a1 OK .*Logged in
        C: *bad-tag NOOP
        S: * BAD Missing or invalid tag
        C: a2
        S: a2 BAD Missing command
        C: a3 FROBNICATE
        S: a3 BAD Unknown command FROBNICATE
        C: a4 SELECT
        S: a4 BAD SELECT: missing mailbox name
        C: a5 SELECT "unterminated
        S: a5 BAD unterminated quoted string
        C: a6 FETCH 1 FLAGS
        S: a6 BAD FETCH not allowed now
        C: a7 STATUS INBOX (BOGUS)
        S: a7 BAD unknown STATUS item
        C: a8 LIST "" (
        S: a8 BAD missing )
        C: b1 ID ("name" "test")
        S: * ID ("name" "Kartero" "vendor" "Kartero")
        S: b1 OK ID completed
        C: b2 NAMESPACE
        S: * NAMESPACE (("" "/")) NIL NIL
        S: b2 OK NAMESPACE completed
        """,
    )


def test_literals_are_bounded_before_login() -> None:
    client = Client()
    # A synchronising literal over the limit is refused instead of being read.
    assert client.command("a1 LOGIN {5000}") == [b"a1 BAD Literal too large (4096 octets allowed)\r\n"]
    # A non-synchronising one is read and dropped, then refused; the session goes on.
    out = client.send(b"a2 LOGIN {5000+}\r\n" + b"x" * 5000 + b" pw\r\na3 NOOP\r\n")
    assert out.startswith(b"a2 BAD Literal too large (4096 octets allowed)\r\n")
    # A gigantic one is not read at all: the connection ends.
    out = client.send(b"a4 LOGIN {999999999+}\r\n")
    assert out.endswith(b"* BYE Literal too large\r\n")
    assert client.conn.is_closed


def test_endless_line_is_discarded() -> None:
    client = Client()
    for _ in range(200):
        client.send(b"A" * 1000)
        assert client.conn.buffered_bytes <= 70_000
    assert client.send(b"\r\na1 CAPABILITY\r\n").startswith(b"* BAD Line too long\r\n* CAPABILITY")


def test_idle_and_done() -> None:
    play(
        Client,
        GREETING
        + """
        C: a1 LOGIN bob pw
        S~ a1 OK .*
        C: a2 IDLE
        S: + idling
        C: NOOP
        S: * BAD Expected DONE
        C: done
        S: a2 OK IDLE terminated
        """,
    )


def test_enable_reports_only_what_it_enables() -> None:
    play(
        Client,
        GREETING
        + """
        C: a1 LOGIN bob pw
        S~ a1 OK .*
        C: a2 ENABLE QRESYNC X-UNKNOWN utf8=accept
        S: * ENABLED QRESYNC UTF8=ACCEPT
        S: a2 OK ENABLE completed
        C: a3 ENABLE QRESYNC CONDSTORE
        S: a3 OK ENABLE completed
        """,
    )


def test_pipelined_input_behind_starttls_is_dropped() -> None:
    conn = ImapConnection(SETTINGS, is_loopback=True)
    conn.start()
    conn.data_to_send()
    conn.receive_data(b"a1 STARTTLS\r\na2 LOGIN bob pw\r\n")
    assert conn.next_event() == StartTLSRequested("a1")
    conn.receive_data(b"a3 LOGIN bob pw\r\n")  # still plaintext, before the handshake
    assert conn.next_event() is None
    assert conn.data_to_send() == b"a1 OK Begin TLS negotiation now\r\n"
    conn.tls_established()
    assert conn.next_event() is None and conn.data_to_send() == b""


def test_error_budget_ends_the_session() -> None:
    client = Client()
    out = client.send(b"".join(b"x%d FROB\r\n" % i for i in range(40)))
    assert out.endswith(b"* BYE Too many errors\r\n")
    assert client.conn.is_closed


def test_peer_closing_ends_the_session() -> None:
    client = Client()
    client.send(b"a1 LOGIN {3}\r\nbo")
    client.conn.receive_data(b"")
    event = client.conn.next_event()
    assert type(event).__name__ == "ConnectionClosed" and event.reason == "peer closed"  # type: ignore[union-attr]

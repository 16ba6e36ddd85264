"""Issue 8, finding 10 for the SMTP client core: replies from a hostile MX that raised in the core (or
in the agent driving it) before, or were read as something they are not."""

from __future__ import annotations

from kartero.smtp.client import MessageResult, OutgoingMessage, OutgoingRecipient, Ready, SessionFailed, StartTLSReady
from tests.unit.smtp.test_client import MESSAGE, Script

ONE = OutgoingMessage("alice@a.test", (OutgoingRecipient("bob@b.test"),), b"Subject: hi\r\n\r\nbody\r\n")


def test_issue_8_next_message_right_after_an_early_failure() -> None:
    # The agent sends the next message on every MessageResult; after a refused MAIL the core was
    # waiting for its RSET reply and raised RuntimeError("send_message() in state RSET").
    s = Script()
    s.server("220 x")
    s.server("250-x", "250 PIPELINING")
    assert s.conn.send_message(ONE) is None
    s.sent.append(s.conn.data_to_send())
    (result,) = s.server("550 5.7.1 no", "503 5.5.1 no MAIL", "503 5.5.1 no MAIL")
    assert isinstance(result, MessageResult) and [r.code for r in result.replies] == [550]
    assert s.last() == b"RSET\r\n"
    assert s.conn.send_message(MESSAGE) is None  # waits for the RSET reply
    assert s.conn.data_to_send() == b""
    assert s.server("250 2.0.0 ok") == []
    assert s.last() == (
        b"MAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nRCPT TO:<x@b.test>\r\nDATA\r\n"
    )


def test_issue_8_enhanced_codes_are_ascii_digits() -> None:
    # "5.\u0661.1" (an Arabic-Indic digit) was taken as an enhanced code; Reply.to_bytes() then raised.
    s = Script()
    s.server("220 x")
    s.server("250-x", "250 PIPELINING")
    s.conn.send_message(ONE)
    s.conn.data_to_send()
    (result,) = s.server("550 5.\u0661.1 no", "550 5.1.1 no", "503 no")
    assert isinstance(result, MessageResult)
    (reply,) = result.replies
    assert (reply.code, reply.enhanced, reply.text) == (550, None, "5.?.1 no")
    assert reply.to_bytes() == b"550 5.?.1 no\r\n"


def test_issue_8_clear_text_behind_the_starttls_go_ahead_is_dropped() -> None:
    # A man in the middle appends a forged EHLO reply to "220 go ahead": it must not be read as the
    # server's first answer over TLS (STARTTLS response injection).
    s = Script()
    s.server("220 x")
    s.server("250-x", "250 STARTTLS")
    assert s.last() == b"STARTTLS\r\n"
    assert s.server("220 go ahead", "250-forged", "250 SIZE 1") == [StartTLSReady()]
    s.conn.receive_data(b"250 more forged\r\n")  # still before the handshake
    s.conn.tls_established()
    s.sent.append(s.conn.data_to_send())
    assert s.last() == b"EHLO mx.a.test\r\n"
    (ready,) = s.server("250-x", "250 PIPELINING")
    assert ready == Ready({"PIPELINING": ""}, True)


def test_issue_8_an_overlong_reply_line_fails_in_one_read_too() -> None:
    # Only a line that arrived in pieces was held to MAX_REPLY_LINE; in one read, "250 SIZE" with 5,000
    # digits passed and send_message() raised ValueError (int() refuses over 4,300 digits).
    s = Script()
    s.server("220 x")
    (failed,) = s.server("250-x", "250 SIZE " + "9" * 5000)
    assert failed == SessionFailed(None, "reply line too long")
    assert s.conn.buffered_bytes == 0

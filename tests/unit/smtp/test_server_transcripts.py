"""The SMTP server core fed byte transcripts: every command, every error path, exact replies."""

from __future__ import annotations

import pytest

from kartero.mail import replies
from kartero.smtp.events import Body, ConnectionClosed, Notify, Ret
from kartero.smtp.server import ServerConnection, ServerSettings
from tests.unit.smtp.transcript import SETTINGS, TLS_SETTINGS, Recorder, run_transcript

EHLO = """
    S: 220 mx.example.test ESMTP Kartero
    C: EHLO client.example.org
    S: 250-mx.example.test Hello client.example.org
    S: 250-PIPELINING
    S: 250-SIZE 10000
    S: 250-8BITMIME
    S: 250-SMTPUTF8
    S: 250-ENHANCEDSTATUSCODES
    S: 250-CHUNKING
    S: 250 DSN
"""


def test_full_transaction_stores_exact_message() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<alice@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<bob@example.test>
        S: 250 2.1.5 Recipient OK
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        C: Subject: hi
        C:
        C: hello
        C: .
        S: 250 2.0.0 Message accepted
        C: QUIT
        S: 221 2.0.0 Bye
        """
    )
    (msg,) = rec.messages
    assert msg.data == b"Subject: hi\r\n\r\nhello\r\n"
    assert str(msg.envelope.mail_from) == "<alice@example.org>"
    assert [str(r.path) for r in msg.envelope.recipients] == ["<bob@example.test>"]
    assert msg.envelope.helo == "client.example.org"
    assert msg.envelope.is_esmtp


@pytest.mark.parametrize("phase", ["mail", "rcpt", "data"])
def test_issue_13_a_421_decision_closes_the_session(phase: str) -> None:
    """A decision answering 421 (a milter's shutdown, a hook's tempfail(421, ...)) ends the session there,
    as its meaning says: what the client pipelined after it is not worked through."""
    closing = replies.Reply(421, "4.7.0", "Server closing connection")
    rec = Recorder(mail_reply=(lambda _: closing) if phase == "mail" else None,
                   rcpt_reply=(lambda _: closing) if phase == "rcpt" else None,
                   message_reply=closing if phase == "data" else replies.MESSAGE_ACCEPTED)  # fmt: skip
    script = EHLO + "    C: MAIL FROM:<a@example.org>\n"
    if phase == "mail":
        script += "    C: RCPT TO:<bob@example.test>\n    S: 421 4.7.0 Server closing connection\n"
    else:
        script += "    S: 250 2.1.0 Sender OK\n    C: RCPT TO:<bob@example.test>\n"
        if phase == "rcpt":
            script += "    C: RCPT TO:<carol@example.test>\n    S: 421 4.7.0 Server closing connection\n"
        else:
            script += ("    S: 250 2.1.5 Recipient OK\n    C: DATA\n    S: 354 End data with <CR><LF>.<CR><LF>\n"
                       "    C: hi\n    C: .\n    C: NOOP\n    S: 421 4.7.0 Server closing connection\n")  # fmt: skip
    played, conn = run_transcript(script, recorder=rec)
    assert conn.is_closed
    assert isinstance(played.events[-1], ConnectionClosed)


def test_helo_gives_single_line_and_no_extensions() -> None:
    run_transcript(
        """
        S: 220 mx.example.test ESMTP Kartero
        C: HELO client.example.org
        S: 250 mx.example.test
        C: MAIL FROM:<a@example.org> SIZE=100
        S: 555 5.5.4 MAIL FROM/RCPT TO parameters not recognized or not implemented
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        """
    )


def test_rcpt_before_mail_is_bad_sequence() -> None:
    run_transcript(
        """
        S: 220 mx.example.test ESMTP Kartero
        C: HELO client.example.org
        S: 250 mx.example.test
        C: RCPT TO:<bob@example.test>
        S: 503 5.5.1 Need MAIL before RCPT
        """
    )


def test_commands_before_helo() -> None:
    run_transcript(
        """
        S: 220 mx.example.test ESMTP Kartero
        C: MAIL FROM:<a@example.org>
        S: 503 5.5.1 Send HELO/EHLO first
        C: RCPT TO:<b@example.test>
        S: 503 5.5.1 Send HELO/EHLO first
        C: DATA
        S: 503 5.5.1 Send HELO/EHLO first
        C: NOOP
        S: 250 2.0.0 OK
        C: RSET
        S: 250 2.0.0 OK
        """
    )


def test_nested_mail_and_data_without_recipients() -> None:
    run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: MAIL FROM:<a@example.org>
        S: 503 5.5.1 Sender already specified
        C: RCPT TO:<unknown@example.test>
        S: 550 5.1.1 No such user here
        C: DATA
        S: 554 5.5.1 No valid recipients
        C: RSET
        S: 250 2.0.0 OK
        C: DATA
        S: 503 5.5.1 Need MAIL and RCPT first
        """
    )


def test_unknown_command_and_syntax_errors() -> None:
    run_transcript(
        EHLO
        + """
        C: FOO bar
        S: 500 5.5.1 Command unrecognized
        C: EHLO
        S: 501 5.5.4 Invalid domain name in HELO/EHLO
        C: EHLO bad name with spaces
        S: 501 5.5.4 Invalid domain name in HELO/EHLO
        C: MAIL FROM:alice@example.org
        S: 501 5.1.7 Bad sender address syntax
        C: MAIL TO:<alice@example.org>
        S: 501 5.1.7 Syntax: FROM:<address>
        C: MAIL FROM:<alice@@example.org>
        S: 501 5.1.7 Bad sender address syntax
        C: MAIL FROM:<alice@example.org>x
        S: 501 5.1.7 Bad sender address syntax
        C: DATA now
        S: 501 5.5.4 Syntax error in parameters or arguments
        C: RSET x
        S: 501 5.5.4 Syntax error in parameters or arguments
        """
    )


def test_vrfy_never_enumerates_and_expn_refused() -> None:
    run_transcript(
        EHLO
        + """
        C: VRFY bob
        S: 252 2.1.5 Cannot VRFY user, but will accept message and attempt delivery
        C: VRFY nosuchuser@example.test
        S: 252 2.1.5 Cannot VRFY user, but will accept message and attempt delivery
        C: VRFY
        S: 501 5.5.4 Syntax error in parameters or arguments
        C: EXPN staff
        S: 502 5.5.1 EXPN not available
        C: HELP
        S: 214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS
        C: NOOP anything
        S: 250 2.0.0 OK
        """
    )


def test_null_sender_and_postmaster_recipient() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<Postmaster>
        S: 250 2.1.5 Recipient OK
        C: RCPT TO:<>
        S: 501 5.1.3 Bad recipient address syntax
        """
    )
    mail, rcpt = rec.events[1], rec.events[2]
    assert mail.path.is_null  # type: ignore[union-attr]
    assert rcpt.path.mailbox.domain == ""  # type: ignore[union-attr]


def test_space_after_colon_tolerated_and_source_route_ignored() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM: <a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<@relay.example.test,@other.example:user@elsewhere.example>
        S: 250 2.1.5 Recipient OK
        """
    )
    assert str(rec.events[2].path) == "<user@elsewhere.example>"  # type: ignore[union-attr]


def test_dot_stuffing_undone_exactly() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        C: ..leading dot
        C: ...
        C: middle . dot
        C: ..
        C: .
        S: 250 2.0.0 Message accepted
        """
    )
    assert rec.messages[0].data == b".leading dot\r\n..\r\nmiddle . dot\r\n.\r\n"


def test_empty_message() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        C: .
        S: 250 2.0.0 Message accepted
        """
    )
    assert rec.messages[0].data == b""


def test_pipelining_whole_transaction_in_one_write() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.test>
        C: RCPT TO:<unknown@example.test>
        C: RCPT TO:<c@example.test>
        C: DATA
        S: 250 2.1.0 Sender OK
        S: 250 2.1.5 Recipient OK
        S: 550 5.1.1 No such user here
        S: 250 2.1.5 Recipient OK
        S: 354 End data with <CR><LF>.<CR><LF>
        C: x
        C: .
        C: MAIL FROM:<d@example.org>
        C: RCPT TO:<e@example.test>
        C: BDAT 3 LAST
        C! b"y\\r\\n"
        C: QUIT
        S: 250 2.0.0 Message accepted
        S: 250 2.1.0 Sender OK
        S: 250 2.1.5 Recipient OK
        S: 250 2.0.0 Message accepted
        S: 221 2.0.0 Bye
        """
    )
    assert [m.data for m in rec.messages] == [b"x\r\n", b"y\r\n"]
    assert [str(r.path) for r in rec.messages[0].envelope.recipients] == ["<b@example.test>", "<c@example.test>"]


# -- SMTP smuggling: only <CRLF>.<CRLF> ends data; bare LF/CR refuse the message ---------------------


@pytest.mark.parametrize(
    "smuggle",
    [
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
    ],
)
def test_smuggling_attempt_is_one_refused_message(smuggle: bytes) -> None:
    body = b"Subject: a\r\n\r\nfirst" + smuggle + b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<b@example.test>\r\n"
    body += b"DATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
    rec, _ = run_transcript(
        EHLO
        + f"""
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        C! {body!r}
        S: 554 5.6.0 Message refused: bare CR or LF in message data (RFC 5321 2.3.8), use CRLF
        C: NOOP
        S: 250 2.0.0 OK
        """
    )
    assert rec.messages == []
    # The smuggled commands were body text: no second MAIL ever reached the adapter.
    assert sum(1 for e in rec.events if type(e).__name__ == "MailFrom") == 1


def test_bare_lf_inside_bdat_refused() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: BDAT 5 LAST
        C! b"a\\nb\\r\\n"
        S: 554 5.6.0 Message refused: bare CR or LF in message data (RFC 5321 2.3.8), use CRLF
        """
    )
    assert rec.messages == [] and len(rec.refused) == 1


# -- limits ---------------------------------------------------------------------------------------


def test_command_line_too_long() -> None:
    run_transcript(
        EHLO
        + f"""
        C: NOOP {"x" * 510}
        S: 500 5.5.2 Line too long
        C: MAIL FROM:<a@example.org> ENVID={"x" * 1300}
        S: 500 5.5.2 Line too long
        C: NOOP
        S: 250 2.0.0 OK
        """
    )


def test_endless_line_is_discarded_not_buffered() -> None:
    conn = ServerConnection(SETTINGS)
    conn.start()
    conn.data_to_send()
    for _ in range(1000):
        conn.receive_data(b"A" * 1000)
        assert conn.next_event() is None
        assert conn.buffered_bytes <= 2000
    conn.receive_data(b"\r\nNOOP\r\n")
    assert conn.next_event() is None
    assert conn.data_to_send() == b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"


def test_text_line_over_1000_octets_refused_not_truncated() -> None:
    ok_line = "y" * 998
    rec, _ = run_transcript(
        EHLO
        + f"""
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        C: {"x" * 999}
        C: .
        S: 500 5.5.2 Message line longer than 1000 octets (RFC 5321 4.5.3.1.6)
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        C: {ok_line}
        C: .
        S: 250 2.0.0 Message accepted
        """
    )
    assert rec.messages[0].data == ok_line.encode() + b"\r\n"


def test_size_parameter_over_limit() -> None:
    run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org> SIZE=10001
        S: 552 5.3.4 Message size exceeds fixed maximum message size
        C: MAIL FROM:<a@example.org> SIZE=10000
        S: 250 2.1.0 Sender OK
        C: RSET
        S: 250 2.0.0 OK
        C: MAIL FROM:<a@example.org> SIZE=ten
        S: 501 5.5.4 SIZE must be a number
        """
    )


def test_message_over_size_limit_refused_in_data_and_bdat() -> None:
    big = ("z" * 98 + "\r\n") * 120  # 12,000 octets > 10,000
    rec, _ = run_transcript(
        EHLO
        + f"""
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        C! {big.encode()!r}
        C: .
        S: 552 5.3.4 Message size exceeds fixed maximum message size
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: BDAT 6000
        C! {big.encode()[:6000]!r}
        C: BDAT 6000 LAST
        C! {big.encode()[6000:]!r}
        S: 250 2.0.0 6000 octets received
        S: 552 5.3.4 Message size exceeds fixed maximum message size
        C: NOOP
        S: 250 2.0.0 OK
        """
    )
    assert rec.messages == []
    assert len(rec.refused) == 2


def test_too_many_recipients() -> None:
    rcpts = "".join(f"C: RCPT TO:<r{i}@example.test>\n" for i in range(6))
    rec, _ = run_transcript(
        EHLO
        + "C: MAIL FROM:<a@example.org>\nS: 250 2.1.0 Sender OK\n"
        + rcpts
        + "S: 250 2.1.5 Recipient OK\n" * 5
        + "S: 452 4.5.3 Too many recipients\n"
    )
    assert len(rec.events) == 1 + 1 + 5  # Hello, MailFrom, five RcptTo


def test_error_budget_closes_with_421() -> None:
    settings = ServerSettings(hostname="mx.example.test", max_errors=3)
    rec, conn = run_transcript(
        """
        S: 220 mx.example.test ESMTP Kartero
        C: BOGUS
        S: 500 5.5.1 Command unrecognized
        C: BOGUS
        S: 500 5.5.1 Command unrecognized
        C: BOGUS
        S: 500 5.5.1 Command unrecognized
        S: 421 4.7.0 Too many errors, closing connection
        C: NOOP
        """,
        settings=settings,
    )
    assert conn.is_closed
    assert type(rec.events[-1]).__name__ == "ConnectionClosed"


def test_http_request_closes_connection() -> None:
    _, conn = run_transcript(
        """
        S: 220 mx.example.test ESMTP Kartero
        C: GET / HTTP/1.1
        S: 500 5.5.1 This is an SMTP server, closing connection
        C: Host: example.test
        """
    )
    assert conn.is_closed


def test_invalid_utf8_and_nul_in_command() -> None:
    run_transcript(
        EHLO
        + """
        C! b"NOOP \\xff\\xfe\\r\\n"
        S: 500 5.5.2 Syntax error, command unrecognized
        C! b"NO\\x00OP\\r\\n"
        S: 500 5.5.2 Syntax error, command unrecognized
        C! b"NOOP\\rRSET\\r\\n"
        S: 500 5.5.2 Syntax error, command unrecognized
        """
    )


def test_bare_lf_command_terminator_tolerated() -> None:
    run_transcript(
        """
        S: 220 mx.example.test ESMTP Kartero
        C! b"HELO x.example\\n"
        S: 250 mx.example.test
        """
    )


# -- ESMTP parameters: 8BITMIME, SMTPUTF8, DSN ------------------------------------------------------


def test_dsn_and_body_parameters_parsed() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2B314 BODY=8BITMIME SIZE=50
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+40example.test
        S: 250 2.1.5 Recipient OK
        C: RCPT TO:<c@example.test> NOTIFY=never
        S: 250 2.1.5 Recipient OK
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        C! b"caf\\xc3\\xa9\\r\\n.\\r\\n"
        S: 250 2.0.0 Message accepted
        """
    )
    env = rec.messages[0].envelope
    assert env.mail_params.ret is Ret.HDRS
    assert env.mail_params.envid == "QQ+314"
    assert env.mail_params.body is Body.EIGHT_BIT_MIME
    assert env.mail_params.size == 50
    r1, r2 = env.recipients
    assert r1.params.notify == {Notify.SUCCESS, Notify.DELAY}
    assert r1.params.orcpt == ("rfc822", "b@example.test")
    assert r2.params.notify == {Notify.NEVER}
    assert rec.messages[0].data == "café\r\n".encode()


def test_bad_dsn_parameters() -> None:
    run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org> RET=BOTH
        S: 501 5.5.4 RET must be FULL or HDRS
        C: MAIL FROM:<a@example.org> ENVID=bad+zz
        S: 501 5.5.4 Malformed xtext value
        C: MAIL FROM:<a@example.org> RET=FULL RET=HDRS
        S: 501 5.5.4 Duplicate parameter RET
        C: MAIL FROM:<a@example.org> BODY=BINARYMIME
        S: 555 5.5.4 BODY=BINARYMIME not supported
        C: MAIL FROM:<a@example.org> FROB=1
        S: 555 5.5.4 MAIL FROM/RCPT TO parameters not recognized or not implemented
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test> NOTIFY=NEVER,SUCCESS
        S: 501 5.5.4 NOTIFY=NEVER cannot be combined
        C: RCPT TO:<b@example.test> NOTIFY=SOMETIMES
        S: 501 5.5.4 Bad NOTIFY value
        C: RCPT TO:<b@example.test> ORCPT=rfc822
        S: 501 5.5.4 Bad ORCPT value
        """
    )


def test_smtputf8_addresses_require_parameter() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<jos\u00e9@example.org>
        S: 553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter
        C: MAIL FROM:<jos\u00e9@example.org> SMTPUTF8
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<\u7528\u6237@\u4f8b\u3048.test>
        S: 250 2.1.5 Recipient OK
        """
    )
    assert rec.events[1].params.smtputf8  # type: ignore[union-attr]
    assert rec.events[2].path.mailbox.local_part == "\u7528\u6237"  # type: ignore[union-attr]


def test_quoted_local_part() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<"john doe"@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<"user@other.example"@example.test>
        S: 250 2.1.5 Recipient OK
        """
    )
    assert rec.events[1].path.mailbox.local_part == "john doe"  # type: ignore[union-attr]
    assert rec.events[2].path.mailbox.local_part == "user@other.example"  # type: ignore[union-attr]


def test_address_literals() -> None:
    run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@[192.0.2.1]>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@[IPv6:2001:db8::1]>
        S: 250 2.1.5 Recipient OK
        C: RCPT TO:<b@[300.1.1.1]>
        S: 501 5.1.3 Bad recipient address syntax
        """
    )


def test_local_part_over_64_octets() -> None:
    run_transcript(
        EHLO
        + f"""
        C: MAIL FROM:<{"a" * 65}@example.org>
        S: 501 5.1.7 Bad sender address syntax
        """
    )


# -- BDAT (RFC 3030) --------------------------------------------------------------------------------


def test_bdat_chunks_and_last() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: BDAT 7
        C! b"Line1\\r\\n"
        S: 250 2.0.0 7 octets received
        C: BDAT 7
        C! b".dot\\r\\nX"
        S: 250 2.0.0 14 octets received
        C: BDAT 0 LAST
        S: 250 2.0.0 Message accepted
        """
    )
    # No dot-stuffing in BDAT: the octets are kept exactly.
    assert rec.messages[0].data == b"Line1\r\n.dot\r\nX"
    assert rec.messages[0].envelope.used_bdat


def test_bdat_mixing_rules() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: BDAT 5
        C! b"abcde"
        S: 503 5.5.1 Need MAIL and RCPT first
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: BDAT 3 LAST
        C! b"xyz"
        S: 554 5.5.1 No valid recipients
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: BDAT 2
        C! b"ab"
        S: 250 2.0.0 2 octets received
        C: DATA
        S: 503 5.5.1 DATA not allowed in a BDAT transaction
        C: RCPT TO:<c@example.test>
        S: 503 5.5.1 RCPT not allowed after BDAT
        C: BDAT 2 LAST
        C! b"\\r\\n"
        S: 250 2.0.0 Message accepted
        C: BDAT 1 LAST
        C! b"q"
        S: 503 5.5.1 Need MAIL and RCPT first
        """
    )
    assert [m.data for m in rec.messages] == [b"ab\r\n"]


def test_bdat_contents_are_never_commands() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: BDAT 29 LAST
        C! b"QUIT\\r\\nRSET\\r\\n.\\r\\nMAIL FROM:<>\\r\\n"
        S: 250 2.0.0 Message accepted
        """
    )
    assert rec.messages[0].data == b"QUIT\r\nRSET\r\n.\r\nMAIL FROM:<>\r\n"


def test_bdat_bad_size_closes() -> None:
    _, conn = run_transcript(
        EHLO
        + """
        C: BDAT lots
        S: 501 5.5.4 Bad BDAT chunk size, closing connection
        """
    )
    assert conn.is_closed


def test_rset_between_bdat_chunks() -> None:
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: BDAT 2
        C! b"ab"
        S: 250 2.0.0 2 octets received
        C: RSET
        S: 250 2.0.0 OK
        C: BDAT 2 LAST
        C! b"cd"
        S: 503 5.5.1 Need MAIL and RCPT first
        """
    )
    assert rec.messages == []


# -- STARTTLS ---------------------------------------------------------------------------------------


def test_starttls_advertised_and_state_reset() -> None:
    _rec, conn = run_transcript(
        """
        S: 220 mx.example.test ESMTP Kartero
        C: EHLO c.example
        S: 250-mx.example.test Hello c.example
        S: 250-PIPELINING
        S: 250-SIZE 10000
        S: 250-8BITMIME
        S: 250-SMTPUTF8
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250-DSN
        S: 250 STARTTLS
        C: STARTTLS
        S: 220 2.0.0 Ready to start TLS
        C: MAIL FROM:<a@example.org>
        S: 503 5.5.1 Send HELO/EHLO first
        C: EHLO c.example
        S: 250-mx.example.test Hello c.example
        S: 250-PIPELINING
        S: 250-SIZE 10000
        S: 250-8BITMIME
        S: 250-SMTPUTF8
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250 DSN
        C: STARTTLS
        S: 503 5.5.1 TLS already active
        """,
        settings=TLS_SETTINGS,
    )
    assert conn.is_tls


def test_starttls_not_offered_without_certificate() -> None:
    run_transcript(
        EHLO
        + """
        C: STARTTLS
        S: 502 5.5.1 Command not implemented
        """
    )


def test_starttls_in_transaction_and_with_argument() -> None:
    run_transcript(
        """
        S: 220 mx.example.test ESMTP Kartero
        C: STARTTLS
        S: 503 5.5.1 Send HELO/EHLO first
        C: HELO c.example
        S: 250 mx.example.test
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: STARTTLS
        S: 503 5.5.1 Bad sequence of commands
        C: RSET
        S: 250 2.0.0 OK
        C: STARTTLS now
        S: 501 5.5.4 Syntax error in parameters or arguments
        """,
        settings=TLS_SETTINGS,
    )


def test_commands_pipelined_behind_starttls_are_dropped() -> None:
    """CVE-2011-0411: nothing sent in clear before the handshake may count as sent over TLS."""
    conn = ServerConnection(TLS_SETTINGS)
    conn.start()
    conn.receive_data(b"EHLO c.example\r\n")
    assert type(conn.next_event()).__name__ == "Hello"
    assert conn.next_event() is None
    conn.data_to_send()
    conn.receive_data(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
    assert type(conn.next_event()).__name__ == "StartTLSRequested"
    conn.receive_data(b"RCPT TO:<victim@example.test>\r\n")  # still before the handshake
    assert conn.next_event() is None
    assert conn.data_to_send() == b"220 2.0.0 Ready to start TLS\r\n"
    conn.tls_established()
    assert conn.next_event() is None
    assert conn.data_to_send() == b""
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\n")
    assert conn.next_event() is None
    assert conn.data_to_send() == b"503 5.5.1 Send HELO/EHLO first\r\n"


# -- decisions and close ----------------------------------------------------------------------------


def test_store_failure_gives_transient_error_and_no_ack() -> None:
    _rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        C: x
        C: .
        S: 451 4.3.0 Local error in processing, try again later
        C: NOOP
        S: 250 2.0.0 OK
        """,
        recorder=Recorder(message_reply=replies.LOCAL_ERROR),
    )


def test_peer_closing_mid_data_yields_no_message() -> None:
    rec, conn = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test>
        S: 250 2.1.5 Recipient OK
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        C: half a message
        """,
        eof=True,
    )
    assert rec.messages == []
    assert conn.is_closed
    assert rec.events[-1].reason == "peer closed during message data"  # type: ignore[union-attr]


def test_timeout_and_shutdown_close_with_421() -> None:
    conn = ServerConnection(SETTINGS)
    conn.start()
    assert conn.is_idle
    assert conn.timeout_s == 300.0
    conn.close(replies.TIMEOUT, "timeout")
    assert conn.data_to_send() == b"220 mx.example.test ESMTP Kartero\r\n421 4.4.2 Timeout, closing connection\r\n"
    assert conn.next_event() == ConnectionClosed("timeout")
    assert conn.next_event() is None


def test_data_timeout_applies_in_data() -> None:
    conn = ServerConnection(SETTINGS)
    conn.start()
    conn.receive_data(b"HELO a.example\r\nMAIL FROM:<a@example.org>\r\n")
    conn.next_event()
    conn.next_event()
    conn.answer(replies.SENDER_OK)
    conn.receive_data(b"RCPT TO:<b@example.test>\r\n")
    conn.next_event()
    conn.answer(replies.RECIPIENT_OK)
    conn.receive_data(b"DATA\r\n")
    assert conn.next_event() is None
    assert conn.timeout_s == SETTINGS.data_timeout_s
    assert not conn.is_idle


def test_answer_without_pending_event_is_a_violation() -> None:
    from kartero.smtp.state import ProtocolViolation

    conn = ServerConnection(SETTINGS)
    with pytest.raises(ProtocolViolation):
        conn.answer(replies.OK)

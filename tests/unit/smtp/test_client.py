"""The SMTP client core against scripted servers: EHLO/HELO, STARTTLS, PIPELINING, BDAT, per-recipient
results, SIZE and SMTPUTF8 refusals, connection reuse."""

from __future__ import annotations

from kartero.smtp.client import (
    ClientConnection,
    ClientSettings,
    Closed,
    MessageResult,
    OutgoingMessage,
    OutgoingRecipient,
    Ready,
    SessionFailed,
    StartTLSReady,
    dot_stuff,
    xtext,
)

SETTINGS = ClientSettings(helo="mx.a.test")
MESSAGE = OutgoingMessage(
    "alice@a.test",
    (OutgoingRecipient("bob@b.test", ("SUCCESS", "FAILURE"), "rfc822;bob@b.test"), OutgoingRecipient("x@b.test")),
    b"Subject: hi\r\n\r\n.dot\r\nbody\r\n",
    ret="HDRS",
    envid="id+1",
)


class Script:
    """Feeds server lines and collects what the client sent in between."""

    def __init__(self, settings: ClientSettings = SETTINGS) -> None:
        self.conn = ClientConnection(settings)
        self.sent: list[bytes] = []

    def server(self, *lines: str) -> list[object]:
        for line in lines:
            self.conn.receive_data(line.encode() + b"\r\n")
        events = []
        while (event := self.conn.next_event()) is not None:
            events.append(event)
        out = self.conn.data_to_send()
        if out:
            self.sent.append(out)
        return events

    def last(self) -> bytes:
        return self.sent[-1]


EHLO_FULL = ("250-mx.b.test hello", "250-PIPELINING", "250-SIZE 1000", "250-8BITMIME", "250-DSN", "250 STARTTLS")


def test_starttls_then_pipelined_transaction_with_dsn() -> None:
    s = Script()
    assert s.server("220 mx.b.test ESMTP") == []
    assert s.last() == b"EHLO mx.a.test\r\n"
    assert s.server(*EHLO_FULL) == []
    assert s.last() == b"STARTTLS\r\n"
    assert s.server("220 2.0.0 go ahead") == [StartTLSReady()]
    s.conn.tls_established()
    s.sent.append(s.conn.data_to_send())
    assert s.last() == b"EHLO mx.a.test\r\n"
    (ready,) = s.server(*EHLO_FULL[:-1][:-1], "250 DSN")
    assert isinstance(ready, Ready) and ready.is_tls and "PIPELINING" in ready.extensions
    assert s.conn.send_message(MESSAGE) is None
    s.sent.append(s.conn.data_to_send())
    assert s.last() == (
        b"MAIL FROM:<alice@a.test> SIZE=%d RET=HDRS ENVID=id+2B1\r\n"
        % len(MESSAGE.data)
        + b"RCPT TO:<bob@b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@b.test\r\n"
        b"RCPT TO:<x@b.test>\r\n"
        b"DATA\r\n"
    )
    assert s.server("250 2.1.0 ok", "250 2.1.5 ok", "550 5.1.1 no such user", "354 go") == []
    assert s.last() == b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n"
    (result,) = s.server("250 2.0.0 queued as 42")
    assert isinstance(result, MessageResult) and result.remote_dsn
    assert [(r.code, r.enhanced, r.text) for r in result.replies] == [
        (250, "2.0.0", "queued as 42"),
        (550, "5.1.1", "no such user"),
    ]
    s.conn.quit()
    s.sent.append(s.conn.data_to_send())
    assert s.last() == b"QUIT\r\n"
    assert s.server("221 bye") == [Closed()]


def test_helo_fallback_no_pipelining_no_dsn() -> None:
    s = Script()
    s.server("220 old.b.test")
    assert s.server("502 5.5.1 what is EHLO") == []
    assert s.last() == b"HELO mx.a.test\r\n"
    assert s.server("250 old.b.test") == [Ready({}, False)]
    s.conn.send_message(MESSAGE)
    s.sent.append(s.conn.data_to_send())
    assert s.last() == b"MAIL FROM:<alice@a.test>\r\n"  # no SIZE/RET/ENVID without the extensions
    s.server("250 ok")
    assert s.last() == b"RCPT TO:<bob@b.test>\r\n"  # no NOTIFY/ORCPT without DSN
    s.server("250 ok")
    assert s.last() == b"RCPT TO:<x@b.test>\r\n"
    s.server("250 ok")
    assert s.last() == b"DATA\r\n"
    s.server("354 send")
    (result,) = s.server("250 done")
    assert isinstance(result, MessageResult) and not result.remote_dsn
    assert [r.code for r in result.replies] == [250, 250]


def test_bdat_and_reuse_after_a_refused_sender() -> None:
    s = Script()
    s.server("220 x")
    s.server("250-x", "250-PIPELINING", "250 CHUNKING")
    s.conn.send_message(MESSAGE)
    s.sent.append(s.conn.data_to_send())
    assert s.last().endswith(b"RCPT TO:<x@b.test>\r\n")
    assert b"DATA" not in s.last()
    s.server("250 ok", "250 ok", "450 4.2.1 try later")
    assert s.last() == b"BDAT %d LAST\r\n" % len(MESSAGE.data) + MESSAGE.data
    (result,) = s.server("250 2.0.0 ok")
    assert [r.code for r in result.replies] == [250, 450]  # type: ignore[attr-defined]
    # A refused MAIL fails every recipient and the connection is reset for the next message.
    s.conn.send_message(MESSAGE)
    s.sent.append(s.conn.data_to_send())
    events = s.server("553 5.7.1 sender rejected", "503 no MAIL", "503 no MAIL")
    (result,) = events
    assert [r.code for r in result.replies] == [553, 553]  # type: ignore[attr-defined]
    assert s.last() == b"RSET\r\n"
    assert s.server("250 ok") == [Ready({"PIPELINING": "", "CHUNKING": ""}, False)]


def test_refusals_before_sending() -> None:
    s = Script()
    s.server("220 x")
    s.server("250-x", "250 SIZE 10")
    result = s.conn.send_message(MESSAGE)
    assert result is not None and result.replies[0].code == 552
    utf8 = OutgoingMessage("josé@a.test", (OutgoingRecipient("b@b.test"),), b"x\r\n", needs_smtputf8=True)
    result = s.conn.send_message(utf8)
    assert result is not None and result.replies[0].enhanced == "5.6.7"
    assert s.conn.data_to_send() == b""


def test_refused_greeting_and_garbage() -> None:
    s = Script()
    (failed,) = s.server("554 5.7.1 go away")
    assert isinstance(failed, SessionFailed) and failed.reply is not None and failed.reply.code == 554
    s = Script()
    (failed,) = s.server("HTTP/1.1 400 Bad Request")
    assert isinstance(failed, SessionFailed) and "garbled" in failed.reason
    s = Script()
    s.conn.receive_data(b"")
    assert isinstance(s.conn.next_event(), SessionFailed)


def test_helpers() -> None:
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert dot_stuff(b".a\r\nb") == b"..a\r\nb\r\n.\r\n"

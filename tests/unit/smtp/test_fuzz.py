"""Hypothesis feeds the core random input: the only allowed outcome is well-formed replies."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.smtp import replies
from kartero.smtp.events import MailFrom, MessageReceived, RcptTo, StartTLSRequested
from kartero.smtp.server import ServerConnection
from tests.unit.smtp.transcript import TLS_SETTINGS

REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][\x20-\x7e]*\r\n")
WORDS = [
    b"EHLO x.example\r\n", b"HELO x\r\n", b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<c@d.example>\r\n",
    b"DATA\r\n", b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"RSET\r\n", b"QUIT\r\n", b"STARTTLS\r\n", b".\r\n",
    b"\r\n", b"\n", b"\r", b".", b"MAIL FROM:<> SIZE=1 BODY=8BITMIME\r\n", b"NOOP\r\n", b"\x00", b"\xff",
]  # fmt: skip


def _drive(chunks: list[bytes]) -> bytes:
    conn = ServerConnection(TLS_SETTINGS)
    conn.start()
    out = b""
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not None:
            match event:
                case MailFrom() | RcptTo():
                    conn.answer(replies.OK)
                case MessageReceived():
                    conn.answer(replies.MESSAGE_ACCEPTED)
                case StartTLSRequested():
                    conn.tls_established()
        out += conn.data_to_send()
    assert conn.is_closed
    return out


def _assert_replies(out: bytes) -> None:
    lines = out.splitlines(keepends=True)
    assert lines, "no greeting"
    for line in lines:
        assert REPLY_LINE.fullmatch(line), line


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_random_bytes_only_produce_replies(chunks: list[bytes]) -> None:
    _assert_replies(_drive(chunks))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS) | st.binary(max_size=20), max_size=40))
def test_random_command_soup_only_produces_replies(pieces: list[bytes]) -> None:
    _assert_replies(_drive(pieces))

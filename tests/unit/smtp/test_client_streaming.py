"""A large outgoing message is fed to the SMTP client core in pieces (BodyWanted, send_body, end_body):
the bytes on the wire are exactly what the whole-message path sends, for DATA and for BDAT, however the
message is cut (issue 8: memory per delivery is a constant)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.smtp.client import BodyWanted, MessageResult, SessionFailed, dot_stuff
from tests.unit.smtp.test_client import MESSAGE, Script

EHLO_DATA = ("250-mx.b.test", "250-PIPELINING", "250 SIZE 100000")
EHLO_BDAT = ("250-mx.b.test", "250-PIPELINING", "250 CHUNKING")


def stream(body: bytes, cuts: list[int], ehlo: tuple[str, ...]) -> bytes:
    """What the client sends after the RCPT replies (and 354), the body fed in pieces."""
    s = Script()
    s.server("220 x")
    s.server(*ehlo)
    assert s.conn.send_message(replace(MESSAGE, data=b"", streamed_size=len(body))) is None
    s.conn.data_to_send()
    sent_before = len(s.sent)
    events = s.server("250 ok", "250 ok", "250 ok", *(("354 go",) if "CHUNKING" not in ehlo[-1] else ()))
    assert events == [BodyWanted()]
    out = b"".join(s.sent[sent_before:])  # the BDAT command goes before the body
    previous = 0
    for cut in [*sorted(c for c in cuts if c <= len(body)), len(body)]:
        s.conn.send_body(body[previous:cut])
        previous = cut
        out += s.conn.data_to_send()
    s.conn.end_body()
    out += s.conn.data_to_send()
    (result,) = s.server("250 2.0.0 queued")
    assert isinstance(result, MessageResult) and [r.code for r in result.replies] == [250, 250]
    return out


pieces = st.sampled_from([b"\r\n", b".", b"..", b"\r", b"\n", b"x", b"line", b"\r\n.\r\n"])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(pieces, max_size=30), cuts=st.lists(st.integers(0, 120), max_size=6))
def test_issue_8_streamed_body_goes_out_as_the_whole_one_would(parts: list[bytes], cuts: list[int]) -> None:
    body = b"Subject: s\r\n\r\n" + b"".join(parts)  # never empty: streamed_size 0 means "not streamed"
    assert stream(body, cuts, EHLO_DATA) == dot_stuff(body)
    assert stream(body, cuts, EHLO_BDAT) == b"BDAT %d LAST\r\n" % len(body) + body


def test_issue_8_streamed_mail_announces_its_size_and_a_short_bdat_body_fails_the_session() -> None:
    s = Script()
    s.server("220 x")
    s.server(*EHLO_BDAT[:-1], "250-SIZE 100000", "250 CHUNKING")
    s.conn.send_message(replace(MESSAGE, data=b"", streamed_size=5000))
    assert b"MAIL FROM:<alice@a.test> SIZE=5000" in s.conn.data_to_send()
    assert s.server("250 ok", "250 ok", "250 ok") == [BodyWanted()]
    assert s.last() == b"BDAT 5000 LAST\r\n"
    s.conn.send_body(b"only this")
    s.conn.end_body()
    events = []
    while (event := s.conn.next_event()) is not None:
        events.append(event)
    assert isinstance(events[0], SessionFailed) and "9 octets, 5000 announced" in events[0].reason

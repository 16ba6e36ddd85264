"""The incremental DATA/BDAT body path gives exactly what checking and unstuffing the whole body at once
gives, however the body is cut, and spills large messages out in bounded pieces (issue 8, finding 6)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.mail import replies
from kartero.mail.replies import Reply
from kartero.smtp.data import MAX_TEXT_LINE, SPILL_PIECE, BodyCollector, DataReader
from kartero.smtp.events import MailFrom, MessageData, MessageReceived, MessageRefused, RcptTo
from kartero.smtp.server import ServerConnection, ServerSettings


def reference(wire: bytes, max_size: int, *, dot_stuffed: bool) -> tuple[bytes | None, Reply | None]:
    """The whole-body rules, as the core applied them before it streamed."""
    message = wire
    if dot_stuffed:
        message = wire[1:] if wire.startswith(b".") else wire
        message = message.replace(b"\r\n.", b"\r\n")
    if len(message) > max_size:
        return None, replies.SIZE_EXCEEDED
    crlf = wire.count(b"\r\n")
    if wire.count(b"\n") != crlf or wire.count(b"\r") != crlf:
        return None, replies.BARE_LINE_ENDING
    if max(map(len, wire.split(b"\r\n"))) > MAX_TEXT_LINE:
        return None, replies.TEXT_LINE_TOO_LONG
    return message, None


pieces = st.sampled_from([b"\r\n", b".", b"..", b"\r", b"\n", b"x", b"yz", b" ", b"x" * 500, b"\r\n.\r"])


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(pieces, max_size=30), cuts=st.lists(st.integers(0, 3000), max_size=6),
       dot_stuffed=st.booleans(), threshold=st.sampled_from([0, 5, 10_000]),
       max_size=st.sampled_from([40, 100_000]))  # fmt: skip
def test_collector_matches_whole_body_rules(
    parts: list[bytes], cuts: list[int], dot_stuffed: bool, threshold: int, max_size: int
) -> None:
    wire = b"".join(parts)
    collector = BodyCollector(max_size, threshold, dot_stuffed=dot_stuffed)
    out = b""
    previous = 0
    for cut in [*sorted(c for c in cuts if c <= len(wire)), len(wire)]:
        collector.feed(wire[previous:cut])
        previous = cut
        if collector.ready:
            out += collector.take()
    collector.finish()
    out += collector.rest()
    message, refusal = reference(wire, max_size, dot_stuffed=dot_stuffed)
    assert collector.refusal == refusal
    if refusal is None:
        assert out == message
        assert collector.size == len(message)


@settings(max_examples=300, deadline=None)
@given(body=st.lists(st.sampled_from([b"a\r\n", b".\r\n", b"..b\r\n", b"\r\n", b"c"]), max_size=20),
       cuts=st.lists(st.integers(0, 200), max_size=5))  # fmt: skip
def test_data_reader_finds_the_end_however_cut(body: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(body)
    if wire and not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    stream = wire + b".\r\nNEXT"
    if b"\r\n.\r\n" in b"\r\n" + wire:
        return  # the body would end early: not a body a client can send
    reader = DataReader(BodyCollector(10**6, 10**6, dot_stuffed=True))
    previous, consumed = 0, None
    for cut in [*sorted(c for c in cuts if c <= len(stream)), len(stream)]:
        consumed = reader.feed(stream[previous:cut])
        if consumed is not None:
            assert stream[previous + consumed :] == b"NEXT"
            break
        previous = cut
    assert consumed is not None
    assert reader.collector.rest() == reference(wire, 10**6, dot_stuffed=True)[0]


def run(data: bytes, threshold: int) -> list[object]:
    conn = ServerConnection(ServerSettings("mx.example.test", spool_threshold=threshold))
    conn.start()
    events: list[object] = []
    conn.receive_data(data)
    while (event := conn.next_event()) is not None:
        events.append(event)
        if isinstance(event, MessageReceived | MailFrom | RcptTo):
            conn.answer(replies.OK)
    return events


def test_issue_8_large_message_leaves_the_core_in_bounded_pieces() -> None:
    line = b"0123456789" * 7 + b"\r\n"
    body = line * 50_000  # 3.6 MB
    stuffed = body.replace(b"\r\n0", b"\r\n.0")  # nothing to unstuff here; a dot would be doubled
    events = run(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n" + stuffed + b".\r\nQUIT\r\n", 100_000)
    pieces = [e.data for e in events if isinstance(e, MessageData)]
    (received,) = [e for e in events if isinstance(e, MessageReceived)]
    assert all(len(p) <= 2 * SPILL_PIECE + 100_000 for p in pieces) and len(pieces) > 10
    assert b"".join(pieces) + received.data == body.replace(b"\r\n.0", b"\r\n0")
    assert received.spilled == sum(map(len, pieces))


def test_small_message_stays_whole_in_the_event() -> None:
    events = run(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nSubject: x\r\n\r\n..hi\r\n.\r\n", 10_000)
    assert not any(isinstance(e, MessageData) for e in events)
    (received,) = [e for e in events if isinstance(e, MessageReceived)]
    assert received.data == b"Subject: x\r\n\r\n.hi\r\n" and received.spilled == 0


def test_bdat_message_spills_too_and_bare_lf_is_still_refused() -> None:
    chunk = b"a" * 900 + b"\r\n"
    data = chunk * 300
    script = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n"
    script += b"BDAT %d\r\n" % len(data) + data + b"BDAT %d LAST\r\n" % len(data) + data
    events = run(script, 50_000)
    pieces = [e.data for e in events if isinstance(e, MessageData)]
    (received,) = [e for e in events if isinstance(e, MessageReceived)]
    assert b"".join(pieces) + received.data == data * 2
    bad = run(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nBDAT 5 LAST\r\nab\ncd", 50_000)
    assert any(isinstance(e, MessageRefused) for e in bad)


def test_issue_8_nul_is_refused_where_asked_however_large_the_message() -> None:
    """Submission refuses NUL anywhere in the message (a NUL ends strings in C clients and filters);
    the MX listener stores what it is sent."""
    for threshold in (1_000_000, 10):  # in memory, and spilling to the spool
        start = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"
        data = start + b"From: a@b.c\r\n\r\n" + b"line\r\n" * 100 + b"nul \x00 here\r\n.\r\n"
        conn = ServerConnection(ServerSettings("mx.example.test", spool_threshold=threshold, refuse_nul=True))
        conn.start()
        conn.receive_data(data)
        events = []
        while (event := conn.next_event()) is not None:
            events.append(event)
            if isinstance(event, MailFrom | RcptTo):
                conn.answer(replies.OK)
        assert any(isinstance(e, MessageRefused) for e in events)
        assert conn.data_to_send().endswith(b"554 5.6.0 Message refused: NUL in message data\r\n")
        assert any(isinstance(e, MessageReceived) for e in run(data, threshold))  # no refuse_nul: stored

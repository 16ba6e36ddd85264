"""Issue 15: mbox reading and writing (kartero/migrate/mbox.py): mboxrd quoting round trip, separators,
From_ lines, the state fields as flags, bounded pieces."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.migrate.buffer import MEMORY_LIMIT, MessageBuffer
from kartero.migrate.mbox import (
    LINE_PIECE,
    FromLine,
    format_from_line,
    parse_from_line,
    read_mbox,
    write_mbox_message,
)

DATE = 1_795_946_400  # Sun Nov 29 10:00:00 2026 UTC


def _read(data: bytes, tmp_path: Path, *, crlf: bool = False) -> list[tuple[bytes, str, int | None, frozenset[str]]]:
    out = []
    for m in read_mbox(io.BytesIO(data), lambda: MessageBuffer(tmp_path, crlf=crlf)):
        body = m.body.data
        if not isinstance(body, bytes):
            assert m.body.path is not None
            body = m.body.path.read_bytes()
            m.body.discard()
        out.append((body, m.sender, m.date, m.flags))
    return out


def test_issue_15_mboxrd_unquoting_takes_one_gt_from_each_from_line(tmp_path: Path) -> None:
    data = (b"From alice@example.org Sun Nov 29 10:00:00 2026\nSubject: a\n\n>From here\n>>From there\n"
            b">>>From far\n> From not quoted\nFrom unquoted in the body\n\n")  # fmt: skip
    [(body, sender, date, flags)] = _read(data, tmp_path)
    assert body == (b"Subject: a\n\nFrom here\n>From there\n>>From far\n> From not quoted\n"
                    b"From unquoted in the body\n")  # fmt: skip
    assert (sender, date, flags) == ("alice@example.org", DATE, frozenset())


def test_issue_15_a_from_line_after_an_empty_line_separates_only_with_a_date(tmp_path: Path) -> None:
    data = (b"From a@x Sun Nov 29 10:00:00 2026\n\nbody\n\nFrom my point of view, no.\n\n"
            b"From b@x Sun Nov 29 10:00:01 2026 +0100\nSubject: 2\n\nsecond\n\n")  # fmt: skip
    messages = _read(data, tmp_path)
    assert [m[0] for m in messages] == [b"\nbody\n\nFrom my point of view, no.\n", b"Subject: 2\n\nsecond\n"]
    assert [m[1:3] for m in messages] == [("a@x", DATE), ("b@x", DATE + 1 - 3600)]


def test_issue_15_state_fields_become_flags_and_leave_the_message(tmp_path: Path) -> None:
    data = (b"From a@x Sun Nov 29 10:00:00 2026\nStatus: RO\nSubject: s\nX-Status: AF\n\tD\nX-Keywords: $Label1,"
            b" Work\nX-UID: 7\n\nStatus: body text stays\n\n")  # fmt: skip
    [(body, _, _, flags)] = _read(data, tmp_path)
    assert body == b"Subject: s\n\nStatus: body text stays\n"
    assert flags == {"\\Seen", "\\Answered", "\\Flagged", "$Label1", "Work"}  # (a folded D is not read)


def test_issue_15_crlf_is_stored_for_lf(tmp_path: Path) -> None:
    data = b"From a@x Sun Nov 29 10:00:00 2026\nSubject: s\r\n\nline\n\n"
    assert _read(data, tmp_path, crlf=True)[0][0] == b"Subject: s\r\n\r\nline\r\n"


def test_issue_15_a_long_line_comes_in_pieces_and_only_a_line_start_separates(tmp_path: Path) -> None:
    body = (b"Subject: s\n\n" + b"x" * LINE_PIECE + b"From b@x Sun Nov 29 10:00:00 2026\n\n" + b"y" * LINE_PIECE
            + b">From not unquoted\n")  # fmt: skip
    [(read, *_)] = _read(b"From a@x Sun Nov 29 10:00:00 2026\n" + body + b"\n", tmp_path)
    assert read == body


def test_issue_15_a_large_message_goes_to_a_file(tmp_path: Path) -> None:
    big = b"line of a large message\n" * (2 * MEMORY_LIMIT // 24)
    data = b"From a@x Sun Nov 29 10:00:00 2026\n\n" + big + b"\n"
    [message] = read_mbox(io.BytesIO(data), lambda: MessageBuffer(tmp_path, crlf=False))
    assert message.body.path is not None and message.body.path.read_bytes() == b"\n" + big
    message.body.discard()
    assert not list(tmp_path.iterdir())


def test_issue_15_a_file_without_a_from_line_is_not_an_mbox(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an mbox"):
        _read(b"Subject: hello\n\nbody\n", tmp_path)
    assert _read(b"", tmp_path) == []


@pytest.mark.parametrize(("line", "expected"), [
    (b"From alice@example.org Sun Nov 29 10:00:00 2026\n", FromLine("alice@example.org", DATE)),
    (b"From alice@example.org  Sun Nov  29 10:00 2026\n", FromLine("alice@example.org", DATE)),
    (b"From MAILER-DAEMON Sun Nov 29 12:00:00 +0200 2026\n", FromLine("MAILER-DAEMON", DATE)),
    (b"From bob Sun Nov 29 10:00:00 2026 -0030\n", FromLine("bob", DATE + 1800)),
    (b"From the desk of the president\n", None),
    (b"From bob Sun Nov 29 25:00:00 2026\n", None),
    (b"From \n", None),
])  # fmt: skip
def test_issue_15_from_lines(line: bytes, expected: FromLine | None) -> None:
    assert parse_from_line(line) == expected


def test_issue_15_from_line_written_for_any_sender() -> None:
    assert format_from_line("bob@example.org", DATE) == b"From bob@example.org Sun Nov 29 10:00:00 2026\n"
    assert format_from_line("", DATE) == b"From MAILER-DAEMON Sun Nov 29 10:00:00 2026\n"
    assert format_from_line('"a b"@x', DATE).startswith(b"From MAILER-DAEMON ")


_LINES = st.sampled_from([b"From x", b">From y", b">>From z", b"From a@x Sun Nov 29 10:00:00 2026", b"", b"Subject: a",
                          b"body", b"  indented", b"From", b">", b"cr\rinside"])  # fmt: skip
_FLAGS = st.frozensets(st.sampled_from(["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted", "$Label1", "W"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(_LINES, max_size=8), _FLAGS, st.integers(0, 4_000_000_000)), min_size=1, max_size=4),
       st.sampled_from([b"\n", b"\r\n"]))  # fmt: skip
def test_issue_15_mboxrd_round_trip(tmp_path_factory: pytest.TempPathFactory,
                                    messages: list[tuple[list[bytes], frozenset[str], int]], end: bytes) -> None:
    """Whatever the lines (From_ lines, quoted ones, empty ones), a message written and read again is the
    same bytes with the same flags and date, so long as it starts with a header field (the state fields
    go first, and a first line that continues a field would join them) and ends with a line end. A
    message stored with CRLF is written with LF, and read back with CRLF."""
    tmp_path = tmp_path_factory.mktemp("mbox")
    out = io.BytesIO()
    expected = []
    for lines, flags, date in messages:
        body = b"Subject: x" + end + b"".join(line + end for line in lines)
        write_mbox_message(out, "s@x", date, flags, io.BufferedReader(io.BytesIO(body)))  # type: ignore[arg-type]
        expected.append((body, "s@x", date, flags))
    assert b"\r\n" not in out.getvalue()
    assert _read(out.getvalue(), tmp_path, crlf=end == b"\r\n") == expected


_PIECES = st.sampled_from([b"From a@x Sun Nov 29 10:00:00 2026\n", b"From x\n", b">From ", b"\n", b"\r\n", b"\r",
                           b"Status: RO\n", b" cont\n", b"X-Keywords: \xff a\n", b"\x00\xff", b"b:"])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=30).map(b"".join))
def test_issue_15_any_file_is_read_whole_or_refused(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    """Whatever the bytes: ValueError (not an mbox), or messages whose octets add up to the file."""
    tmp_path = tmp_path_factory.mktemp("any")
    try:
        messages = list(read_mbox(io.BytesIO(data), lambda: MessageBuffer(tmp_path, crlf=True)))
    except ValueError:
        assert not data.startswith(b"From ")
        return
    assert sum(m.octets for m in messages) == len(data)
    assert all(isinstance(m.body.data, bytes) for m in messages)


def test_issue_15_state_fields_cost_bounded_memory(tmp_path: Path) -> None:
    """A header of X-Keywords lines, each full of new words: every word went into one set before the
    store's limit of MAX_KEYWORDS was applied, so memory grew ten times the file (85 MiB: 880 MB)."""
    import tracemalloc

    lines = b"".join(b"X-Keywords: " + b" ".join(b"k%d" % (i * 100 + j) for j in range(100)) + b"\n"
                     for i in range(15_000))  # fmt: skip
    data = b"From a@x Sun Nov 29 10:00:00 2026\nX-Keywords: First\n" + lines + b"Subject: s\n\nbody\n"
    tracemalloc.start()
    try:
        [(body, _, _, flags)] = _read(data, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert body == b"Subject: s\n\nbody\n"
    assert 0 < len(flags) <= 64 + 5  # clean_flags: MAX_KEYWORDS, and room for the system flags
    assert len(data) > 10 * 2**20 and peak < 2 * 2**20


def test_issue_15_a_messages_own_state_fields_are_not_written(tmp_path: Path) -> None:
    """A sender's `X-Status: D`, `Status: RO` or `X-Keywords:` in the message were written after the
    export's own state fields, and an import took them as the mbox file's: the message came back
    \\Deleted, \\Seen and with keywords it never had. Folded lines of those fields go too."""
    message = (b"Subject: offer\r\nX-Status: DF\r\nX-Keywords: $Phishing\r\n Urgent\r\nStatus: RO\r\n"
               b"X-Other: kept\r\n\r\nX-Status: D in the body stays\r\n")  # fmt: skip
    out = io.BytesIO()
    write_mbox_message(out, "a@x", DATE, {"$Label1"}, io.BufferedReader(io.BytesIO(message)))  # type: ignore[arg-type]
    assert out.getvalue() == (b"From a@x Sun Nov 29 10:00:00 2026\nStatus: O\nX-Keywords: $Label1\nSubject: offer\n"
                              b"X-Other: kept\n\nX-Status: D in the body stays\n\n")  # fmt: skip
    [(body, _, _, flags)] = _read(out.getvalue(), tmp_path, crlf=True)
    assert flags == {"$Label1"}
    assert body == b"Subject: offer\r\nX-Other: kept\r\n\r\nX-Status: D in the body stays\r\n"

"""How a message is split into what a milter sees: header fields as Postfix sends them (value after the
colon, lines joined by "\\n"), then the body octets after the blank line; fed whole or in any pieces."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.milter.fields import HeaderEnd, HeaderField, MessageSplitter, Part


def split(message: bytes, piece: int = 0, max_field_bytes: int = 65536) -> list[Part]:
    splitter = MessageSplitter(max_field_bytes)
    parts: list[Part] = []
    step = piece or max(len(message), 1)
    for start in range(0, len(message), step):
        parts += splitter.feed(message[start : start + step])
    parts += splitter.end()
    return _joined(parts)


def _joined(parts: list[Part]) -> list[Part]:
    """Body octets as one piece, whatever the chunking."""
    out: list[Part] = []
    for part in parts:
        if isinstance(part, bytes) and out and isinstance(out[-1], bytes):
            out[-1] = out[-1] + part
        elif not isinstance(part, bytes) or part:
            out.append(part)
    return out


MESSAGE = (b"From: a@example.org\r\nSubject: one\r\n\ttwo\r\n  three\r\nX-Empty:\r\nX-Tab:\tv\r\n"
           b"Name : spaced\r\n\r\nbody line\r\n\r\nmore\r\n")  # fmt: skip
EXPECTED: list[Part] = [
    HeaderField(b"From", b" a@example.org"),
    HeaderField(b"Subject", b" one\n\ttwo\n  three"),
    HeaderField(b"X-Empty", b""),
    HeaderField(b"X-Tab", b"\tv"),
    HeaderField(b"Name", b" spaced"),
    HeaderEnd(),
    b"body line\r\n\r\nmore\r\n",
]


def test_fields_then_body() -> None:
    assert split(MESSAGE) == EXPECTED


def test_byte_at_a_time_is_the_same() -> None:
    assert split(MESSAGE, 1) == EXPECTED


def test_a_line_that_is_no_field_starts_the_body() -> None:
    parts = split(b"A: 1\r\nnot a field\r\nrest\r\n")
    assert parts == [HeaderField(b"A", b" 1"), HeaderEnd(), b"not a field\r\nrest\r\n"]


def test_header_only_message() -> None:
    assert split(b"A: 1\r\nB: 2") == [HeaderField(b"A", b" 1"), HeaderField(b"B", b" 2"), HeaderEnd()]
    assert split(b"") == [HeaderEnd()]


def test_a_huge_field_is_cut_for_the_milter() -> None:
    message = b"A: " + b"x" * 5000 + b"\r\n" + b" y\r\n" * 3000 + b"B: 2\r\n\r\nbody"
    parts = split(message, 700, max_field_bytes=1000)
    assert parts[0] == HeaderField(b"A", b" " + b"x" * 997)  # name, colon and value: 1000
    assert parts[1:] == [HeaderField(b"B", b" 2"), HeaderEnd(), b"body"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"A: 1\r\n", b" cont\r\n", b"\r\n", b"x\r\n", b"B:2\n", b"\r", b"\n", b":", b" "]),
                max_size=30), st.integers(1, 7))  # fmt: skip
def test_any_chunking_gives_the_same_parts(lines: list[bytes], piece: int) -> None:
    message = b"".join(lines)
    assert split(message, piece, 64) == split(message, 0, 64)

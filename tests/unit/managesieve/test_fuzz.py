"""Hypothesis feeds the ManageSieve core random and grammar-aware input, cut anywhere: the only allowed
outcome is well-formed responses (OK/NO/BYE lines, strings, literals), with the input held bounded."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kartero.managesieve.connection import MAX_LINE
from tests.unit.managesieve.harness import Peer

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AUTH = b'AUTHENTICATE "PLAIN" "AGJvYkBleGFtcGxlLnRlc3QAcHc="\r\n'
WORDS = [b"CAPABILITY", b"NOOP", b"LOGOUT", b"STARTTLS", b"AUTHENTICATE", b"LISTSCRIPTS", b"GETSCRIPT", b"PUTSCRIPT",
         b"CHECKSCRIPT", b"DELETESCRIPT", b"RENAMESCRIPT", b"SETACTIVE", b"HAVESPACE", b"UNAUTHENTICATE",
         b'"PLAIN"', b'"SCRAM-SHA-256"', b'"a"', b'""', b'"*"', b'"error"', b"{3+}\r\nabc", b"{2}\r\n\xff\xfe",
         b"{200+}\r\n", b"42", b"4294967296", b'"\\"', b'"e\xcc\x81"', b"{", b"}", b"\r", b"\n", b" "]  # fmt: skip


def check_responses(output: bytes) -> None:
    """Every response line is OK/NO/BYE or a string (quoted, or a literal whose octets are skipped)."""
    i = 0
    while i < len(output):
        end = output.index(b"\r\n", i)
        line = output[i:end]
        if line.startswith(b"{") and line.endswith(b"}"):
            i = end + 2 + int(line[1:-1])
            assert output[i : i + 2] == b"\r\n" or output[i : i + 1] == b" " or i == len(output)
            continue
        assert line.startswith((b"OK", b"NO", b"BYE", b'"')), output
        if line.endswith(b"}") and b"{" in line:  # a status whose text is a literal
            size = int(line[line.rindex(b"{") + 1 : -1])
            i = end + 2 + size
            assert output[i : i + 2] == b"\r\n"
            i += 2
            continue
        i = end + 2


def drive(chunks: list[bytes], *, logged_in: bool, unavailable: bool) -> None:
    peer = Peer(is_loopback=logged_in)
    out = peer.greeting
    if logged_in:
        out += peer.send(AUTH)
    peer.unavailable = unavailable
    for chunk in chunks:
        if chunk:
            out += peer.send(chunk)
        assert peer.conn.buffered_bytes <= MAX_LINE + max(len(c) for c in chunks) + 1
    out += peer.send(b"")
    check_responses(out)
    assert peer.conn.is_closed


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=12), st.booleans(), st.booleans())
def test_random_bytes_only_produce_responses(chunks: list[bytes], logged_in: bool, unavailable: bool) -> None:
    drive(chunks or [b""], logged_in=logged_in, unavailable=unavailable)


@FUZZ
@given(st.lists(st.lists(st.sampled_from(WORDS), max_size=6), max_size=15), st.booleans(), st.booleans(),
       st.integers(1, 50))  # fmt: skip
def test_grammar_aware_input_only_produces_responses(
    commands: list[list[bytes]], logged_in: bool, unavailable: bool, cut: int
) -> None:
    data = b"".join(b" ".join(words) + b"\r\n" for words in commands)
    drive([data[i : i + cut] for i in range(0, len(data), cut)] or [b""], logged_in=logged_in,
          unavailable=unavailable)  # fmt: skip


@FUZZ
@given(st.lists(st.lists(st.sampled_from(WORDS), max_size=6), max_size=15), st.integers(1, 50))
def test_output_does_not_depend_on_how_the_input_is_cut(commands: list[list[bytes]], cut: int) -> None:
    data = b"".join(b" ".join(words) + b"\r\n" for words in commands if b"STARTTLS" not in words)
    whole, pieces = Peer(), Peer()
    out_whole = whole.send(AUTH + data) if data else b""
    out_pieces = pieces.send(AUTH)
    for i in range(0, len(data), cut):
        out_pieces += pieces.send(data[i : i + cut])
    if data:
        assert out_pieces == out_whole

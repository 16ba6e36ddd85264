"""Issue 9: transfer decoding (RFC 2045 §6.7, §6.8) for BINARY and SEARCH, the same however the bytes are cut."""

from __future__ import annotations

import itertools
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.mime.headers import TransferDecoder, iter_body_text


def decoded(encoding: str, *pieces: bytes) -> bytes:
    decoder = TransferDecoder(encoding)
    return b"".join(decoder.feed(piece) for piece in pieces) + decoder.finish()


def test_issue_9_quoted_printable_drops_trailing_white_space_and_soft_breaks_after_it() -> None:
    # Rule 3: white space at the end of a line is transport padding; rule 5: "=" ends a line softly, also
    # when padding follows it.
    assert decoded("quoted-printable", b"a  \t\r\nb\r\n") == b"a\r\nb\r\n"
    assert decoded("quoted-printable", b"soft=  \r\nbreak=\t\nx") == b"softbreakx"
    assert decoded("quoted-printable", b"end \t") == b"end"
    assert decoded("quoted-printable", b"end= ") == b"end"
    assert decoded("quoted-printable", b"in the middle =3D stays\r\n") == b"in the middle = stays\r\n"
    assert decoded("Quoted-Printable", b"bad =ZZ and =4\r\n") == b"bad =ZZ and =4\r\n"


def test_issue_9_base64_ends_at_its_padding() -> None:
    assert decoded("base64", b"aGVs\r\nbG8=\r\nIGlnbm9yZWQ=") == b"hello"
    assert decoded("BASE64", b"aGVsbA") == b"hell"
    assert decoded("base64", b"aGVsb") == b"hel"  # a dangling sixth of a quantum holds no octet
    assert decoded("7bit", b"as is  \r\n") == b"as is  \r\n"


_QP = st.lists(
    st.sampled_from([b"a", b" ", b"\t", b"=", b"=3D", b"=C3=A9", b"\r\n", b"\n", b"=\r\n", b"= \r\n", b"x" * 9])
)
_B64 = st.lists(st.sampled_from([b"aGVs", b"bG8", b"=", b"\r\n", b"!", b"QUJD", b"RA=="]))


@settings(max_examples=300, deadline=None)
@given(st.one_of(_QP.map(lambda p: ("quoted-printable", b"".join(p))), _B64.map(lambda p: ("base64", b"".join(p)))),
       st.lists(st.integers(0, 200), max_size=6))  # fmt: skip
def test_issue_9_decoding_does_not_depend_on_where_the_bytes_are_cut(case: tuple[str, bytes], cuts: list[int]) -> None:
    encoding, data = case
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    assert decoded(encoding, *(data[a:b] for a, b in itertools.pairwise(bounds))) == decoded(encoding, data)


def test_issue_9_search_decodes_quoted_printable_the_same_way() -> None:
    assert "".join(iter_body_text(b"soft=  \r\nbreak  \r\n", "quoted-printable", "utf-8", chunk_bytes=3)) == (
        "softbreak\r\n"
    )


def test_issue_9_quoted_printable_decoding_is_linear() -> None:
    """Runs of blanks with and without a line end after them, and a line without end, 10 MB each."""
    for data in (b" " * 10_000_000, b" \t" * 2_500_000 + b"\r\n" + b"x " * 2_500_000, b"=" * 10_000_000):
        start = time.process_time()
        out = decoded("quoted-printable", *(data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)))
        assert time.process_time() - start < 5
        assert len(out) <= len(data)

"""The MIME parser on real-world shapes and on garbage: offsets, ENVELOPE, BODYSTRUCTURE, search fields."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.mime.addresses import EnvelopeAddress, parse_address_list
from kartero.mime.headers import decode_words
from kartero.mime.index import base_subject, index_message, structured_index
from kartero.mime.structure import find_part, parse_message
from tests.unit.mime import corpus


def test_part_offsets_slice_the_original_bytes() -> None:
    data = corpus.MIXED
    root = parse_message(data)
    alternative, pdf, png = root.children
    plain, html = alternative.children
    assert data[plain.body_start : plain.end] == b"Please find the invoice attached."
    assert data[html.header_start : html.body_start] == b"Content-Type: text/html; charset=us-ascii\r\n\r\n"
    assert data[pdf.body_start : pdf.end] == corpus.PDF_B64[:-2]
    assert pdf.encoding == b"base64"
    assert data[png.body_start : png.end] == b"iVBORw0KGgo="
    assert find_part(root, (1, 2)) is html
    assert find_part(root, (4,)) is None


def test_nested_message_parts_are_numbered_through() -> None:
    root = parse_message(corpus.FORWARDED)
    forwarded = root.children[1]
    assert forwarded.message is not None
    assert find_part(root, (2, 1)) is forwarded.message.children[0]
    assert find_part(root, (2, 2)) is forwarded.message.children[1]


def test_broken_mime_still_gives_a_structure() -> None:
    root = parse_message(corpus.BROKEN)
    assert [corpus.BROKEN[c.body_start : c.end] for c in root.children] == [
        b"first part",
        b"second part without end\r\n",
    ]
    assert parse_message(corpus.NO_BOUNDARY).children == []
    headers_only = parse_message(corpus.HEADERS_ONLY)
    assert headers_only.body_start == headers_only.end == len(corpus.HEADERS_ONLY)
    bare_lf = parse_message(b"Subject: lf\nContent-Type: text/plain\n\nbody\n")
    assert bare_lf.header.get("subject") == b"lf" and bare_lf.body_start == 38


def test_index_fields() -> None:
    ix = index_message(corpus.ALTERNATIVE)
    assert ix.subject == "grüsse aus köln"  # case-folded for searching
    assert ix.from_ == "jörg müller <joerg@example.de>"
    assert ix.sort_from == "joerg"
    assert ix.sent_date == 1793728800
    latin = index_message(corpus.LATIN1)
    assert latin.subject == "café crème" and latin.sent_date is None


def test_address_lists() -> None:
    assert parse_address_list(b'"Doe, John" <john@example.com>, Jane <jane@x.org>') == (
        EnvelopeAddress(b"Doe, John", None, b"john", b"example.com"),
        EnvelopeAddress(b"Jane", None, b"jane", b"x.org"),
    )
    assert parse_address_list(b"undisclosed-recipients:;") == (
        EnvelopeAddress(None, None, b"undisclosed-recipients", None),
        EnvelopeAddress(None, None, None, None),
    )
    assert parse_address_list(b"John Q. Public <jqp@example.com> (comment (nested))") == (
        EnvelopeAddress(b"John Q. Public", None, b"jqp", b"example.com"),
    )
    assert parse_address_list(b'"Esc\\"aped" <e@x>, <@r1,@r2:u@h>') == (
        EnvelopeAddress(b'Esc"aped', None, b"e", b"x"),
        EnvelopeAddress(None, b"@r1,@r2", b"u", b"h"),
    )


def test_encoded_words_and_base_subject() -> None:
    assert decode_words(b"=?utf-8?q?caf=C3=A9?= =?utf-8?b?w6k=?=") == "caféé"
    assert decode_words(b"=?x-unknown?q?abc?=") == "abc"
    assert decode_words(b"=?utf-8?b?!!!?=") == "=?utf-8?b?!!!?="
    assert base_subject("Re: Fwd: [list] Hello (fwd)") == "HELLO"
    assert base_subject("[fwd: Re: Hello]") == "HELLO"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_index_never_raises_on_garbage(data: bytes) -> None:
    structured_index(data)  # index_message() falls back on any error: the parser itself must not raise


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"--b\r\n", b"--b--\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n",
                                 b"Content-Type: message/rfc822\r\n", b"\r\n", b"text\r\n", b"\n", b"--"]),
                max_size=60))  # fmt: skip
def test_index_never_raises_on_mime_soup(pieces: list[bytes]) -> None:
    structured_index(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(pieces))

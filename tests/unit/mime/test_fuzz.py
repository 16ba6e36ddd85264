"""Property tests (issue 8, findings 3 and 10): whatever bytes arrive, the structured parse never raises
and every index field has its type; encoded words and bodies decode in any charset; the decoders give
the same text however the input is cut."""

from __future__ import annotations

import base64
import binascii
import quopri

from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.mime.addresses import parse_address_list
from kartero.mime.headers import decode_body, decode_words, iter_body_text, parse_header_block
from kartero.mime.index import MessageIndex, base_subject, fallback_index, structured_index
from kartero.mime.parttree import decode_parts, encode_parts
from kartero.mime.structure import parse_content_type, parse_message

# Charset names: text encodings, names Python knows but refuses, invented ones, and odd bytes.
CHARSETS = st.sampled_from(
    ["utf-8", "UTF-8", "iso-8859-1", "latin1", "windows-1252", "us-ascii", "koi8-r", "iso-2022-jp", "utf-16",
     "utf-32", "utf-7", "gb2312", "big5", "shift_jis", "euc-kr", "utf-8*en", "x-unknown", "rot13", "hex", "zlib",
     "base64", "uu", "bz2", "quopri", "punycode", "idna", "undefined", "unicode_escape", "raw_unicode_escape",
     "", "\x00", "ümlaut", "a" * 100]
) | st.text(max_size=12)  # fmt: skip

TEXT = st.text(max_size=40)
RAW = st.binary(max_size=40)


@st.composite
def encoded_words(draw: st.DrawFn) -> bytes:
    charset = draw(CHARSETS).encode("utf-8", "replace").replace(b"?", b"").replace(b" ", b"")
    payload = draw(RAW | TEXT.map(lambda t: t.encode("utf-8")))
    if draw(st.booleans()):
        return b"=?" + charset + b"?" + draw(st.sampled_from([b"B", b"b"])) + b"?" + base64.b64encode(payload) + b"?="
    text = binascii.b2a_qp(payload, header=True).replace(b"=\n", b"").replace(b"?", b"=3F").replace(b" ", b"_")
    return b"=?" + charset + b"?" + draw(st.sampled_from([b"Q", b"q"])) + b"?" + text + b"?="


@st.composite
def comments(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(0, 120))
    inner = draw(st.sampled_from([b"c", b"\\)", b'"q"', b"", b"a@b"]))
    closing = draw(st.integers(0, depth))
    return b"(" * depth + inner + b")" * closing


ATOMS = st.sampled_from([b"a", b"b.c", b"@", b",", b";", b":", b"<", b">", b"<a@b>", b" ", b"\t", b'"q \\" s"',
                         b'"open', b"\\", b"[", b"]", b"(fwd)", b"re:", b"[x]", b"=?", b"?=", b"\xff"])  # fmt: skip
VALUES = st.lists(ATOMS | encoded_words() | comments(), max_size=8).map(b"".join)
LONG_VALUES = st.tuples(VALUES, st.integers(1, 400)).map(lambda pair: pair[0] * pair[1])


@st.composite
def header_fields(draw: st.DrawFn, values: st.SearchStrategy[bytes] = VALUES) -> bytes:
    name = draw(st.sampled_from([b"From", b"To", b"Cc", b"Bcc", b"Sender", b"Reply-To", b"Subject", b"Date",
                                 b"Message-ID", b"In-Reply-To", b"Content-Disposition", b"Content-Language",
                                 b"Content-Transfer-Encoding", b"Content-ID", b"X-Other", b""]))  # fmt: skip
    value = draw(values)
    if draw(st.booleans()):  # fold it
        value = value.replace(b" ", b"\r\n ", 1)
    return name + b":" + value + draw(st.sampled_from([b"\r\n", b"\n", b"\r\n\t\r\n"]))


BOUNDARIES = st.sampled_from([b"b", b"b1", b"inner alt", b"=_x", b"b" * 70, b"b\r"])
CONTENT_TYPES = st.sampled_from([b"text/plain", b"text/html; charset=utf-8", b"application/pdf", b"garbage",
                                 b"text/plain; charset=rot13", b'text/plain; name="a\\"b"; x*=utf-8\'\'%41',
                                 b"multipart/mixed", b"message/rfc822", b"message/global"])  # fmt: skip
BODIES = st.lists(st.sampled_from([b"line", b"--b", b"--b--", b"--bX", b"\r\n", b"\n", b"=C3=A9", b"aGk=", b"\xff"]),
                  max_size=8).map(b"".join)  # fmt: skip


def entities(depth: int) -> st.SearchStrategy[bytes]:
    headers = st.lists(header_fields(), max_size=3).map(b"".join)
    leaf = st.tuples(headers, CONTENT_TYPES, BODIES, st.booleans()).map(
        lambda t: t[0] + b"Content-Type: " + t[1] + b"\r\n" + (b"\r\n" if t[3] else b"") + t[2]
    )
    if depth == 0:
        return leaf
    inner = entities(depth - 1)
    multipart = st.tuples(headers, BOUNDARIES, st.lists(inner, max_size=3), st.booleans(), BODIES).map(
        lambda t: (
            t[0]
            + b'Content-Type: multipart/mixed; boundary="'
            + t[1]
            + b'"\r\n\r\n'
            + b"".join(b"--" + t[1] + b"\r\n" + part + b"\r\n" for part in t[2])
            + (b"--" + t[1] + b"--\r\n" if t[3] else b"")
            + t[4]
        )
    )
    embedded = st.tuples(headers, inner).map(lambda t: t[0] + b"Content-Type: message/rfc822\r\n\r\n" + t[1])
    return st.one_of(leaf, multipart, embedded)


MESSAGES = st.tuples(st.lists(header_fields(), max_size=6).map(b"".join), header_fields(LONG_VALUES), entities(2)).map(
    b"".join
)


def _check_index(ix: MessageIndex, size: int) -> None:
    for name in ("envelope", "body", "bodystructure"):
        value = getattr(ix, name)
        assert isinstance(value, bytes) and value.startswith(b"(") and value.endswith(b")")
    for name in (
        "subject",
        "from_",
        "to",
        "cc",
        "bcc",
        "message_id",
        "sort_subject",
        "sort_from",
        "sort_to",
        "sort_cc",
    ):
        assert isinstance(getattr(ix, name), str)
    assert ix.sent_date is None or isinstance(ix.sent_date, int)
    tree = ix.parts
    assert tree.header_start == 0 and tree.end == size
    assert decode_parts(encode_parts(tree)) == tree
    stack = [tree]
    while stack:
        node = stack.pop()
        assert 0 <= node.header_start <= node.body_start <= node.end <= size and isinstance(node.encoding, str)
        stack.extend(node.children)
        if node.message is not None:
            stack.append(node.message)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_index_with_the_right_types(data: bytes) -> None:
    _check_index(structured_index(data), len(data))
    _check_index(fallback_index(data), len(data))


@settings(max_examples=150, deadline=None)
@given(MESSAGES)
def test_grammar_aware_messages_index_with_the_right_types(data: bytes) -> None:
    _check_index(structured_index(data), len(data))
    _check_index(fallback_index(data), len(data))
    stack = [parse_message(data)]
    while stack:  # every part lies inside its parent, siblings in order
        part = stack.pop()
        inner = [*part.children, *([part.message] if part.message is not None else [])]
        assert all(part.body_start <= child.header_start <= child.end <= part.end for child in inner)
        assert all(a.end <= b.header_start for a, b in zip(part.children, part.children[1:], strict=False))
        stack.extend(inner)


@settings(max_examples=200, deadline=None)
@given(VALUES | LONG_VALUES)
def test_header_values_never_raise(value: bytes) -> None:
    assert isinstance(decode_words(value), str)
    assert isinstance(parse_address_list(value), tuple)
    assert isinstance(base_subject(decode_words(value)), str)
    parse_content_type(b"text/plain; " + value)
    assert parse_header_block(b"Subject:" + value + b"\r\n").get("subject") is not None


@settings(max_examples=200, deadline=None)
@given(RAW, CHARSETS, st.sampled_from(["base64", "quoted-printable", "7bit", "8bit", "x-garbage"]))
def test_bodies_decode_in_any_charset(raw: bytes, charset: str, encoding: str) -> None:
    assert isinstance(decode_body(raw, encoding, charset), str)
    assert isinstance("".join(iter_body_text(raw, encoding, charset, chunk_bytes=5)), str)


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=300),
    st.sampled_from(["utf-8", "iso-8859-1", "utf-16", "utf-32", "shift_jis", "iso-2022-jp", "utf-7", "", "rot13"]),
    st.sampled_from(["base64", "quoted-printable", "8bit"]),
    st.integers(4, 64),
)
def test_body_text_is_the_same_however_it_is_cut(text: str, charset: str, encoding: str, chunk: int) -> None:
    raw = text.encode(charset if charset not in ("", "rot13") else "utf-8", "replace")
    if encoding == "base64":
        raw = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    elif encoding == "quoted-printable":
        raw = quopri.encodestring(raw).replace(b"\n", b"\r\n")
    whole = decode_body(raw, encoding, charset)
    assert "".join(iter_body_text(raw, encoding, charset, chunk_bytes=chunk)) == whole
    assert "".join(iter_body_text(b"xx" + raw + b"yy", encoding, charset, 2, 2 + len(raw), chunk_bytes=chunk)) == whole

"""The stored part tree (kartero.mime.parttree): typed in memory, the same JSON on disk as before issue 10."""

from __future__ import annotations

import pytest

from kartero.mime.index import index_message
from kartero.mime.parttree import PartNode, decode_parts, encode_parts

NESTED = (
    b"From: a@b\r\nSubject: x\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\npre\r\n--BB\r\n"
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\nhi=21\r\n--BB\r\n"
    b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=CC\r\n"
    b"\r\n--CC\r\n\r\nplain\r\n--CC\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"aGk=\r\n--CC--\r\n\r\n--BB--\r\nepilogue\r\n"
)
# What the code before issue 10 stored for NESTED, and for a one-part message (also the shape of the
# fallback and minimal indexes): positional lists [header_start, body_start, end, encoding, children,
# embedded message].
STORED_NESTED = (
    '[0,69,383,"7bit",[[80,153,158,"quoted-printable",[],null],[166,198,363,"7bit",[],[198,266,363,"7bit",'
    '[[272,274,279,"7bit",[],null],[287,349,353,"base64",[],null]],null]]],null]'
)
STORED_PLAIN = '[0,18,24,"7bit",[],null]'


def test_issue_10_trees_stored_before_decode_to_the_typed_tree() -> None:
    inner = PartNode(198, 266, 363, "7bit", (PartNode(272, 274, 279, "7bit"), PartNode(287, 349, 353, "base64")))
    assert decode_parts(STORED_NESTED) == PartNode(
        0, 69, 383, "7bit", (PartNode(80, 153, 158, "quoted-printable"), PartNode(166, 198, 363, "7bit", (), inner))
    )
    assert decode_parts(STORED_PLAIN) == PartNode(0, 18, 24, "7bit")


def test_issue_10_the_stored_form_is_unchanged() -> None:
    """Old and new versions read each other's rows: the encoder writes exactly what was written before."""
    assert encode_parts(index_message(NESTED).parts) == STORED_NESTED
    assert encode_parts(index_message(b"Subject: plain\r\n\r\nbody\r\n").parts) == STORED_PLAIN
    for stored in (STORED_NESTED, STORED_PLAIN):
        assert encode_parts(decode_parts(stored)) == stored


@pytest.mark.parametrize(
    "stored",
    ['{"a": 1}', "[0,1,2]", '[0,1,2,3,[],null]', '["0",1,2,"7bit",[],null]', '[0,1,2,"7bit",{},null]', "[" * 300],
)
def test_issue_10_what_the_encoder_never_wrote_is_a_value_error(stored: str) -> None:
    with pytest.raises(ValueError):
        decode_parts(stored)


def test_issue_10_decoding_is_bounded_in_depth() -> None:
    node = PartNode(0, 0, 0, "7bit")
    for _ in range(250):
        node = PartNode(0, 0, 0, "7bit", (), node)
    with pytest.raises(ValueError):
        decode_parts(encode_parts(node))

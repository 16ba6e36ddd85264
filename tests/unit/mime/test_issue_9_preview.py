"""Issue 9, PREVIEW (RFC 8970): what the preview of a message holds, and that making it stays bounded."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.mime import preview as preview_module
from kartero.mime.index import structured_index
from kartero.mime.preview import (
    PREVIEW_CHARS,
    PREVIEW_HEADER_BYTES,
    PREVIEW_PARTS,
    PREVIEW_SOURCE_BYTES,
    PREVIEW_TAGS,
    make_preview,
)


def preview(message: bytes) -> str:
    return structured_index(message).preview


def test_issue_9_preview_of_plain_text_leaves_out_quotes_and_signature() -> None:
    message = (
        b"Subject: re\r\n\r\nSounds good,\r\n\r\n> On Monday you wrote:\r\n>> earlier\r\nsee you\tthere\r\n"
        b"-- \r\nAlice\r\n"
    )
    assert preview(message) == "Sounds good, see you there"


def test_issue_9_preview_takes_the_first_text_part_that_is_no_attachment() -> None:
    message = (
        b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n"
        b"--m\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n\r\nattached\r\n"
        b"--m\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner text\r\n"
        b"--m\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n"
        b"--a\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"caf=E9 =\r\nau lait\r\n--a\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--a--\r\n--m--\r\n"
    )
    assert preview(message) == "café au lait"


def test_issue_9_preview_of_html_is_its_text() -> None:
    body = (
        b"<!DOCTYPE html><html><head><title>Title</title><style>b{}</style><script>if (a < b) {}</script>"
        b"</head><body><p>One&nbsp;&lt;two&gt;</p><script type=x>hidden</script ><div>three</div>"
        b"<SCRIPT>x</SCRIPT>1 < 2 <3</body>"
    )
    message = b"Subject: h\r\nContent-Type: text/html\r\n\r\n" + body
    assert preview(message) == "One <two> three 1 < 2 <3"  # &nbsp; is white space too


def test_issue_9_preview_of_html_passes_a_bounded_number_of_tags() -> None:
    """Text behind more than PREVIEW_TAGS tags is not looked for: each tag costs a step of the scan."""
    head = b"Subject: h\r\nContent-Type: text/html\r\n\r\n"
    assert preview(head + b"<br>" * (PREVIEW_TAGS - 1) + b"hello") == "hello"
    assert preview(head + b"<br>" * PREVIEW_TAGS + b"hello") == ""


def test_issue_9_preview_is_at_most_256_characters_of_one_line() -> None:
    text = ("word\x01\x7f " * 100).encode()
    result = preview(b"Subject: long\r\n\r\n" + text)
    assert len(result) <= 256 and result.startswith("word word ") and "\x01" not in result and "\x7f" not in result


def test_issue_9_preview_reads_bounded_windows() -> None:
    """A message of many parts without text, and one huge text part: the preview reads at most the header
    windows of PREVIEW_PARTS leaves, or one source window."""
    parts = b"".join(b"--b\r\nContent-Type: image/png\r\n\r\n" + b"x" * 100_000 + b"\r\n" for _ in range(200))
    many = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n"
    huge = b"Subject: big\r\n\r\n" + b"a " * 5_000_000
    limits = {many: PREVIEW_PARTS * PREVIEW_HEADER_BYTES, huge: PREVIEW_HEADER_BYTES + PREVIEW_SOURCE_BYTES}
    for message, limit in limits.items():
        tree = structured_index(message).parts
        read: list[int] = []

        def reader(start: int, end: int, data: bytes = message, sizes: list[int] = read) -> bytes:
            sizes.append(end - start)
            return data[start:end]

        make_preview(reader, tree)
        assert sum(read) <= limit


def test_issue_9_preview_of_hostile_html_is_linear() -> None:
    """Unclosed comments, script elements and tags, end tags without '>', over a full source window: the
    scan finishes far inside the bound (each search starts where the last ended)."""
    for piece in (b"<!--", b"<script>", b"</script", b"<", b"<a ", b"&amp", b"</ script x"):
        body = piece * (PREVIEW_SOURCE_BYTES // len(piece))
        message = b"Subject: h\r\nContent-Type: text/html\r\n\r\n" + body
        start = time.process_time()
        preview(message)
        assert time.process_time() - start < 5, piece


# Pieces of MIME and HTML that the preview code treats specially, mixed with arbitrary octets.
_PIECES = st.sampled_from(
    [b"\r\n", b"--b\r\n", b"--b--\r\n", b"Content-Type: text/html\r\n", b"Content-Type: text/plain; charset=",
     b"utf-16", b"iso-2022-jp", b"Content-Type: multipart/mixed; boundary=b\r\n",
     b"Content-Type: message/rfc822\r\n", b"Content-Transfer-Encoding: base64\r\n",
     b"Content-Transfer-Encoding: quoted-printable\r\n", b"Content-Disposition: attachment\r\n", b"<", b">",
     b"<!--", b"-->", b"<script>", b"</script", b"<style", b"&", b"&#", b"&#x110000;", b";", b"=\r\n", b"=C3",
     b"> ", b"-- \r\n", b"\x00", b"\x1b$B", b"\xc3", b" ", b"\t"]
)  # fmt: skip
_MESSAGES = st.lists(_PIECES | st.binary(max_size=30), max_size=60).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(_MESSAGES)
def test_issue_9_preview_never_raises_and_is_bounded(message: bytes) -> None:
    """Whatever a sender writes, the preview is made without an exception, from bounded reads, and is at
    most 256 characters on one line without control characters or outer white space."""
    tree = structured_index(message).parts
    read: list[int] = []

    def reader(start: int, end: int) -> bytes:
        read.append(end - start)
        return message[start:end]

    result = make_preview(reader, tree)
    assert result == preview(message)
    assert len(result) <= PREVIEW_CHARS and result == result.strip()
    assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in result)
    assert len(read) <= PREVIEW_PARTS + 1 and sum(read) <= PREVIEW_PARTS * PREVIEW_HEADER_BYTES + PREVIEW_SOURCE_BYTES


_PRINTABLE = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=10)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<", ">", "<!--", "-->", "<script>", "</script>", "<title", "</ title>", "&lt;",
                                 "&", "a", " ", "\n", "</", "<b>"]) | _PRINTABLE, max_size=80).map("".join))
def test_issue_9_html_reduced_to_text_never_raises(markup: str) -> None:
    """Markup without a tag, comment or entity is its own text; any other comes out bounded."""
    result = preview(b"Subject: h\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + markup.encode())
    assert len(result) <= PREVIEW_CHARS
    if "<" not in markup and "&" not in markup:
        assert result == " ".join(markup.split())[:PREVIEW_CHARS].rstrip()


def _old_plain_preview(text: str) -> str:
    """The plain-text preview as issue 9 made it: the whole text cut, filtered and collapsed."""
    import re

    signature = re.compile(r"^-- ?\r?$", re.MULTILINE).search(text)
    if signature is not None:
        text = text[: signature.start()]
    kept = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(">"))
    controls = dict.fromkeys([*range(0x20), 0x7F], " ")
    return " ".join(kept.translate(controls).split())[:256].rstrip()


_PLAIN = st.lists(
    st.sampled_from(["word", "  ", "\n", "\r\n", "\r", "> ", ">", "-- ", "--", "\t", "\x85", "\u2028", "é", "x" * 40,
                     "\x00", "\x7f", "-"]),
    max_size=80,
).map("".join)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(_PLAIN)
def test_issue_10_plain_preview_stops_early_yet_shows_what_it_showed(text: str) -> None:
    assert preview_module._plain_preview(text) == _old_plain_preview(text)


def test_issue_10_plain_preview_of_a_long_text_is_the_old_one() -> None:
    """128 KiB of text, 256 characters wanted (the new code stops after them; the old collapsed it all)."""
    text = "The quick brown fox jumps over the lazy dog.\r\n" * 3000
    assert preview_module._plain_preview(text) == _old_plain_preview(text)
    assert preview_module._plain_preview(text).endswith("The quick brown fox jumps over")

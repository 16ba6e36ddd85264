"""The preview of a message (RFC 8970): the start of its first text part as plain text, at most 256
characters, computed when the message is stored (or, for mail stored before previews were kept, on its
first FETCH PREVIEW) from the part tree kept with it.

What is read is bounded whatever the message: the header blocks of at most PREVIEW_PARTS leaves (a
PREVIEW_HEADER_BYTES window each) to find the part, then PREVIEW_SOURCE_BYTES of its body. HTML is reduced
to its text by a linear scan (no parser whose worst case a sender chooses) that stops after PREVIEW_TAGS
tags or once it has the text it needs; quoted lines (`>`) and what follows a signature line (`-- `) are
left out, white space is collapsed.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator

from kartero.mime.headers import iter_body_text, parse_header_block
from kartero.mime.parttree import PartNode
from kartero.mime.structure import ContentType, parse_content_type, parse_disposition

PREVIEW_CHARS = 256  # RFC 8970 §3: at most 256 characters
PREVIEW_PARTS = 32
PREVIEW_HEADER_BYTES = 16 * 1024
PREVIEW_SOURCE_BYTES = 128 * 1024
PREVIEW_TAGS = 4096  # HTML tags passed before the text (a newsletter's layout tables hold hundreds)

Reader = Callable[[int, int], bytes]  # (start, end) -> octets of the stored message


def make_preview(read: Reader, tree: PartNode) -> str:
    """The preview text of the message whose part tree is `tree`; "" when
    it has no text part among the first PREVIEW_PARTS leaves."""
    for node, content_type in _leaves(read, tree):
        subtype = content_type.subtype.lower()
        if content_type.type.lower() != b"text" or subtype not in (b"plain", b"html"):
            continue
        charset = (content_type.param(b"charset") or b"").decode("latin-1")
        source = read(node.body_start, min(node.end, node.body_start + PREVIEW_SOURCE_BYTES))
        text = "".join(iter_body_text(source, node.encoding, charset))
        return _shortened(_html_text(text)) if subtype == b"html" else _plain_preview(text)
    return ""


def _leaves(read: Reader, tree: PartNode) -> Iterator[tuple[PartNode, ContentType]]:
    """The first PREVIEW_PARTS leaves in order that are not attachments, with their Content-Type; an
    embedded message (message/rfc822) is not looked into. The tree is walked with a stack of its own."""
    pending = [tree]
    seen = 0
    while pending and seen < PREVIEW_PARTS:
        node = pending.pop()
        if node.children:
            pending += reversed(node.children)
            continue
        seen += 1
        if node.message is not None:
            continue
        header_end = min(node.body_start, node.header_start + PREVIEW_HEADER_BYTES)
        header = parse_header_block(read(node.header_start, header_end))
        disposition = parse_disposition(header.get("content-disposition"))
        if disposition is not None and disposition[0].lower() == b"attachment":
            continue
        yield node, parse_content_type(header.get("content-type"))


def _plain_preview(text: str) -> str:
    """The preview of plain text: its lines in order, quoted ones (`>`) left out, up to a signature line
    (`-- `), white space collapsed, at most PREVIEW_CHARS characters. It stops reading once it has them:
    the cost follows the preview, not the 128 KiB of text read (issue 10: collapsing all of it took
    3.3 ms a message, most of a 100 KB message's index)."""
    words: list[str] = []
    length = 0
    start, size = 0, len(text)
    while start < size and length <= PREVIEW_CHARS:
        end = text.find("\n", start)
        end = size if end < 0 else end
        segment = text[start:end]
        start = end + 1
        if segment in ("--", "-- ", "--\r", "-- \r"):
            break  # the signature starts: nothing after it is shown
        for line in segment.splitlines():  # as str.splitlines() cuts lines (\r, \x85, \u2028, ...)
            if line.lstrip().startswith(">"):
                continue
            for word in line.translate(_CONTROLS).split():
                words.append(word)
                length += len(word) + 1
    return " ".join(words)[:PREVIEW_CHARS].rstrip()


_CONTROLS = dict.fromkeys([*range(0x20), 0x7F], " ")


# Elements whose content is no text a reader sees.
_HIDDEN = ("script", "style", "head", "title")
_HIDDEN_END = {name: re.compile(rf"</\s*{name}\b", re.IGNORECASE) for name in _HIDDEN}
_HIDDEN_INITIALS = frozenset("hsHStT")
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# HTML §13.2.5.6: what may follow "<" in a tag, an end tag, a comment or a processing instruction.
_TAG_STARTS = frozenset("/!?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _html_text(markup: str) -> str:
    """The text of an HTML document: tags and comments removed, the content of script, style, head and
    title skipped, entities decoded. It stops once it holds PREVIEW_CHARS visible characters (the rest
    could not be shown) or has passed PREVIEW_TAGS tags. One pass: every search starts where the last one
    ended."""
    out: list[str] = []
    visible = tags = 0
    position, size = 0, len(markup)
    while position < size and visible < PREVIEW_CHARS and tags < PREVIEW_TAGS:
        opening = markup.find("<", position)
        if opening != position:
            piece = html.unescape(markup[position : size if opening < 0 else opening]).translate(_CONTROLS)
            out.append(piece)
            visible += sum(map(len, piece.split()))
            if opening < 0:
                break
        following = markup[opening + 1 : opening + 2]
        if following not in _TAG_STARTS:
            out.append("<")  # HTML §13.2.5.6: "<" before anything else is text ("a < b")
            visible += 1
            position = opening + 1
            continue
        tags += 1
        if following == "!" and markup.startswith("<!--", opening):
            end = markup.find("-->", opening + 4)
            position = size if end < 0 else end + 3
            continue
        closing = markup.find(">", opening + 1)
        if closing < 0:
            break  # an unfinished tag: what follows is no text
        position = closing + 1
        out.append(" ")  # a tag separates words (<br>, <p>, <td>, ...)
        if following in _HIDDEN_INITIALS and (name := _TAG_NAME.match(markup, opening + 1)) is not None:
            hidden_end = _HIDDEN_END.get(name.group().lower())
            if hidden_end is not None:
                end_tag = hidden_end.search(markup, position)
                end = -1 if end_tag is None else markup.find(">", end_tag.end())
                position = size if end < 0 else end + 1
    return "".join(out)


def _shortened(text: str) -> str:
    """White space collapsed, control characters gone, at most PREVIEW_CHARS characters."""
    return " ".join(text.translate(_CONTROLS).split())[:PREVIEW_CHARS].rstrip()

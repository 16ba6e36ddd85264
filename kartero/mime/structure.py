"""The MIME tree of a message (RFC 2045/2046) with byte offsets, parsed once and kept.

Every part records where its MIME header starts, where its body starts and where it ends, so an IMAP
`BODY[1.2]` is a slice of the stored bytes. Broken MIME never raises: a multipart without a boundary is
a single part, a missing closing delimiter ends the last part at the end of the message, and nesting or
part counts past sane limits stop the descent (the rest is kept as an opaque body).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kartero.mime.headers import HeaderBlock, find_body_start, parse_header_block

MAX_DEPTH = 40
MAX_PARTS = 5000


@dataclass(frozen=True, slots=True)
class ContentType:
    type: bytes  # as written (display); compare via .lower()
    subtype: bytes
    params: tuple[tuple[bytes, bytes], ...]

    @property
    def mime_type(self) -> str:
        return f"{self.type.decode('latin-1')}/{self.subtype.decode('latin-1')}".lower()

    def param(self, name: bytes) -> bytes | None:
        for key, value in self.params:
            if key.lower() == name:
                return value
        return None


TEXT_PLAIN = ContentType(b"text", b"plain", ((b"charset", b"us-ascii"),))
MESSAGE_RFC822 = ContentType(b"message", b"rfc822", ())


@dataclass(slots=True)
class Part:
    """One MIME entity. For the whole message, `header_start` is 0 and `header` is the message header."""

    header_start: int
    body_start: int
    end: int
    header: HeaderBlock
    content_type: ContentType
    children: list[Part] = field(default_factory=list)  # multipart/*
    message: Part | None = None  # message/rfc822 and message/global: the embedded message

    @property
    def is_multipart(self) -> bool:
        return bool(self.children)

    @property
    def encoding(self) -> bytes:
        """Content-Transfer-Encoding as written, default 7BIT (RFC 2045 §6.1)."""
        value = self.header.get("content-transfer-encoding")
        return value.strip() if value and value.strip() else b"7BIT"


_TOKEN_END = re.compile(rb'[\s;()<>@,:\\"/\[\]?=]')


def _skip_comments(value: bytes) -> bytes:
    if b"(" not in value:
        return value
    out, depth, i = bytearray(), 0, 0
    in_quote = False
    while i < len(value):
        c = value[i : i + 1]
        if in_quote:
            out += c
            if c == b"\\" and i + 1 < len(value):
                out += value[i + 1 : i + 2]
                i += 1
            elif c == b'"':
                in_quote = False
        elif c == b'"' and depth == 0:
            in_quote = True
            out += c
        elif c == b"(":
            depth += 1
        elif c == b")" and depth:
            depth -= 1
        elif depth == 0:
            out += c
        i += 1
    return bytes(out)


def parse_params(text: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """`; a=b; c="d e"` parameters; values unquoted, names as written, RFC 2231 forms kept as sent."""
    params: list[tuple[bytes, bytes]] = []
    i, n = 0, len(text)
    while i < n:
        semi = text.find(b";", i)
        if semi < 0:
            break
        i = semi + 1
        while i < n and text[i : i + 1] in b" \t\r\n":
            i += 1
        eq = text.find(b"=", i)
        if eq < 0:
            break
        name = text[i:eq].strip()
        i = eq + 1
        while i < n and text[i : i + 1] in b" \t\r\n":
            i += 1
        if text[i : i + 1] == b'"':
            buf = bytearray()
            i += 1
            while i < n and text[i : i + 1] != b'"':
                if text[i : i + 1] == b"\\" and i + 1 < n:
                    i += 1
                buf += text[i : i + 1]
                i += 1
            value = bytes(buf)
            i += 1
        else:
            end = text.find(b";", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
        if name and not _TOKEN_END.search(name.rstrip(b"*")):
            params.append((name, value))
    return tuple(params)


def parse_content_type(value: bytes | None, default: ContentType = TEXT_PLAIN) -> ContentType:
    """RFC 2045 §5.1; an absent or unparsable type gives the default (text/plain; charset=us-ascii)."""
    if value is None:
        return default
    value = _skip_comments(value).strip()
    main, _, rest = value.partition(b";")
    type_, slash, subtype = main.strip().partition(b"/")
    type_, subtype = type_.strip(), subtype.strip()
    if not slash or not type_ or not subtype or _TOKEN_END.search(type_) or _TOKEN_END.search(subtype):
        return TEXT_PLAIN
    return ContentType(type_, subtype, parse_params(b";" + rest if rest else b""))


def parse_disposition(value: bytes | None) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]] | None:
    if value is None:
        return None
    value = _skip_comments(value).strip()
    main, _, rest = value.partition(b";")
    main = main.strip()
    if not main:
        return None
    return main, parse_params(b";" + rest if rest else b"")


def parse_message(data: bytes) -> Part:
    """The MIME tree of a whole message."""
    counter = [0]
    return _parse_entity(data, 0, len(data), TEXT_PLAIN, 0, counter)


def _parse_entity(data: bytes, start: int, end: int, default: ContentType, depth: int, counter: list[int]) -> Part:
    counter[0] += 1
    header_end, body_start = find_body_start(data, start, end)
    header = parse_header_block(data[start:header_end])
    content_type = parse_content_type(header.get("content-type"), default)
    part = Part(start, body_start, end, header, content_type)
    if depth >= MAX_DEPTH or counter[0] >= MAX_PARTS:
        return part
    main = content_type.type.lower()
    if main == b"multipart":
        boundary = content_type.param(b"boundary")
        if boundary:
            child_default = MESSAGE_RFC822 if content_type.subtype.lower() == b"digest" else TEXT_PLAIN
            for child_start, child_end in _split_multipart(data, body_start, end, boundary):
                part.children.append(_parse_entity(data, child_start, child_end, child_default, depth + 1, counter))
                if counter[0] >= MAX_PARTS:
                    break
    elif main == b"message" and content_type.subtype.lower() in (b"rfc822", b"global"):
        part.message = _parse_entity(data, body_start, end, TEXT_PLAIN, depth + 1, counter)
    return part


def _split_multipart(data: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """Body ranges of the parts between `--boundary` delimiter lines (RFC 2046 §5.1.1).

    The line break before a delimiter belongs to the delimiter, not to the part before it.
    """
    delimiter = b"--" + boundary
    ranges: list[tuple[int, int]] = []
    part_start: int | None = None
    pos = start
    while pos < end:
        if pos == start and data.startswith(delimiter, pos):
            hit = pos
            line_break = pos
        else:
            found = data.find(b"\n" + delimiter, pos - 1 if pos > start else pos, end)
            if found < 0:
                break
            hit = found + 1
            line_break = found - 1 if found > start and data[found - 1 : found] == b"\r" else found
        after = hit + len(delimiter)
        is_close = data.startswith(b"--", after)
        eol = data.find(b"\n", after, end)
        rest = data[after + (2 if is_close else 0) : eol if eol >= 0 else end]
        if rest.strip(b" \t\r"):
            pos = after  # "--boundaryXYZ": only a prefix of some other line, not a delimiter
            continue
        if part_start is not None:
            ranges.append((part_start, max(part_start, line_break)))
        if is_close:
            return ranges
        part_start = eol + 1 if eol >= 0 else end
        pos = part_start
    if part_start is not None and part_start < end:
        ranges.append((part_start, end))  # no closing delimiter: the last part runs to the end
    elif part_start is not None and not ranges:
        ranges.append((part_start, end))
    return ranges


def find_part(root: Part, section: tuple[int, ...]) -> Part | None:
    """The part a numeric IMAP section names (RFC 9051 §6.4.5), or None when it does not exist.

    For a non-multipart message or part, `1` is its body itself; a message/rfc822 part's numbers
    continue into the embedded message.
    """
    part = root
    for number in section:
        if part.message is not None and not part.children:
            part = part.message
        if part.children:
            if not 1 <= number <= len(part.children):
                return None
            part = part.children[number - 1]
        elif number != 1:
            return None
    return part

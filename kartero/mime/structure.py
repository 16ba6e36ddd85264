"""The MIME tree of a message (RFC 2045/2046) with byte offsets, parsed once and kept.

Every part records where its MIME header starts, where its body starts and where it ends, so an IMAP
`BODY[1.2]` is a slice of the stored bytes. Broken MIME never raises: a multipart without a boundary is
a single part, a missing closing delimiter ends the last part at the end of the message.

Hostile MIME costs time linear in the message and a bounded amount of Python work: nesting deeper than
MAX_DEPTH, parts beyond MAX_PARTS, header lines beyond the header limits and boundary searches beyond
the scan budget all stop the descent, and what is left is kept as an opaque body. The message may be
any `MessageData` (bytes, or an mmap of a spool file): only bounded slices of it are copied.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from kartero.mime.headers import (
    EMPTY_HEADER,
    HeaderBlock,
    MessageData,
    find_body_start,
    find_bounded,
    parse_header_block,
    quoted_string_end,
    strip_comments,
)

# Dovecot's message parser defaults (MESSAGE_PARSER_DEFAULT_MAX_NESTED/TOTAL_MIME_PARTS): real mail
# stays far below.
MAX_DEPTH = 100
MAX_PARTS = 10_000
# A header block is parsed up to this many bytes and lines (the offsets still cover all of it), a
# Content-Type or Content-Disposition up to MAX_PARAMS parameters, a Content-Language up to
# MAX_LANGUAGES tags; all header blocks of a message together up to HEADER_BYTES_BUDGET bytes and
# HEADER_ITEMS_BUDGET lines, parameters and tags, each of which is a Python step.
MAX_HEADER_BYTES = 256 * 1024
MAX_HEADER_LINES = 10_000
MAX_PARAMS = 100
MAX_LANGUAGES = 100
HEADER_BYTES_BUDGET = 4 << 20
HEADER_ITEMS_BUDGET = 100_000
# Each multipart searches its whole body for its delimiter, so nested multiparts read the same bytes once
# per level: the searches of one message may read SCAN_FACTOR times its size plus SCAN_SLACK_BYTES, a
# candidate delimiter line (one Python step) counting CANDIDATE_BYTES. Real mail needs a fraction.
SCAN_FACTOR = 8
CANDIDATE_BYTES = 4096
SCAN_SLACK_BYTES = MAX_PARTS * CANDIDATE_BYTES + (8 << 20)

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
    disposition: tuple[bytes, tuple[tuple[bytes, bytes], ...]] | None = None  # Content-Disposition
    languages: tuple[bytes, ...] = ()  # Content-Language tags

    @property
    def is_multipart(self) -> bool:
        return bool(self.children)

    @property
    def encoding(self) -> bytes:
        """Content-Transfer-Encoding as written, default 7bit (RFC 2045 §6.1; lower case, as Dovecot sends it)."""
        value = self.header.get("content-transfer-encoding")
        return value.strip() if value and value.strip() else b"7bit"


_TOKEN_END = re.compile(rb'[\s;()<>@,:\\"/\[\]?=]')
_ESCAPED = re.compile(rb"\\([\x00-\xff])")  # unquoted by split and join: a template sub is 4x slower per pair
_NOT_BLANK = re.compile(rb"[^ \t\r\n]")


def _skip_blanks(text: bytes, i: int) -> int:
    blank_end = _NOT_BLANK.search(text, i)
    return len(text) if blank_end is None else blank_end.start()


def parse_params(text: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """`; a=b; c="d e"` parameters, at most MAX_PARAMS; values unquoted, names as written, RFC 2231 forms
    kept as sent."""
    params: list[tuple[bytes, bytes]] = []
    i, n = 0, len(text)
    while i < n and len(params) < MAX_PARAMS:
        semi = text.find(b";", i)
        if semi < 0:
            break
        i = _skip_blanks(text, semi + 1)
        eq = text.find(b"=", i)
        if eq < 0:
            break
        name = text[i:eq].strip()
        i = _skip_blanks(text, eq + 1)
        if text[i : i + 1] == b'"':
            end = quoted_string_end(text, i)
            value = b"".join(_ESCAPED.split(text[i + 1 : end - 1 if end >= 0 else n]))
            i = end if end >= 0 else n + 1
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
    value = strip_comments(value, b"").strip()
    main, _, rest = value.partition(b";")
    type_, slash, subtype = main.strip().partition(b"/")
    type_, subtype = type_.strip(), subtype.strip()
    if not slash or not type_ or not subtype or _TOKEN_END.search(type_) or _TOKEN_END.search(subtype):
        return TEXT_PLAIN
    return ContentType(type_, subtype, parse_params(b";" + rest if rest else b""))


def parse_languages(value: bytes | None) -> tuple[bytes, ...]:
    """Content-Language tags (RFC 3282), at most MAX_LANGUAGES."""
    if not value:
        return ()
    return tuple(tag.strip() for tag in value.split(b",", MAX_LANGUAGES)[:MAX_LANGUAGES] if tag.strip())


def parse_disposition(value: bytes | None) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]] | None:
    if value is None:
        return None
    value = strip_comments(value, b"").strip()
    main, _, rest = value.partition(b";")
    main = main.strip()
    if not main:
        return None
    return main, parse_params(b";" + rest if rest else b"")


@dataclass(slots=True)
class _Budget:
    """What is left of one message's limits; once `exhausted`, no part descends any further."""

    scan_bytes: int
    header_bytes: int = HEADER_BYTES_BUDGET
    header_items: int = HEADER_ITEMS_BUDGET
    parts: int = 0
    exhausted: bool = False


def parse_message(data: MessageData) -> Part:
    """The MIME tree of a whole message: linear in its size, bounded Python work (see the module)."""
    budget = _Budget(scan_bytes=SCAN_FACTOR * len(data) + SCAN_SLACK_BYTES)
    return _parse_entity(data, 0, len(data), TEXT_PLAIN, 0, budget)


def _read_header(data: MessageData, start: int, header_end: int, budget: _Budget) -> HeaderBlock:
    """The parsed header block data[start:header_end], within the per-block and per-message limits."""
    size = min(header_end - start, MAX_HEADER_BYTES, budget.header_bytes)
    lines = min(MAX_HEADER_LINES, budget.header_items)
    if size <= 0 or lines <= 0:
        if header_end > start:
            budget.exhausted = True
        return EMPTY_HEADER
    raw = data[start : start + size]
    budget.header_bytes -= size
    budget.header_items -= min(lines, raw.count(b"\n") + 1)
    return parse_header_block(raw, lines)


def _parse_entity(data: MessageData, start: int, end: int, default: ContentType, depth: int, budget: _Budget) -> Part:
    budget.parts += 1
    header_end, body_start = find_body_start(data, start, end)
    header = _read_header(data, start, header_end, budget)
    content_type = parse_content_type(header.get("content-type"), default)
    disposition = parse_disposition(header.get("content-disposition"))
    languages = parse_languages(header.get("content-language"))
    part = Part(start, body_start, end, header, content_type, disposition=disposition, languages=languages)
    budget.header_items -= len(content_type.params) + (len(disposition[1]) if disposition else 0) + len(languages)
    if depth >= MAX_DEPTH or budget.parts >= MAX_PARTS or budget.exhausted:
        return part
    main = content_type.type.lower()
    if main == b"multipart":
        boundary = content_type.param(b"boundary")
        if boundary:
            child_default = MESSAGE_RFC822 if content_type.subtype.lower() == b"digest" else TEXT_PLAIN
            for child_start, child_end in _split_multipart(data, body_start, end, boundary, budget):
                part.children.append(_parse_entity(data, child_start, child_end, child_default, depth + 1, budget))
                if budget.parts >= MAX_PARTS or budget.exhausted:
                    break
    elif main == b"message" and content_type.subtype.lower() in (b"rfc822", b"global"):
        part.message = _parse_entity(data, body_start, end, TEXT_PLAIN, depth + 1, budget)
    return part


def _split_multipart(
    data: MessageData, start: int, end: int, boundary: bytes, budget: _Budget
) -> Iterator[tuple[int, int]]:
    """Body ranges of the parts between `--boundary` delimiter lines (RFC 2046 §5.1.1), found lazily.

    The line break before a delimiter belongs to the delimiter, not to the part before it. When the scan
    budget runs out, the part being read runs to the end, as if its closing delimiter were missing.
    """
    delimiter = b"--" + boundary
    needle = b"\n" + delimiter
    part_start: int | None = None
    has_parts = False
    pos = start
    while pos < end:
        if pos == start and data[pos : pos + len(delimiter)] == delimiter:
            hit = line_break = pos
        else:
            search_from = pos - 1 if pos > start else pos
            found = _find_within_budget(data, needle, search_from, end, budget, CANDIDATE_BYTES)
            if found < 0:
                break
            hit = found + 1
            line_break = found - 1 if found > start and data[found - 1 : found] == b"\r" else found
        after = hit + len(delimiter)
        is_close = data[after : after + 2] == b"--"
        eol = _find_within_budget(data, b"\n", after, end, budget, 0)
        if eol < 0 and budget.exhausted:
            break
        if not _is_blank(data, after + (2 if is_close else 0), eol if eol >= 0 else end):
            pos = after  # "--boundaryXYZ": only a prefix of some other line, not a delimiter
            continue
        if part_start is not None:
            yield part_start, max(part_start, line_break)
            has_parts = True
        if is_close:
            return
        part_start = eol + 1 if eol >= 0 else end
        pos = part_start
    if part_start is not None and (part_start < end or not has_parts):
        yield part_start, end  # no closing delimiter: the last part runs to the end


def _find_within_budget(data: MessageData, sub: bytes, start: int, end: int, budget: _Budget, step: int) -> int:
    """find_bounded(), paid from the scan budget (plus `step` for the caller's Python work); -1 with
    `budget.exhausted` set when the budget ends before `sub` or `end` is reached."""
    limit = min(end, start + max(budget.scan_bytes, 0) + len(sub))
    found = find_bounded(data, sub, start, limit)
    budget.scan_bytes -= max(0, (limit if found < 0 else found) - start) + step
    if found < 0 and limit < end:
        budget.exhausted = True
    return found


def _is_blank(data: MessageData, start: int, end: int) -> bool:
    """Whether data[start:end] holds only spaces, tabs and CRs (read in bounded slices)."""
    if end - start <= 4096:
        return not data[start:end].strip(b" \t\r")
    return all(not data[pos : min(end, pos + 4096)].strip(b" \t\r") for pos in range(start, end, 4096))


def find_part(root: Part, section: tuple[int, ...]) -> Part | None:
    """The part a numeric IMAP section names (RFC 9051 §6.4.5), or None when it does not exist.

    A multipart's numbers name its children. A part that is not multipart has only the number 1, itself
    (so `1` of a single-part message is its body); a message/rfc822 part's further numbers continue in
    the embedded message, whose single part (or children) come next: `1.1` of a message/rfc822 message
    is the embedded message's body. Any other part has nothing below it. This is Dovecot's rule
    (imap_msgpart_find), and what BODYSTRUCTURE describes.
    """
    part = root
    for index, number in enumerate(section):
        more = index + 1 < len(section)
        if part.children:
            if not 1 <= number <= len(part.children):
                return None
            part = part.children[number - 1]
        elif number != 1 or (more and part.message is None):
            return None
        if more and part.message is not None:
            part = part.message
    return part

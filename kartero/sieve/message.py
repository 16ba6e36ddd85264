"""The message as the tests see it: the header (editable by editheader, RFC 5293), addresses, the body
(RFC 5173) and dates (RFC 5260).

The header block is kept as its raw fields, so an unchanged field is given back byte for byte and the
header of each FileInto/Redirect is the block as edited at that moment. Parsing is by plain loops over
at most MAX_FIELDS lines; values are unfolded and RFC 2047-decoded once, on first use.
"""

from __future__ import annotations

import email.header
import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from kartero.mime.addresses import GROUP_END, parse_address_list
from kartero.mime.headers import decode_body, decode_words, find_body_start
from kartero.mime.structure import Part, parse_message

MAX_FIELDS = 10_000  # header lines read as fields; the rest is kept as written but not tested
MAX_ADDRESSES = 1_000  # addresses read from one header field
MAX_PARTS = 1_000  # MIME parts the body test looks at


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


@dataclass(slots=True)
class _Field:
    name: str  # lower-case; "" for what is not a field (kept as written)
    raw: bytes  # the whole field, its line ends included
    decoded: str | None = None
    addresses: list[tuple[str, str | None]] | None = None

    def value(self) -> bytes:
        """Unfolded (RFC 5322 §2.2.3), without the leading and trailing blanks."""
        _, _, value = self.raw.partition(b":")
        return value.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")

    def text(self) -> str:
        if self.decoded is None:
            self.decoded = decode_words(self.value())
        return self.decoded


class Header:
    """The header fields of the message, in order, with the edits of the script applied."""

    def __init__(self, raw: bytes) -> None:
        end, _ = find_body_start(raw)
        block = raw[:end]
        self.original = block
        self.newline = b"\r\n" if b"\r\n" in block[:4096] or not block else b"\n"
        self.fields: list[_Field] = []
        self.terminator = b""
        self.edited = False
        self._by_name: dict[str, list[_Field]] | None = None  # made on first use, again after an edit
        pos = 0
        lines = 0
        parts: list[tuple[str, list[bytes]]] = []  # a field's lines, joined once (no quadratic +=)
        while pos < len(block):
            nl = block.find(b"\n", pos)
            line_end = len(block) if nl < 0 else nl + 1
            line = block[pos:line_end]
            pos = line_end
            lines += 1
            if line in (b"\r\n", b"\n"):
                self.terminator = line + block[pos:]
                break
            if lines > MAX_FIELDS:
                parts.append(("", [line, block[pos:]]))
                break
            if line[:1] in (b" ", b"\t") and parts:
                parts[-1][1].append(line)
                continue
            name, colon, _ = line.partition(b":")
            is_field = bool(colon) and bool(name.strip()) and b" " not in name.strip()
            parts.append((name.strip().decode("latin-1").lower() if is_field else "", [line]))
        self.fields = [_Field(name, b"".join(lines_of)) for name, lines_of in parts]

    def block(self) -> bytes:
        return b"".join(f.raw for f in self.fields) + self.terminator

    def edited_block(self) -> bytes | None:
        return self.block() if self.edited else None

    def named(self, name: str) -> list[_Field]:
        """The fields called `name`, in order; a lookup, not a scan (a run may test 100,000 times)."""
        if self._by_name is None:
            self._by_name = {}
            for f in self.fields:
                self._by_name.setdefault(f.name, []).append(f)
        return self._by_name.get(name.lower(), [])

    def texts(self, name: str) -> list[str]:
        return [f.text() for f in self.named(name)]

    def exists(self, name: str) -> bool:
        return bool(self.named(name))

    def add(self, name: str, value: str, last: bool) -> None:
        """addheader: the value folded, RFC 2047-encoded when it is not ASCII (RFC 5293 §4)."""
        value = " ".join(value.replace("\r", " ").replace("\n", " ").split())
        encoded = value if value.isascii() else email.header.Header(value, "utf-8", header_name=name).encode()
        raw = f"{name}: {encoded}".encode().replace(b"\n", self.newline) + self.newline
        field = _Field(name.lower(), raw)
        if last:
            self.fields.append(field)
        else:
            self.fields.insert(0, field)
        self.edited = True
        self._by_name = None

    def delete(self, name: str, index: int | None, last: bool, wanted: list[bool] | None) -> int:
        """deleteheader: the fields called `name` (only the index-th with :index, counted from the end with
        :last) for which `wanted` is true (every one when None). Returns how many went."""
        name = name.lower()
        if not self.named(name):
            return 0
        positions = [i for i, f in enumerate(self.fields) if f.name == name]
        chosen = list(range(len(positions)))
        if index is not None:
            k = len(positions) - index if last else index - 1
            chosen = [k] if 0 <= k < len(positions) else []
        doomed = {positions[k] for k in chosen if wanted is None or wanted[k]}
        if doomed:
            self.fields = [f for i, f in enumerate(self.fields) if i not in doomed]
            self.edited = True
            self._by_name = None
        return len(doomed)


def field_addresses(field: _Field) -> list[tuple[str, str | None]]:
    """The mailboxes of an address field, parsed once."""
    if field.addresses is None:
        field.addresses = addresses(field.value())
    return field.addresses


def addresses(value: bytes) -> list[tuple[str, str | None]]:
    """The mailboxes of an address-list value as (local part, domain or None), groups flattened."""
    items = list(parse_address_list(value, MAX_ADDRESSES))
    group_starts: set[int] = set()
    open_groups: list[int] = []
    for i, item in enumerate(items):
        if item == GROUP_END:
            if open_groups:
                group_starts.add(open_groups.pop())
        elif item.host is None and item.name is None and item.adl is None:
            open_groups.append(i)
    out: list[tuple[str, str | None]] = []
    for i, item in enumerate(items):
        if item.mailbox is None or i in group_starts:
            continue
        out.append((_text(item.mailbox), _text(item.host) if item.host else None))
    return out


def body_texts(header: bytes, body: bytes, transform: str, types: tuple[str, ...]) -> list[str]:
    """The values the body test matches (RFC 5173 §5): the undecoded body for :raw; otherwise the
    decoded leaf parts of the given types (:content), or the text parts (:text)."""
    if transform == "raw":
        return [_text(body)]
    data = header + body
    root = parse_message(data)
    wanted = tuple(t.lower() for t in types)
    out: list[str] = []
    stack: list[Part] = [root]
    seen = 0
    while stack and seen < MAX_PARTS:
        part = stack.pop()
        seen += 1
        if part.children:
            stack.extend(reversed(part.children))
            continue
        if part.message is not None:
            stack.append(part.message)
            continue
        main = part.content_type.type.decode("latin-1").lower()
        full = part.content_type.mime_type
        if transform == "text":
            if main != "text":
                continue
        elif not any(t in ("", main, full) for t in wanted):
            continue
        charset = part.content_type.param(b"charset") if main == "text" else None
        out.append(
            decode_body(
                data[part.body_start : part.end],
                part.encoding.decode("latin-1"),
                charset.decode("latin-1") if charset else "",
            )
        )
    return out


# -- dates (RFC 5260) -----------------------------------------------------------------------------------

MAX_DATE_VALUE = 256  # characters of a header value read as a date


def parse_date(value: str, name: str) -> datetime | None:
    """The date-time of a header value (after the last ';' for Received), or None when there is none."""
    if name.lower() == "received":
        value = value.rpartition(";")[2]
    value = value.strip()[:MAX_DATE_VALUE]
    try:
        parsed = email.utils.parsedate_tz(value)
    except (ValueError, IndexError, TypeError, OverflowError):
        return None
    if parsed is None:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    offset = parsed[9] or 0
    if not -86_400 < offset < 86_400:
        return None
    try:
        return datetime(year, month, day, hour, minute, min(second, 59), tzinfo=timezone(timedelta(seconds=offset)))
    except (ValueError, OverflowError):
        return None


def in_zone(moment: datetime, minutes: int) -> datetime | None:
    """The moment in another zone, or None at the ends of the calendar (year 1 or 9999)."""
    try:
        return moment.astimezone(timezone(timedelta(minutes=minutes)))
    except OverflowError:
        return None


_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC).date()


def date_part(moment: datetime, part: str) -> str:
    """RFC 5260 §2.3: one part of the date-time, as text."""
    offset = moment.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    zone = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    part = part.lower()
    if part == "year":
        return f"{moment.year:04d}"
    if part == "month":
        return f"{moment.month:02d}"
    if part == "day":
        return f"{moment.day:02d}"
    if part == "date":
        return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    if part == "julian":
        return str((moment.date() - _MJD_EPOCH).days)
    if part == "hour":
        return f"{moment.hour:02d}"
    if part == "minute":
        return f"{moment.minute:02d}"
    if part == "second":
        return f"{moment.second:02d}"
    if part == "time":
        return f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    if part == "iso8601":
        return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:" \
            f"{moment.second:02d}{zone[:3]}:{zone[3:]}"  # fmt: skip
    if part == "std11":
        return email.utils.format_datetime(moment)
    if part == "zone":
        return zone
    if part == "weekday":
        return str((moment.weekday() + 1) % 7)  # 0 is Sunday
    return ""

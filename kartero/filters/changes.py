"""The changes content filters ask for, applied to a message's header block and body.

Only the header block is rewritten (it is in memory, also for a spooled message: `Content.head`); the
body is left where it is unless a filter replaces it. Work is linear in the size of the header and of
the changes; the number and size of changes are bounded by the filter that produced them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kartero.filters.model import (
    AddHeader,
    AddRecipient,
    Change,
    ChangeHeader,
    ChangeSender,
    DeleteRecipient,
    InsertHeader,
    Quarantine,
    ReplaceBody,
)
from kartero.mime.headers import find_body_start
from kartero.store.interface import Content

# The header's end: the blank line that ends the header block.
CRLF = b"\r\n"


@dataclass(slots=True)
class Edited:
    """A message with the changes of the filters so far applied."""

    data: bytes | Content
    sender: str | None = None  # a new envelope sender ("" = null sender), None: unchanged
    sender_params: tuple[str, ...] = ()
    added: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # recipients added, in order
    deleted: set[str] = field(default_factory=set)  # recipients deleted, lower-cased
    quarantine: str | None = None  # the first reason a filter gave


def split_message(data: bytes | Content) -> tuple[list[bytes], bytes | Content]:
    """(the header fields, each with its continuation lines and line end; the rest: the blank line and
    the body, as bytes or as a Content whose tail is the spooled body).

    The header ends, as the milter protocol shows it (and Postfix), at the first line that is neither a
    field nor a continuation: such a line and what follows it are the rest, never edited."""
    head = data.head if isinstance(data, Content) else data
    end, _ = find_body_start(head)
    block = head[:end]
    if block.endswith(b"\r\n\r\n"):
        block = block[:-2]
    elif block.endswith(b"\n\n"):
        block = block[:-1]
    elif block in (b"\r\n", b"\n"):  # no header fields at all
        block = b""
    fields = split_fields(block)
    taken = 0
    for i, raw in enumerate(fields):
        if not field_name(raw):
            fields = fields[:i]
            break
        taken += len(raw)
    if isinstance(data, Content):
        return fields, Content(head[taken:], data.tail)
    return fields, head[taken:]


def split_fields(block: bytes) -> list[bytes]:
    """Header fields in order, a field being its first line and every continuation line (starting with
    space or tab). A line that is neither (no colon) stays a field of its own, as received."""
    fields: list[bytes] = []
    position = 0
    n = len(block)
    while position < n:
        stop = block.find(b"\n", position)
        stop = n if stop < 0 else stop + 1
        line = block[position:stop]
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
        position = stop
    if fields and not fields[-1].endswith(b"\n"):
        fields[-1] += CRLF  # a header-only message without a final line end: what follows needs its own line
    return fields


def field_name(raw: bytes) -> bytes:
    """The lower-cased name of a raw field (b"" when it has no colon)."""
    colon = raw.find(b":")
    return raw[:colon].rstrip(b" \t").lower() if colon > 0 else b""


def field_value(raw: bytes) -> bytes:
    """The value of a raw field: unfolded, without the line end and the leading space."""
    colon = raw.find(b":")
    value = raw[colon + 1 :] if colon >= 0 else raw
    return value.replace(b"\r\n", b"").replace(b"\n", b"").strip(b" \t")


def format_field(name: str, value: str) -> bytes:
    """`Name: value` with CRLF line ends: a value folded with bare LF (as milters send it) gets CRLF,
    and every continuation line starts with white space (a line that does not would be a new field)."""
    lines = value.replace("\r\n", "\n").replace("\r", "").split("\n")
    folded = lines[0]
    for line in lines[1:]:
        folded += "\r\n" + (line if line[:1] in (" ", "\t") else "\t" + line)
    sep = "" if folded[:1] in (" ", "\t") else " "
    return f"{name}:{sep}{folded}\r\n".encode()


HeaderOrBody = AddHeader | InsertHeader | ChangeHeader | ReplaceBody


def apply(edited: Edited, changes: Sequence[Change]) -> None:
    """Apply one filter's changes in order (header edits see the earlier ones, as with Postfix)."""
    header_changes = [c for c in changes if isinstance(c, (AddHeader, InsertHeader, ChangeHeader, ReplaceBody))]
    if header_changes:
        edited.data = _rewritten(edited.data, header_changes)
    for change in changes:
        match change:
            case AddRecipient(address=address, params=params):
                edited.added.append((address, params))
                edited.deleted.discard(address.lower())
            case DeleteRecipient(address=address):
                edited.deleted.add(address.lower())
                edited.added = [(a, p) for a, p in edited.added if a.lower() != address.lower()]
            case ChangeSender(address=address, params=params):
                edited.sender, edited.sender_params = address, params
            case Quarantine(reason=reason):
                if edited.quarantine is None:
                    edited.quarantine = reason


def _rewritten(data: bytes | Content, changes: Sequence[HeaderOrBody]) -> bytes | Content:
    fields, rest = split_message(data)
    header = _Header(fields)
    for change in changes:
        match change:
            case AddHeader(name=name, value=value):
                header.add(format_field(name, value))
            case InsertHeader(index=index, name=name, value=value):
                header.insert(index, format_field(name, value))
            case ChangeHeader(name=name, occurrence=occurrence, value=value):
                header.change(name, occurrence, value)
            case ReplaceBody(body=new):
                rest = CRLF + _crlf_ended(new)
    block = header.joined()
    if isinstance(rest, Content):
        return Content(block + rest.head, rest.tail)
    return block + rest


class _Header:
    """The header fields under edit. Each change costs at most the fields of its name (a deletion marks
    the slot empty instead of shifting the list), so a milter deleting each of thousands of fields of
    one name in a 2 MiB header is linear work, not fields x changes."""

    def __init__(self, fields: list[bytes]) -> None:
        self.fields: list[bytes | None] = list(fields)
        self.empty = 0  # deleted slots
        self._by_name: dict[bytes, list[int]] | None = None  # name -> slots in order, built when needed

    def by_name(self) -> dict[bytes, list[int]]:
        if self._by_name is None:
            index: dict[bytes, list[int]] = {}
            for i, raw in enumerate(self.fields):
                if raw is not None:
                    index.setdefault(field_name(raw), []).append(i)
            self._by_name = index
        return self._by_name

    def add(self, raw: bytes) -> None:
        self.fields.append(raw)
        if self._by_name is not None:
            self._by_name.setdefault(field_name(raw), []).append(len(self.fields) - 1)

    def insert(self, index: int, raw: bytes) -> None:
        """Before the field at `index` of the live ones (past the end: appended)."""
        if self.empty:
            self.fields = [f for f in self.fields if f is not None]
            self.empty = 0
        self.fields.insert(max(0, min(index, len(self.fields))), raw)
        self._by_name = None

    def change(self, name: str, occurrence: int, value: str) -> None:
        """Replace (or, with an empty value, delete) the `occurrence`-th field called `name`; past the
        last one, a non-empty value is appended."""
        slots = self.by_name().get(name.encode("utf-8", "replace").lower(), [])
        position = max(occurrence, 1) - 1
        if position < len(slots):
            slot = slots[position]
            raw = self.fields[slot]
            assert raw is not None
            if value.strip():
                self.fields[slot] = format_field(raw[: raw.find(b":")].decode("utf-8", "replace"), value)
            else:
                self.fields[slot] = None
                del slots[position]
                self.empty += 1
        elif value.strip():
            self.add(format_field(name, value))

    def joined(self) -> bytes:
        return b"".join(f for f in self.fields if f is not None)


def _crlf_ended(body: bytes) -> bytes:
    """A replacement body ending in a line end (the milter core already made every line end CRLF)."""
    return body if not body or body.endswith(CRLF) else body + CRLF


def is_junk(data: bytes | Content, junk_header: str) -> bool:
    """Whether a filter marked the message as spam: `junk_header` (e.g. rspamd's X-Spam) says "Yes",
    or SpamAssassin's X-Spam-Flag says "YES" (first word, any case)."""
    fields, _ = split_message(data)
    wanted = {junk_header.lower().encode(), b"x-spam-flag"}
    for raw in fields:
        if field_name(raw) in wanted:
            words = field_value(raw).split(None, 1)
            if words and words[0].rstrip(b",;").lower() == b"yes":
                return True
    return False

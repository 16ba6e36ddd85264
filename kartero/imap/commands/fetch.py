"""FETCH and UID FETCH (RFC 9051 §6.4.5, RFC 3516 BINARY, RFC 7162 CHANGEDSINCE/VANISHED).

ENVELOPE, BODY and BODYSTRUCTURE were computed at delivery and are copied as stored; body sections are
slices of the stored bytes located with the part offsets kept beside them, so no message is re-parsed.
A section that is a plain slice (BODY[], BODY[n], TEXT, HEADER, MIME, RFC822...) is streamed from the
store in CHUNK-sized reads: memory per FETCH is a constant, whatever the message size (issue 8).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import quopri
import re
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from kartero.imap.commands.view import (
    CHUNK,
    Done,
    Session,
    View,
    chunked,
    enable_condstore,
    format_flags,
    format_set,
    keyword_lines,
    out_of_range,
    resolve,
    sync,
)
from kartero.imap.response import Status
from kartero.imap.syntax import STAR, BodyItem, Fetch, Section
from kartero.store.interface import FlagOp, MessageReader, MessageRow, StoreError

Handler = Generator[bytes, None, Done]
_NEEDS_INDEX = frozenset({"ENVELOPE", "BODY", "BODYSTRUCTURE"})
_SETS_SEEN = frozenset({"RFC822", "RFC822.TEXT"})
_IDENTITY_ENCODINGS = frozenset({"", "7bit", "8bit", "binary"})


class UnknownEncoding(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Span:
    """Octets [start, end) of a stored message, sent as a literal without being read whole."""

    start: int
    end: int

    def clip(self, origin: int, count: int) -> Span:
        """The <origin.count> partial of this span (RFC 9051 §6.4.5)."""
        start = min(self.start + origin, self.end)
        return Span(start, min(self.end, start + count))


def internal_date(seconds: int) -> str:
    """RFC 9051 date-time in UTC: ` 6-Nov-2026 17:43:35 +0000` (day padded with a space)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{moment.day:2d}-{moment.strftime('%b')}-{moment.year:04d} {moment.strftime('%H:%M:%S')} +0000"


def _literal(data: bytes, *, binary: bool = False) -> bytes:
    if binary and b"\0" in data:
        return b"~{%d}\r\n" % len(data) + data
    return b"{%d}\r\n" % len(data) + data


def _locate(tree: list[Any], path: tuple[int, ...]) -> list[Any] | None:
    """The part-tree node a section path names (see kartero.mime.structure.find_part)."""
    node = tree
    for number in path:
        if node[5] is not None and not node[4]:
            node = node[5]
        if node[4]:
            if not 1 <= number <= len(node[4]):
                return None
            node = node[4][number - 1]
        elif number != 1:
            return None
    return node


_FIELD_NAME = re.compile(rb"^([^:\s]+)\s*:")


def _filter_header(block: bytes, fields: tuple[str, ...], *, keep: bool) -> bytes:
    """HEADER.FIELDS (keep) / HEADER.FIELDS.NOT: the named fields as written, folding kept, then the
    blank line that ends a header (RFC 9051 §6.4.5)."""
    wanted = {f.lower().encode() for f in fields}
    out = bytearray()
    include = False
    for line in block.splitlines(keepends=True):
        if not line.strip(b"\r\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if include:
                out += line
            continue
        m = _FIELD_NAME.match(line)
        include = bool(m) and ((m.group(1).lower() in wanted) == keep)  # type: ignore[union-attr]
        if include:
            out += line
    return bytes(out) + b"\r\n"


def _decode(data: bytes, encoding: str) -> bytes:
    if encoding in _IDENTITY_ENCODINGS:
        return data
    try:
        if encoding == "base64":
            return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", data) + b"==", validate=False)
        if encoding == "quoted-printable":
            return quopri.decodestring(data)
    except (binascii.Error, ValueError):
        raise UnknownEncoding(encoding) from None
    raise UnknownEncoding(encoding)


class _Message:
    """Lazy access to one message's bytes and part tree while its FETCH response is built."""

    def __init__(self, session: Session, row: MessageRow) -> None:
        self.session = session
        self.row = row
        self._tree: list[Any] | None = None
        self._reader: MessageReader | None = None

    def open(self) -> None:
        """Hold the message's bytes (raises StoreError when it is gone): from here on a response whose
        size went out can always be finished, even if another session expunges the message."""
        if self._reader is None:
            self._reader = self.session.store.open_message(self.row.blob_id)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def tree(self) -> list[Any]:
        if self._tree is None:
            assert self.row.parts is not None
            self._tree = json.loads(self.row.parts)
        return self._tree

    @property
    def whole(self) -> Span:
        return Span(0, self.row.size)

    def read(self, span: Span) -> bytes:
        self.open()
        assert self._reader is not None
        return self._reader.read(span.start, span.end - span.start)

    def header_span(self) -> Span:
        return Span(0, self.tree[1])

    def text_span(self) -> Span:
        return Span(self.tree[1], self.row.size)

    def section(self, section: Section) -> Span | bytes | None:
        """The octets of a BODY section (a span of the stored message, or bytes when they must be
        computed), or None when the part does not exist."""
        if not section.part and not section.text:
            return self.whole
        if not section.part:
            return self._text_of(self.tree, section)
        node = _locate(self.tree, section.part)
        if node is None:
            return None
        if not section.text:
            return Span(node[1], node[2])
        if section.text == "MIME":
            return Span(node[0], node[1])
        if node[5] is None:
            return b""  # HEADER/TEXT of a part that is not a message/rfc822
        return self._text_of(node[5], section)

    def _text_of(self, node: list[Any], section: Section) -> Span | bytes:
        header = Span(node[0], node[1])
        if section.text == "HEADER":
            return header
        if section.text == "HEADER.FIELDS":
            return _filter_header(self.read(header), section.fields, keep=True)
        if section.text == "HEADER.FIELDS.NOT":
            return _filter_header(self.read(header), section.fields, keep=False)
        return Span(node[1], node[2])  # TEXT

    def binary(self, section: Section) -> bytes | None:
        node = self.tree if not section.part else _locate(self.tree, section.part)
        if node is None:
            return None
        body = self.read(Span(node[1], node[2]))
        if node[4] or node[5] is not None:
            return body  # multipart or message: no transfer encoding to undo
        return _decode(body, node[3])


def _body_item(message: _Message, item: BodyItem) -> bytes | tuple[bytes, Span] | None:
    """The rendered item, or (its name, the span to stream as a literal) for a plain slice."""
    data: Span | bytes | None
    if item.kind == "BODY":
        data = message.section(item.section)
    elif item.kind == "BINARY.SIZE":
        data = message.binary(item.section)
        return None if data is None else f"{item.response_name()} {len(data)}".encode()
    else:
        data = message.binary(item.section)
    if data is None:
        data = b""
    if item.partial is not None:
        origin, count = item.partial
        data = data.clip(origin, count) if isinstance(data, Span) else data[origin : origin + count]
    name = item.response_name().encode()
    if isinstance(data, Span):
        return name, data
    return name + b" " + _literal(data, binary=item.kind == "BINARY")


def _needs_index(cmd: Fetch) -> bool:
    for item in cmd.items:
        if isinstance(item, BodyItem):
            if item.section.part or item.section.text or item.kind != "BODY":
                return True
        elif item in _NEEDS_INDEX or item == "RFC822.HEADER" or item == "RFC822.TEXT":
            return True
    return False


def _sets_seen(cmd: Fetch) -> bool:
    """BODY[...] and BINARY[...] without .PEEK, RFC822 and RFC822.TEXT set \\Seen (RFC 9051 §6.4.5)."""
    return any(
        (isinstance(i, BodyItem) and not i.peek and i.kind != "BINARY.SIZE") or (isinstance(i, str) and i in _SETS_SEEN)
        for i in cmd.items
    )


def _in_uid_set(uid: int, cmd: Fetch) -> bool:
    """Whether `uid` falls in the command's UID set; `*` is open-ended (an expunged UID may exceed
    every UID still present)."""
    for low, high in cmd.numbers.ranges:
        bounds = [b for b in (low, high) if b != STAR]
        if not bounds:
            return True
        if len(bounds) == 1 and STAR in (low, high):
            if uid >= bounds[0]:
                return True
        elif min(bounds) <= uid <= max(bounds):
            return True
    return False


def fetch(session: Session, cmd: Fetch) -> Handler:
    view = session.selected
    assert view is not None
    if not cmd.is_uid and not cmd.numbers.is_saved and view.exists and out_of_range(view, cmd.numbers):
        return Done(Status.BAD, "Message sequence number out of range")
    if cmd.changed_since is not None or "MODSEQ" in cmd.items:
        yield from enable_condstore(session)
    pairs = resolve(view, cmd.numbers, is_uid=cmd.is_uid, saved=session.saved)
    store = session.store
    if cmd.vanished and cmd.changed_since is not None:
        vanished = [u for u in store.vanished_since(view.mailbox_id, cmd.changed_since) if _in_uid_set(u, cmd)]
        if vanished:
            yield f"* VANISHED (EARLIER) {format_set(vanished)}\r\n".encode()
    # Messages expunged by another session but still in this view are fetched as they were (RFC 2180
    # §4.1.1): the view's hold keeps them until the client hears of the expunge.
    rows = {row.uid: row for row in store.message_rows(view.mailbox_id, [u for _, u in pairs],
                                                        with_index=_needs_index(cmd), expunged=True)}  # fmt: skip
    if cmd.changed_since is not None:
        rows = {uid: row for uid, row in rows.items() if row.modseq > cmd.changed_since}
    flags_changed: set[int] = set()
    if _sets_seen(cmd) and not view.readonly:
        unseen = [uid for uid, row in rows.items() if "\\Seen" not in row.flags]
        if unseen:
            changed, _ = store.update_flags(view.mailbox_id, unseen, FlagOp.ADD, frozenset({"\\Seen"}), None)
            for row in changed:
                old = rows[row.uid]
                rows[row.uid] = type(old)(row.uid, row.flags, row.modseq, old.size, old.internal_date, old.blob_id,
                                          old.envelope, old.body, old.bodystructure, old.parts)  # fmt: skip
                view.own_changes[row.uid] = row.modseq
                flags_changed.add(row.uid)
    yield from keyword_lines(view, rows.values())
    missing = False
    try:
        yield from chunked(_responses(session, view, cmd, pairs, rows, flags_changed))
    except UnknownEncoding:
        return Done(Status.NO, "Unknown content transfer encoding", "UNKNOWN-CTE")
    missing = any(uid not in rows for _, uid in pairs) and cmd.changed_since is None
    yield from chunked(sync(session, allow_expunge=cmd.is_uid))
    if missing and not cmd.is_uid:
        return Done(Status.NO, "Some messages were expunged", "EXPUNGEISSUED")
    return Done(Status.OK, "FETCH completed" if not cmd.is_uid else "UID FETCH completed")


def _responses(
    session: Session, view: View, cmd: Fetch, pairs: list[tuple[int, int]], rows: dict[int, MessageRow],
    flags_changed: set[int],
) -> Generator[bytes, None, None]:  # fmt: skip
    items = list(cmd.items)
    with_uid = cmd.is_uid and "UID" not in items
    with_modseq = (cmd.changed_since is not None or (session.uses_condstore() and bool(flags_changed))) and (
        "MODSEQ" not in items
    )
    for seq, uid in pairs:
        row = rows.get(uid)
        if row is None:
            continue
        message = _Message(session, row)
        try:
            parts: list[bytes | tuple[bytes, Span]] = []
            if with_uid:
                parts.append(b"UID %d" % uid)
            has_flags = False
            for item in items:
                if isinstance(item, BodyItem):
                    rendered = _body_item(message, item)
                    if rendered is not None:
                        parts.append(rendered)
                    continue
                match item:
                    case "UID":
                        parts.append(b"UID %d" % uid)
                    case "FLAGS":
                        parts.append(f"FLAGS {format_flags(session.shown_flags(view, row))}".encode())
                        has_flags = True
                    case "INTERNALDATE":
                        parts.append(f'INTERNALDATE "{internal_date(row.internal_date)}"'.encode())
                    case "RFC822.SIZE":
                        parts.append(b"RFC822.SIZE %d" % row.size)
                    case "ENVELOPE":
                        parts.append(b"ENVELOPE " + (row.envelope or b"NIL"))
                    case "BODYSTRUCTURE":
                        parts.append(b"BODYSTRUCTURE " + (row.bodystructure or b"NIL"))
                    case "BODY":
                        parts.append(b"BODY " + (row.body or b"NIL"))
                    case "MODSEQ":
                        parts.append(b"MODSEQ (%d)" % row.modseq)
                    case "RFC822":
                        parts.append((b"RFC822", message.whole))
                    case "RFC822.HEADER":
                        parts.append((b"RFC822.HEADER", message.header_span()))
                    case "RFC822.TEXT":
                        parts.append((b"RFC822.TEXT", message.text_span()))
                    case "SAVEDATE":
                        parts.append(b"SAVEDATE NIL")
            if uid in flags_changed and not has_flags:
                parts.append(f"FLAGS {format_flags(session.shown_flags(view, row))}".encode())
            if with_modseq:
                parts.append(b"MODSEQ (%d)" % row.modseq)
            if any(isinstance(part, tuple) for part in parts):
                try:
                    message.open()
                except StoreError:
                    continue  # expunged by another session since the rows were read: nothing sent yet
            yield from _render(message, b"* %d FETCH (" % seq, parts)
        finally:
            message.close()


def _render(message: _Message, head: bytes, parts: list[bytes | tuple[bytes, Span]]) -> Generator[bytes, None, None]:
    """One FETCH response: items joined by spaces, spans streamed as literals a CHUNK at a time."""
    pending = head
    for i, part in enumerate(parts):
        separator = b" " if i else b""
        if isinstance(part, bytes):
            pending += separator + part
            continue
        name, span = part
        yield pending + separator + name + b" {%d}\r\n" % (span.end - span.start)
        pending = b""
        for start in range(span.start, span.end, CHUNK):
            chunk = message.read(Span(start, min(span.end, start + CHUNK)))
            if len(chunk) != min(span.end, start + CHUNK) - start:
                raise StoreError(f"message {message.row.blob_id} is shorter than its size")
            yield chunk
    yield pending + b")\r\n"

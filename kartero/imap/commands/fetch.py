"""FETCH and UID FETCH (RFC 9051 §6.4.5, RFC 3516 BINARY, RFC 7162 CHANGEDSINCE/VANISHED).

ENVELOPE, BODY and BODYSTRUCTURE were computed at delivery and are copied as stored; body sections are
slices of the stored bytes located with the part offsets kept beside them, so no message is re-parsed.
A section that is a plain slice (BODY[], BODY[n], TEXT, HEADER, MIME, RFC822...) is streamed from the
store in CHUNK-sized reads, and BINARY content (binary.py) is decoded in pieces of that size, twice (its
size goes first): memory per FETCH is a constant, whatever the message size (issue 8).

A literal (`{n}`) may not hold NUL (RFC 9051 §4.3, CHAR8): like Dovecot, BODY, RFC822 and HEADER.FIELDS
send a NUL of the stored message as 0x80, so sizes and offsets stay those of BODYSTRUCTURE; BINARY content
holding a NUL goes out as a literal8 (`~{n}`, RFC 3516 §4.3) with its NULs.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

from kartero.imap.commands.binary import UnknownEncoding, binary_chunks, binary_pieces
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
    shown_row,
    sync,
    update_flags,
)
from kartero.imap.response import Status
from kartero.imap.syntax import PREVIEW_LAZY, STAR, BodyItem, Fetch, Section
from kartero.mime.imapform import imap_string
from kartero.mime.parttree import PartNode, decode_parts
from kartero.mime.preview import make_preview
from kartero.store.interface import FlagOp, MessageReader, MessageRow, StoreError, email_id

Handler = Generator[bytes, None, Done]
_NEEDS_INDEX = frozenset({"ENVELOPE", "BODY", "BODYSTRUCTURE", "PREVIEW", PREVIEW_LAZY})
_SETS_SEEN = frozenset({"RFC822", "RFC822.TEXT"})
_NEEDS_BYTES = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT"})


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
    """RFC 9051 date-time in UTC: `06-Nov-2026 17:43:35 +0000` (the day as 2DIGIT, as Dovecot sends it)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{moment.day:02d}-{moment.strftime('%b')}-{moment.year:04d} {moment.strftime('%H:%M:%S')} +0000"


@dataclass(frozen=True, slots=True)
class Literal:
    """An item whose value goes out as a literal streamed a chunk at a time: `size` octets from
    `chunks()`, as a literal8 (`~{n}`) when `is_binary`."""

    name: bytes
    size: int
    is_binary: bool
    chunks: Callable[[], Iterator[bytes]]


def _without_nul(data: bytes) -> bytes:
    """CHAR8 excludes NUL: Dovecot sends it as 0x80 in literals (imap-msgpart.c, i_stream_create_nonuls)."""
    return data.replace(b"\0", b"\x80")


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + _without_nul(data)


def _clipped(chunks: Iterator[bytes], origin: int, count: int) -> Iterator[bytes]:
    """The octets [origin, origin + count) of the content `chunks` yields."""
    skip, left = origin, count
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        chunk, skip = chunk[skip:], 0
        if len(chunk) >= left:
            yield chunk[:left]
            return
        left -= len(chunk)
        yield chunk


def _locate(tree: PartNode, path: tuple[int, ...]) -> PartNode | None:
    """The part-tree node a section path names, or None (see kartero.mime.structure.find_part)."""
    node = tree
    for index, number in enumerate(path):
        more = index + 1 < len(path)
        if node.children:
            if not 1 <= number <= len(node.children):
                return None
            node = node.children[number - 1]
        elif number != 1 or (more and node.message is None):
            return None
        if more and node.message is not None:
            node = node.message
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


class _Message:
    """Lazy access to one message's bytes and part tree while its FETCH response is built."""

    def __init__(self, session: Session, row: MessageRow) -> None:
        self.session = session
        self.row = row
        self._tree: PartNode | None = None
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
    def tree(self) -> PartNode:
        if self._tree is None:
            assert self.row.parts is not None
            self._tree = decode_parts(self.row.parts)
        return self._tree

    @property
    def whole(self) -> Span:
        return Span(0, self.row.size)

    def read(self, span: Span) -> bytes:
        self.open()
        assert self._reader is not None
        return self._reader.read(span.start, span.end - span.start)

    def _read(self, start: int, end: int) -> bytes:
        data = self.read(Span(start, end))
        if len(data) != end - start:
            raise StoreError(f"message {self.row.blob_id} is shorter than its size")
        return data

    def streamed(self, name: bytes, span: Span) -> Literal:
        """A span of the stored message as a literal, read a CHUNK at a time, NULs sent as 0x80."""

        def chunks() -> Iterator[bytes]:
            for start in range(span.start, span.end, CHUNK):
                yield _without_nul(self._read(start, min(span.end, start + CHUNK)))

        return Literal(name, span.end - span.start, False, chunks)

    def header_span(self) -> Span:
        return Span(0, self.tree.body_start)

    def text_span(self) -> Span:
        return Span(self.tree.body_start, self.row.size)

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
            return Span(node.body_start, node.end)
        if section.text == "MIME":
            return Span(node.header_start, node.body_start)
        if node.message is None:
            return b""  # HEADER/TEXT of a part that is not a message/rfc822
        return self._text_of(node.message, section)

    def _text_of(self, node: PartNode, section: Section) -> Span | bytes:
        header = Span(node.header_start, node.body_start)
        if section.text == "HEADER":
            return header
        if section.text == "HEADER.FIELDS":
            return _filter_header(self.read(header), section.fields, keep=True)
        if section.text == "HEADER.FIELDS.NOT":
            return _filter_header(self.read(header), section.fields, keep=False)
        return Span(node.body_start, node.end)  # TEXT

    def preview(self) -> str | None:
        """The preview of a message stored before previews were kept, made now (RFC 8970 §3.1: LAZY asks
        for NIL instead of this work); None when the message is gone."""
        try:
            return make_preview(self._read, self.tree)
        except StoreError:
            return None

    def binary(self, item: BodyItem) -> bytes | Literal:
        """BINARY[...] (a Literal) or BINARY.SIZE[...] (the rendered item) of a section: its content is
        read once for the size and whether it holds NUL, and again when it is sent. A part that does
        not exist is empty. Raises UnknownEncoding."""
        name = item.response_name().encode()
        node = self.tree if not item.section.part else _locate(self.tree, item.section.part)
        pieces = [] if node is None else binary_pieces(node, with_header=not item.section.part)

        def chunks() -> Iterator[bytes]:
            content = binary_chunks(self._read, pieces)
            return content if item.partial is None else _clipped(content, *item.partial)

        size, has_nul = 0, False
        for chunk in chunks():
            size += len(chunk)
            has_nul = has_nul or b"\0" in chunk
        if item.kind == "BINARY.SIZE":
            return name + b" %d" % size
        return Literal(name, size, has_nul, chunks)


def section_octets(session: Session, row: MessageRow, section: Section) -> Span | bytes | None:
    """What BODY.PEEK[section] of a message is (a span of its stored bytes, or computed bytes), or None
    when the part does not exist; for CATENATE URLs (RFC 4469). Raises StoreError when the message is gone."""
    message = _Message(session, row)
    try:
        return message.section(section)
    finally:
        message.close()


def _body_item(message: _Message, item: BodyItem) -> bytes | Literal:
    """The rendered item, or a Literal to stream."""
    if item.kind != "BODY":
        return message.binary(item)
    data = message.section(item.section)
    if data is None:
        data = b""
    if item.partial is not None:
        origin, count = item.partial
        data = data.clip(origin, count) if isinstance(data, Span) else data[origin : origin + count]
    name = item.response_name().encode()
    if isinstance(data, Span):
        return message.streamed(name, data)
    return name + b" " + _literal(data)


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
    rows = {row.uid: shown_row(view, row) for row in store.message_rows(
        view.mailbox_id, [u for _, u in pairs], with_index=_needs_index(cmd), expunged=True)}  # fmt: skip
    if cmd.changed_since is not None:
        rows = {uid: row for uid, row in rows.items() if row.modseq > cmd.changed_since}
    flags_changed: set[int] = set()
    if _sets_seen(cmd) and not view.readonly:
        unseen = [uid for uid, row in rows.items() if "\\Seen" not in row.flags]
        if unseen:
            update = update_flags(session, view, unseen, FlagOp.ADD, frozenset({"\\Seen"}), None)
            for row in update.changed:
                rows[row.uid] = dataclasses.replace(rows[row.uid], flags=row.flags, modseq=row.modseq)
                view.own_changes[row.uid] = row.modseq
                flags_changed.add(row.uid)
    yield from keyword_lines(view, rows.values())
    missing = False
    previews: dict[str, str] = {}
    refused = False
    try:
        yield from chunked(_responses(session, view, cmd, pairs, rows, flags_changed, previews))
    except UnknownEncoding:
        refused = True
    if previews:  # one write for the whole command, not one per message of `FETCH 1:* PREVIEW`
        store.keep_previews(previews)
    if refused:
        return Done(Status.NO, "Unknown content transfer encoding", "UNKNOWN-CTE")
    missing = any(uid not in rows for _, uid in pairs) and cmd.changed_since is None
    yield from chunked(sync(session, allow_expunge=cmd.is_uid))
    if missing and not cmd.is_uid:
        return Done(Status.NO, "Some messages were expunged", "EXPUNGEISSUED")
    return Done(Status.OK, "FETCH completed" if not cmd.is_uid else "UID FETCH completed")


def _responses(
    session: Session, view: View, cmd: Fetch, pairs: list[tuple[int, int]], rows: dict[int, MessageRow],
    flags_changed: set[int], previews: dict[str, str],
) -> Generator[bytes, None, None]:  # fmt: skip
    """The FETCH responses; the previews it had to make (mail stored before they were kept) are added to
    `previews` by blob id."""
    items = list(cmd.items)
    needs_bytes = any(isinstance(item, BodyItem) or item in _NEEDS_BYTES for item in items)
    # RFC 7162 §3.2.4: a FETCH that sets \Seen under CONDSTORE reports the change with UID and MODSEQ.
    with_uid = (cmd.is_uid or (session.uses_condstore() and bool(flags_changed))) and "UID" not in items
    with_modseq = (cmd.changed_since is not None or (session.uses_condstore() and bool(flags_changed))) and (
        "MODSEQ" not in items
    )
    for seq, uid in pairs:
        row = rows.get(uid)
        if row is None:
            continue
        message = _Message(session, row)
        try:
            if needs_bytes:
                try:
                    message.open()
                except StoreError:
                    continue  # expunged by another session since the rows were read: nothing sent yet
            parts: list[bytes | Literal] = []
            if with_uid:
                parts.append(b"UID %d" % uid)
            has_flags = False
            for item in items:
                if isinstance(item, BodyItem):
                    parts.append(_body_item(message, item))
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
                        parts.append(message.streamed(b"RFC822", message.whole))
                    case "RFC822.HEADER":
                        parts.append(message.streamed(b"RFC822.HEADER", message.header_span()))
                    case "RFC822.TEXT":
                        parts.append(message.streamed(b"RFC822.TEXT", message.text_span()))
                    case "EMAILID":  # RFC 8474 §5.1
                        parts.append(f"EMAILID ({email_id(row.blob_id)})".encode())
                    case "THREADID":  # RFC 8474 §5.2: NIL from a server that does not thread
                        parts.append(b"THREADID NIL")
                    case "PREVIEW" | "PREVIEW (LAZY)":  # RFC 8970 §3.1
                        preview = row.preview
                        if preview is None and item == "PREVIEW":
                            preview = previews[row.blob_id] if row.blob_id in previews else message.preview()
                            if preview is not None:
                                previews[row.blob_id] = preview
                        parts.append(b"PREVIEW " + (b"NIL" if preview is None else imap_string(preview.encode())))
                    case "SAVEDATE":  # RFC 8514: NIL for a message stored before save dates were kept
                        saved = "NIL" if row.saved_at is None else f'"{internal_date(row.saved_at)}"'
                        parts.append(f"SAVEDATE {saved}".encode())
            if uid in flags_changed and not has_flags:
                parts.append(f"FLAGS {format_flags(session.shown_flags(view, row))}".encode())
            if with_modseq:
                parts.append(b"MODSEQ (%d)" % row.modseq)
            yield from _render(b"* %d FETCH (" % seq, parts)
        finally:
            message.close()


def _render(head: bytes, parts: list[bytes | Literal]) -> Generator[bytes, None, None]:
    """One FETCH response: items joined by spaces, literals streamed a chunk at a time."""
    pending = head
    for i, part in enumerate(parts):
        separator = b" " if i else b""
        if isinstance(part, bytes):
            pending += separator + part
            continue
        yield pending + separator + part.name + (b" ~{%d}\r\n" if part.is_binary else b" {%d}\r\n") % part.size
        pending = b""
        sent = 0
        for chunk in part.chunks():
            sent += len(chunk)
            yield chunk
        if sent != part.size:
            raise StoreError(f"{part.name!r} sent {sent} octets of {part.size}")
    yield pending + b")\r\n"

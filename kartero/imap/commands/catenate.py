"""CATENATE (RFC 4469): an APPEND message made of TEXT literals and the octets of IMAP URLs naming the
user's own messages (or parts of them), copied unchanged and without setting \\Seen.

Every URL is resolved, and every size known, before an octet is copied: a bad URL is `NO [BADURL url]`
and a message over APPENDLIMIT `NO [TOOBIG]`, with nothing stored. The pieces are then copied a CHUNK at a
time, into memory when the command's catenated messages take APPEND_SPOOL_THRESHOLD or less together, else
into one spool file, so a session never holds more of them than a plain APPEND would.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kartero.imap.commands.fetch import Span, section_octets
from kartero.imap.commands.view import CHUNK, Session
from kartero.imap.connection import APPEND_SPOOL_THRESHOLD
from kartero.imap.syntax import CatPart, Section
from kartero.imap.url import badurl_text, parse_message_url
from kartero.store.interface import Content, FileSpan, MessageRow, StoreError
from kartero.store.spool import SpoolFile


class BadUrl(Exception):
    """A URL part names nothing this session may read; `code` is the BADURL response code."""

    def __init__(self, url: bytes) -> None:
        super().__init__(url)
        self.code = f"BADURL {badurl_text(url)}"


class TooBig(Exception):
    """The catenated message would exceed APPENDLIMIT."""


@dataclass(frozen=True, slots=True)
class Piece:
    """Octets of a catenated message: in memory, in the APPEND spool file, a span of a stored message, or
    a section computed from a stored message (HEADER.FIELDS: computed again when copied, not held)."""

    size: int
    data: bytes = b""
    file: FileSpan | None = None
    blob_id: str = ""
    span: Span | None = None
    computed: tuple[MessageRow, Section, tuple[int, int | None] | None] | None = None  # row, section, partial
    url: bytes = b""


def resolve(
    session: Session, parts: tuple[CatPart, ...], spool: FileSpan | None, offset: int, limit: int
) -> list[Piece]:
    """The pieces of one CATENATE message; `offset` is where its first spooled TEXT starts in `spool`.
    Raises BadUrl, and TooBig as soon as the pieces exceed `limit` octets (so a command of thousands of
    URL parts stops early)."""
    pieces: list[Piece] = []
    total = 0
    for part in parts:
        if part.url is not None:
            piece = _url_piece(session, part.url)
        elif part.spooled:
            assert spool is not None
            piece = Piece(part.spooled, file=FileSpan(spool.path, spool.offset + offset, part.spooled))
            offset += part.spooled
        else:
            piece = Piece(len(part.text), data=part.text)
        total += piece.size
        if total > limit:
            raise TooBig
        pieces.append(piece)
    return pieces


def _url_piece(session: Session, url: bytes) -> Piece:
    """RFC 4469 §3: the octets of the body part the URL points to (BODY.PEEK[section]<partial>)."""
    target = parse_message_url(url)
    if target is None:
        raise BadUrl(url)
    store = session.store
    mailbox = store.get_mailbox(session.account_id, target.mailbox)
    if mailbox is None or (target.uidvalidity is not None and target.uidvalidity != mailbox.uidvalidity):
        raise BadUrl(url)
    rows = store.message_rows(mailbox.id, [target.uid], with_index=target.section is not None)
    if not rows:
        raise BadUrl(url)
    row = rows[0]
    octets = _octets(session, row, target.section or Section(), target.partial, url)
    if isinstance(octets, bytes):
        computed = (row, target.section or Section(), target.partial)
        return Piece(len(octets), blob_id=row.blob_id, computed=computed, url=url)
    return Piece(octets.end - octets.start, blob_id=row.blob_id, span=octets, url=url)


def _octets(session: Session, row: MessageRow, section: Section, partial: tuple[int, int | None] | None,
            url: bytes) -> Span | bytes:  # fmt: skip
    """BODY.PEEK[section]<partial> of a stored message (RFC 5092 ;PARTIAL=origin[.length]). Raises BadUrl."""
    try:
        octets = section_octets(session, row, section)
    except StoreError:
        raise BadUrl(url) from None
    if octets is None:
        raise BadUrl(url)  # no such part
    if partial is not None:
        origin, length = partial
        size = octets.end - octets.start if isinstance(octets, Span) else len(octets)
        count = length if length is not None else max(0, size - origin)
        octets = octets.clip(origin, count) if isinstance(octets, Span) else octets[origin : origin + count]
    return octets


class Assembler:
    """Copies catenated messages into memory or, past APPEND_SPOOL_THRESHOLD for the command, into one
    spool file of its own, removed by `close` (after the store has taken the messages)."""

    def __init__(self, session: Session, total: int) -> None:
        self.session = session
        self.in_memory = total <= APPEND_SPOOL_THRESHOLD
        self.file: SpoolFile | None = None
        if not self.in_memory:
            folder = session.spool_dir
            if folder is None:
                raise OSError("no spool folder")
            self.file = SpoolFile(Path(folder))

    def build(self, pieces: list[Piece]) -> bytes | Content:
        """One message. Raises BadUrl when a message a URL named went meanwhile, OSError on a full disk."""
        if self.file is None:
            return b"".join(self._chunks(pieces))
        start = self.file.size
        for chunk in self._chunks(pieces):
            self.file.write(chunk)
        return Content(b"", FileSpan(self.file.path, start, self.file.size - start))

    def _chunks(self, pieces: list[Piece]) -> Iterator[bytes]:
        for piece in pieces:
            if piece.file is not None:
                yield from _file_chunks(piece.file)
            elif piece.span is not None:
                yield from self._stored_chunks(piece)
            elif piece.computed is not None:
                octets = _octets(self.session, *piece.computed, piece.url)
                if not isinstance(octets, bytes) or len(octets) != piece.size:
                    raise BadUrl(piece.url)
                yield octets
            else:
                yield piece.data

    def _stored_chunks(self, piece: Piece) -> Iterator[bytes]:
        assert piece.span is not None
        try:
            reader = self.session.store.open_message(piece.blob_id)
        except (StoreError, OSError):
            raise BadUrl(piece.url) from None
        try:
            for start in range(piece.span.start, piece.span.end, CHUNK):
                length = min(CHUNK, piece.span.end - start)
                data = reader.read(start, length)
                if len(data) != length:
                    raise BadUrl(piece.url)
                yield data
        finally:
            reader.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.discard()
            self.file = None


def _file_chunks(span: FileSpan) -> Iterator[bytes]:
    fd = os.open(span.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for start in range(0, span.length, CHUNK):
            length = min(CHUNK, span.length - start)
            data = os.pread(fd, length, span.offset + start)
            if len(data) != length:
                raise OSError(f"spool file {span.path} is short")
            yield data
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)

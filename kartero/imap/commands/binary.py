"""The content of BINARY[...] (RFC 3516): a part, or the whole message, with every transfer encoding undone.

It is what Dovecot sends (src/lib-storage/index/index-mail-binary.c): the section is walked from the part
tree kept at delivery; a quoted-printable or base64 leaf below it has its body decoded and, when its header
is sent too, its Content-Transfer-Encoding fields replaced by `Content-Transfer-Encoding: binary` before the
blank line; everything else is copied as stored. An encoding other than 7bit, 8bit, binary, base64 and
quoted-printable anywhere in the section makes the whole item fail (`NO [UNKNOWN-CTE]`).

The content is produced in bounded pieces from the stored bytes, never held whole: FETCH reads it twice,
once for its size (and whether it holds a NUL, which makes it a `~{n}` literal8) and once to send it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kartero.mime.headers import TransferDecoder
from kartero.mime.parttree import PartNode

# Read from the stored message this much at a time.
READ_BYTES = 256 * 1024
_IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
_DECODED = frozenset({"base64", "quoted-printable"})
_BINARY_FIELD = b"Content-Transfer-Encoding: binary\r\n"


class UnknownEncoding(Exception):
    """A part of the section has a Content-Transfer-Encoding BINARY cannot undo (RFC 3516 §4.3)."""


@dataclass(frozen=True, slots=True)
class Raw:
    """Stored octets [start, end), copied as they are."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Decoded:
    """The body of a leaf at stored octets [start, end), its transfer encoding undone."""

    start: int
    end: int
    encoding: str


@dataclass(frozen=True, slots=True)
class BinaryHeader:
    """The header block at stored octets [start, end) of a decoded leaf, saying it is binary now."""

    start: int
    end: int


Piece = Raw | Decoded | BinaryHeader
Reader = Callable[[int, int], bytes]  # (start, end) -> stored octets


def binary_pieces(node: PartNode, *, with_header: bool) -> list[Piece]:
    """The pieces the BINARY content of a part-tree node (kartero.mime.parttree) is made of: its
    body, or (with_header) the whole entity. Raises UnknownEncoding. The tree was bounded when it was
    parsed (kartero.mime.structure: MAX_PARTS, MAX_DEPTH), and is walked with a stack of its own."""
    pieces: list[Piece] = []
    # Entries: a node to walk and whether its header goes out, or a Raw gap between two children.
    pending: list[tuple[PartNode, bool] | Raw] = [(node, with_header)]
    while pending:
        entry = pending.pop()
        if isinstance(entry, Raw):
            if entry.end > entry.start:
                pieces.append(entry)
            continue
        part, header = entry
        encoding, body_start, end = part.encoding, part.body_start, part.end
        if encoding not in _IDENTITY and encoding not in _DECODED:
            raise UnknownEncoding(encoding)
        is_decoded = encoding in _DECODED and part.is_leaf
        if header and body_start > part.header_start:
            pieces.append((BinaryHeader if is_decoded else Raw)(part.header_start, body_start))
        if part.children:
            later: list[tuple[PartNode, bool] | Raw] = []
            position = body_start
            for child in part.children:  # delimiters and preamble between the children stay as they are
                later += [Raw(position, child.header_start), (child, True)]
                position = child.end
            later.append(Raw(position, end))
            pending += reversed(later)
        elif part.message is not None:
            pending.append((part.message, True))
        elif end > body_start:
            pieces.append(Decoded(body_start, end, encoding) if is_decoded else Raw(body_start, end))
    return pieces


def binary_chunks(read: Reader, pieces: list[Piece]) -> Iterator[bytes]:
    """The content of `pieces`, in chunks of about READ_BYTES (an empty chunk never)."""
    for piece in pieces:
        match piece:
            case Raw(start=start, end=end):
                yield from _stored(read, start, end)
            case Decoded(start=start, end=end, encoding=encoding):
                decoder = TransferDecoder(encoding)
                for chunk in _stored(read, start, end):
                    if decoded := decoder.feed(chunk):
                        yield decoded
                    if decoder.is_done:
                        break
                if tail := decoder.finish():
                    yield tail
            case BinaryHeader(start=start, end=end):
                yield from _binary_header(read, start, end)


def _stored(read: Reader, start: int, end: int) -> Iterator[bytes]:
    for position in range(start, end, READ_BYTES):
        yield read(position, min(end, position + READ_BYTES))


def _binary_header(read: Reader, start: int, end: int) -> Iterator[bytes]:
    """The header block [start, end) without its Content-Transfer-Encoding fields, then the field that
    says binary, then the blank line that ended the block (if it had one)."""
    tail = read(max(start, end - 3), end)
    if tail[-2:] == b"\r\n" and (end - start == 2 or tail[-3:-2] == b"\n"):
        blank = 2
    elif tail[-1:] == b"\n" and (end - start == 1 or tail[-2:-1] == b"\n"):
        blank = 1
    else:
        blank = 0
    remover = FieldRemover()
    for chunk in _stored(read, start, end - blank):
        if kept := remover.feed(chunk):
            yield kept
    yield remover.finish() + _BINARY_FIELD + (read(end - blank, end) if blank else b"")


# A field name (and the white space before its colon) is looked for in this many octets of a line.
_NAME_WINDOW = 64
_CTE_FIELD = re.compile(rb"^content-transfer-encoding[ \t]*:", re.IGNORECASE | re.MULTILINE)


class FieldRemover:
    """Drops the Content-Transfer-Encoding fields, continuation lines included, from a header block fed
    in pieces cut anywhere. Linear: kept text is copied up to the next such field found by one anchored
    search, and only the lines of a dropped field are stepped through. A field name split between two
    pieces is found because the start of an unfinished last line (up to _NAME_WINDOW octets) waits for
    the next piece."""

    def __init__(self) -> None:
        self._carry = b""
        self._at_line_start = True
        self._dropping = False

    def feed(self, data: bytes) -> bytes:
        return self._filter(self._carry + data, final=False)

    def finish(self) -> bytes:
        return self._filter(self._carry, final=True)

    def _filter(self, data: bytes, *, final: bool) -> bytes:
        self._carry = b""
        limit = len(data)
        last_line = data.rfind(b"\n") + 1
        if not final and limit - last_line < _NAME_WINDOW and (last_line or self._at_line_start):
            self._carry, limit = data[last_line:], last_line
        out: list[bytes] = []
        position = 0
        while position < limit:
            if self._dropping and self._at_line_start and data[position : position + 1] not in (b" ", b"\t"):
                self._dropping = False  # the line after the field is no continuation of it
            if self._dropping or not self._at_line_start:
                line_end = data.find(b"\n", position, limit)
                stop = limit if line_end < 0 else line_end + 1
                if not self._dropping:
                    out.append(data[position:stop])
                position, self._at_line_start = stop, line_end >= 0
                continue
            found = _CTE_FIELD.search(data, position, limit)
            stop = limit if found is None else found.start()
            out.append(data[position:stop])
            if found is None:
                position, self._at_line_start = limit, data[limit - 1 : limit] == b"\n"
            else:
                position, self._dropping, self._at_line_start = stop, True, False
        return b"".join(out)

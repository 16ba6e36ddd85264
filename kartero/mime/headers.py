"""Header blocks (RFC 5322 §2.2): split into fields, unfold, decode encoded words for searching.

Works on bytes and never raises on malformed input: a line without a colon is skipped, a header block
without a blank line runs to the end of the message, unknown or unusable charsets decode as latin-1.
Every function is linear in its input; the ones that take a whole message (`MessageData`) search it in
bounded steps and copy only bounded slices, so a message may be an `mmap.mmap` of a spool file.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import encodings
import encodings.aliases
import functools
import itertools
import pkgutil
import quopri
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol


class MessageData(Protocol):
    """What the MIME code needs of a whole message: `bytes`, or an `mmap.mmap` of a spool file.

    Only these operations are used on it, and slices are always bounded (a header block, a boundary
    line, a chunk of `SCAN_CHUNK_BYTES`), so a message of hundreds of MB is never copied whole.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, key: slice, /) -> bytes: ...

    def find(self, sub: bytes, start: int = ..., end: int = ..., /) -> int: ...

    def rfind(self, sub: bytes, start: int = ..., end: int = ..., /) -> int: ...


# One C-level search or copy over a message covers at most this much: a find over 200 MB holds the GIL
# for a quarter of a second (the event loop with it); between chunks other threads get their turn.
SCAN_CHUNK_BYTES = 1 << 20


def find_bounded(data: MessageData, sub: bytes, start: int, end: int) -> int:
    """`data.find(sub, start, end)` (sub not empty), searched in steps of SCAN_CHUNK_BYTES."""
    if end - start <= SCAN_CHUNK_BYTES:
        return data.find(sub, start, end)
    pos = start
    while pos < end:
        stop = min(end, pos + SCAN_CHUNK_BYTES + len(sub) - 1)
        hit = data.find(sub, pos, stop)
        if hit >= 0 or stop >= end:
            return hit
        pos = stop - len(sub) + 1
    return -1


def count_newlines(data: MessageData, start: int, end: int) -> int:
    """The number of LF bytes in data[start:end], counted a chunk at a time."""
    if end - start <= SCAN_CHUNK_BYTES:
        return data[start:end].count(b"\n")
    count = 0
    for pos in range(start, end, SCAN_CHUNK_BYTES):
        count += data[pos : min(end, pos + SCAN_CHUNK_BYTES)].count(b"\n")
    return count


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    """A parsed header block: fields in order, names lower-cased, values unfolded (CRLF removed)."""

    fields: tuple[tuple[str, bytes], ...]
    first: dict[str, bytes]  # name -> its first value

    def get(self, name: str) -> bytes | None:
        """The first value of `name` (lower-case), or None."""
        return self.first.get(name)

    def get_all(self, name: str) -> list[bytes]:
        return [value for key, value in self.fields if key == name]


EMPTY_HEADER = HeaderBlock((), {})


def find_body_start(data: MessageData, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(end of the header block including its blank line, start of the body) for data[start:end].

    The header block ends at the first empty line (CRLF CRLF, or a bare LF LF in broken mail); with no
    empty line the whole range is header and the body is empty. The search looks at growing windows,
    so its cost is the length of the header block, not of the message.
    """
    stop = len(data) if end is None else end
    head = data[start : start + 2]
    if head == b"\r\n" and start + 2 <= stop:
        return start + 2, start + 2  # no header fields at all
    if head[:1] == b"\n" and start + 1 <= stop:
        return start + 1, start + 1
    low, size = start, 4096
    while low < stop:
        high = min(stop, low + size)
        # Windows overlap by 3 bytes, so a blank line is always whole in some window, and the first
        # window holding one holds the earliest CRLF CRLF and LF LF too (they cannot interleave).
        crlf = data.find(b"\r\n\r\n", low, high)
        lf = data.find(b"\n\n", low, high)
        if crlf >= 0 and (lf < 0 or crlf < lf):
            return crlf + 4, crlf + 4
        if lf >= 0:
            return lf + 2, lf + 2
        if high >= stop:
            break
        low, size = high - 3, min(size * 2, SCAN_CHUNK_BYTES)
    return stop, stop


def parse_header_block(raw: bytes, max_lines: int | None = None) -> HeaderBlock:
    """Split a header block into (lower-cased name, unfolded value) pairs; with `max_lines`, lines past
    that many are ignored (the MIME parser's bound on hostile header blocks)."""
    fields: list[tuple[str, bytes]] = []
    name: str | None = None
    value_parts: list[bytes] = []
    lines = raw.split(b"\n") if max_lines is None else raw.split(b"\n", max_lines)[:max_lines]
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                value_parts.append(line)
            continue
        if name is not None:
            fields.append((name, b"".join(value_parts).strip()))
        colon = line.find(b":")
        if colon <= 0:
            name = None  # not a header field (RFC 5322 §3.6.8 field-name is 1*ftext); skip it
            continue
        name = line[:colon].strip().decode("latin-1").lower()
        value_parts = [line[colon + 1 :]]
    if name is not None:
        fields.append((name, b"".join(value_parts).strip()))
    first: dict[str, bytes] = {}
    for key, value in fields:
        first.setdefault(key, value)
    return HeaderBlock(tuple(fields), first)


# A quoted string up to its closing quote. The quantifiers are possessive (the engine never gives back
# what they took), so one C-level pass reads it, however many backslashes it holds.
_QUOTED_STRING = re.compile(rb'"(?:[^"\\]++|\\[\x00-\xff])*+')


def quoted_string_end(value: bytes, start: int) -> int:
    """Just past the closing quote of the quoted string that opens at value[start] (a backslash escapes
    any byte), or -1 when it is never closed."""
    match = _QUOTED_STRING.match(value, start)
    if match is None:
        return -1
    end = match.end()
    return end + 1 if value[end : end + 1] == b'"' else -1


MAX_COMMENT_DEPTH = 100  # comments nest (RFC 5322 §3.2.2); deeper, the rest of the value is comment
_COMMENT_OR_QUOTE = re.compile(rb'[("]')
_IN_COMMENT = re.compile(rb"[()\\]")


def comment_spans(value: bytes) -> list[tuple[int, int, bool]]:
    """(start, end, closed) of each comment of `value` (nested, with quoted-pairs: RFC 5322 §3.2.2),
    from its "(" to just past its ")"; quoted strings are no comments. A comment never closed or nested
    deeper than MAX_COMMENT_DEPTH runs to the end (closed False). Linear: each octet is looked at once."""
    spans: list[tuple[int, int, bool]] = []
    depth, i, n, start = 0, 0, len(value), 0
    while i < n:
        if depth == 0:
            special = _COMMENT_OR_QUOTE.search(value, i)
            if special is None:
                break
            j = special.start()
            if value[j : j + 1] == b"(":
                depth, i, start = 1, j + 1, j
            else:
                i = quoted_string_end(value, j)
                i = n if i < 0 else i
            continue
        special = _IN_COMMENT.search(value, i)
        if special is None:
            break
        i = special.end()
        if special.group() == b"\\":
            i += 1  # quoted-pair: the next octet is comment text
        elif special.group() == b"(":
            depth += 1
            if depth > MAX_COMMENT_DEPTH:
                break
        else:
            depth -= 1
            if not depth:
                spans.append((start, i, True))
    if depth:
        spans.append((start, n, False))
    return spans


def strip_comments(value: bytes, replacement: bytes = b" ") -> bytes:
    """`value` with each comment (see comment_spans) replaced by `replacement`, quoted strings left
    alone; a comment never closed runs to the end and is dropped."""
    if b"(" not in value:
        return value
    out = bytearray()
    position = 0
    for start, end, closed in comment_spans(value):
        out += value[position:start]
        if closed:
            out += replacement
        position = end
    out += value[position:]
    return bytes(out)


# Both are linear: every run they repeat stops at a "?" or white space, so no two attempts overlap.
_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(rb"(\?=)\s+(=\?)")

# Text codecs that are no mail charset and fail or misbehave on message data: idna and undefined raise
# under any error handler but strict, punycode decodes in quadratic time, the escape codecs turn
# backslashes in the text into arbitrary characters. (Bytes-to-bytes codecs such as rot13, hex, zlib,
# base64 or uu are refused because they are not text encodings at all.)
_REFUSED_CODECS = frozenset({"idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape"})
_MAX_CHARSET_KEY = 64  # longer than any codec name or alias Python knows


@functools.cache
def _known_codec_keys() -> frozenset[str]:
    """Every name the stdlib's codec search can resolve: aliases, their targets, the codec modules."""
    aliases = encodings.aliases.aliases
    modules = (module.name for module in pkgutil.iter_modules(encodings.__path__))
    return frozenset({*aliases, *aliases.values(), *modules})


def _codec_key(charset: str) -> str:
    """The codec name as codecs.lookup normalises it: ASCII letters and digits and dots, lower-cased,
    every other run of characters one underscore (none at the ends)."""
    out: list[str] = []
    gap = False
    for char in charset:
        if (char.isascii() and char.isalnum()) or char == ".":
            if gap and out:
                out.append("_")
            gap = False
            out.append(char.lower())
        else:
            gap = True
    return "".join(out)


@functools.lru_cache(maxsize=256)
def text_codec(charset: str) -> str | None:
    """The Python codec to decode a MIME charset with, or None when there is no usable one.

    Only text encodings are accepted (`codecs.lookup(...)._is_text_encoding`), minus _REFUSED_CODECS.
    A name the stdlib cannot know is refused before codecs.lookup: its search function caches every
    miss forever, so a stream of invented charset names would grow that cache without bound.
    """
    key = _codec_key(charset.split("*", 1)[0])  # RFC 2231 §5: "utf-8*en" names a language too
    if not key or len(key) > _MAX_CHARSET_KEY:
        return None
    known = _known_codec_keys()
    if key not in known and key.replace(".", "_") not in known:
        return None
    try:
        info = codecs.lookup(key)
    except LookupError:
        return None
    if not info._is_text_encoding or info.name in _REFUSED_CODECS:
        return None
    return info.name


def _charset_decode(data: bytes, charset: str) -> str:
    return data.decode(text_codec(charset.strip().lower()) or "latin-1", "replace")


def decode_words(value: bytes) -> str:
    """Decode RFC 2047 encoded words (whitespace between adjacent words dropped, §6.2); raw 8-bit
    text is taken as UTF-8 (RFC 6532), else latin-1. Never raises: a word that does not decode stays
    as written, an unknown or unusable charset decodes as latin-1."""
    value = _BETWEEN_WORDS.sub(rb"\1\2", value)
    out: list[str] = []
    pos = 0
    for m in _ENCODED_WORD.finditer(value):
        out.append(_raw_text(value[pos : m.start()]))
        charset, encoding, text = m.group(1).decode("latin-1"), m.group(2).upper(), m.group(3)
        try:
            if encoding == b"B":
                payload = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
            else:
                payload = quopri.decodestring(text.replace(b"_", b" "), header=True)
            out.append(_charset_decode(payload, charset))
        except (binascii.Error, ValueError):
            out.append(m.group(0).decode("latin-1"))
        pos = m.end()
    out.append(_raw_text(value[pos:]))
    return "".join(out)


def _raw_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# SEARCH BODY/TEXT decodes a part in pieces of this much encoded input (memory per piece is bounded),
# and decode_body, which returns one string, decodes at most BODY_DECODE_MAX_BYTES of a part.
BODY_CHUNK_BYTES = 1 << 20
BODY_DECODE_MAX_BYTES = 4 << 20
_NOT_BASE64 = bytes(set(range(256)) - set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="))


def decode_body(data: bytes, encoding: str, charset: str, *, max_bytes: int = BODY_DECODE_MAX_BYTES) -> str:
    """Text of a body part (for SEARCH BODY/TEXT): transfer encoding undone, charset decoded.

    Only the first `max_bytes` of `data` are decoded (cut after a line end when there is one), so one
    call's memory is bounded; iter_body_text() covers a part of any size in bounded pieces.
    """
    if len(data) > max_bytes:
        cut = data.rfind(b"\n", 0, max_bytes)
        data = data[: cut + 1 if cut >= 0 else max_bytes]
    decoder = TransferDecoder(encoding)
    data = decoder.feed(data) + decoder.finish()
    return _charset_decode(data, charset) if charset else _raw_text(data)


def iter_body_text(
    data: MessageData,
    encoding: str,
    charset: str,
    start: int = 0,
    end: int | None = None,
    *,
    chunk_bytes: int = BODY_CHUNK_BYTES,
) -> Iterator[str]:
    """The text of the body part data[start:end] in pieces, each decoded from `chunk_bytes` of the part
    (plus what TransferDecoder carries over: the end of a line, the rest of a base64 quantum).

    Transfer encodings are undone by TransferDecoder. The charset is decoded incrementally with replacement
    characters; without a charset the text is UTF-8 when all of it is valid UTF-8, else latin-1
    (RFC 6532), which takes a second pass over the part. Never raises.
    """
    stop = len(data) if end is None else min(end, len(data))
    chunk_bytes = max(chunk_bytes, 1)
    transfer = encoding.lower()
    if charset:
        codec = text_codec(charset.strip().lower()) or "latin-1"
    elif _is_utf8(_transfer_decoded(data, start, stop, transfer, chunk_bytes)):
        codec = "utf-8"
    else:
        codec = "latin-1"
    pieces = _transfer_decoded(data, start, stop, transfer, chunk_bytes)
    if codec in _BYTE_ORDER_MARKS:
        codec, pieces = _in_bom_order(codec, pieces)
    new_decoder = codecs.getincrementaldecoder(codec)
    decoder = new_decoder("replace")
    for piece in pieces:
        try:
            text = decoder.decode(piece)
        except UnicodeError:
            # The CJK decoders keep at most 8 bytes of an unfinished sequence and raise past that (a
            # broken ISO-2022 escape): decode this piece on its own and go on with a fresh decoder.
            text, decoder = piece.decode(codec, "replace"), new_decoder("replace")
        if text:
            yield text
    tail = decoder.decode(b"", True)
    if tail:
        yield tail


_BYTE_ORDER_MARKS = {
    "utf-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE),
    "utf-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE),
}


def _in_bom_order(codec: str, pieces: Iterator[bytes]) -> tuple[str, Iterator[bytes]]:
    """bytes.decode("utf-16") reads text without a byte order mark in the machine's order, but the
    incremental decoder refuses it: name that order explicitly when the part starts without a mark."""
    taken: list[bytes] = []
    head = b""
    for piece in pieces:
        taken.append(piece)
        head += piece[:4]
        if len(head) >= 4:
            break
    if not head.startswith(_BYTE_ORDER_MARKS[codec]):
        codec += "-le" if sys.byteorder == "little" else "-be"
    return codec, itertools.chain(taken, pieces)


def _is_utf8(pieces: Iterator[bytes]) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        for piece in pieces:
            decoder.decode(piece)
        decoder.decode(b"", True)
    except UnicodeDecodeError:
        return False
    return True


def _transfer_decoded(data: MessageData, start: int, stop: int, encoding: str, chunk_bytes: int) -> Iterator[bytes]:
    """data[start:stop] with its Content-Transfer-Encoding undone, read a chunk at a time."""
    decoder = TransferDecoder(encoding)
    for pos in range(start, stop, chunk_bytes):
        piece = decoder.feed(data[pos : min(stop, pos + chunk_bytes)])
        if piece:
            yield piece
        if decoder.is_done:
            break
    tail = decoder.finish()
    if tail:
        yield tail


# Quoted-printable lines are at most 76 characters (RFC 2045 §6.7 rule 5): a "line" that has not ended
# after this many octets is decoded up to there rather than held.
_QP_LONG_LINE = 1 << 16
# Rule 3: white space at the end of an encoded line was added in transport and is dropped. Linear: a run
# of blanks is only tried from its first octet (the lookbehind) and never given back (possessive).
_QP_TRAILING_BLANKS = re.compile(rb"(?<![ \t])[ \t]++(?=\r?\n)")


class TransferDecoder:
    """Undoes one part's Content-Transfer-Encoding (RFC 2045 §6), however its bytes are cut: feed() returns
    what the bytes so far decode to, finish() the rest. It holds the piece fed plus a bounded carry.

    base64 (§6.8): characters outside the alphabet are ignored, the data ends at the first "=" (padding;
    `is_done` tells a caller to stop reading), a dangling sixth of a quantum is dropped. quoted-printable
    (§6.7): trailing white space of a line is dropped (rule 3), so "=" followed by white space ends the
    line softly (rule 5); escapes that are not two hex digits stay as written. Other encodings (7bit,
    8bit, binary) pass through. Never raises.
    """

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding.lower()
        self.is_done = False
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        if self.is_done:
            return b""
        if self.encoding == "base64":
            text = self._carry + data.translate(None, _NOT_BASE64)
            padding = text.find(b"=")
            if padding >= 0:
                text, self.is_done = text[:padding], True
            whole = len(text) - len(text) % 4
            self._carry = text[whole:]
            return binascii.a2b_base64(text[:whole]) if whole else b""
        if self.encoding == "quoted-printable":
            text = self._carry + data
            cut = text.rfind(b"\n") + 1
            if not cut and len(text) > _QP_LONG_LINE:
                cut = len(text) - 2  # never cut inside an "=XX" escape or after a soft-break "="
                cut -= 1 if text[cut - 1 : cut] == b"=" else 2 if text[cut - 2 : cut - 1] == b"=" else 0
            self._carry = text[cut:]
            return binascii.a2b_qp(_QP_TRAILING_BLANKS.sub(b"", text[:cut])) if cut else b""
        return data

    def finish(self) -> bytes:
        """What is left: the last line of quoted-printable, the last partial quantum of base64."""
        rest, self._carry, self.is_done = self._carry, b"", True
        if self.encoding == "quoted-printable":
            return binascii.a2b_qp(rest.rstrip(b" \t"))
        if self.encoding == "base64" and len(rest) >= 2:  # 2 or 3 characters still hold 1 or 2 bytes
            return binascii.a2b_base64(rest + b"==")
        return b""


def remove_fields(data: bytes, drop: Callable[[bytes, bytes], bool]) -> bytes:
    """The message without the header fields for which `drop(lower-case name, raw value)` is true (a
    field's continuation lines go with it); the rest, body included, byte for byte."""
    header_end, _ = find_body_start(data)
    lines = data[:header_end].split(b"\r\n")
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = []
    for field in fields:
        name, sep, value = field[0].partition(b":")
        if sep and drop(name.strip().lower(), b"\r\n".join([value, *field[1:]])):
            continue
        kept.append(b"\r\n".join(field))
    return b"\r\n".join(kept) + data[header_end:]

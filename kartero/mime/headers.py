"""Header blocks (RFC 5322 §2.2): split into fields, unfold, decode encoded words for searching.

Works on bytes and never raises on malformed input: a line without a colon is skipped, a header block
without a blank line runs to the end of the message, unknown charsets decode as latin-1.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import quopri
import re
from collections.abc import Callable
from dataclasses import dataclass


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


def find_body_start(data: bytes, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(end of the header block including its blank line, start of the body) for data[start:end].

    The header block ends at the first empty line (CRLF CRLF, or a bare LF LF in broken mail); with no
    empty line the whole range is header and the body is empty.
    """
    stop = len(data) if end is None else end
    if data.startswith(b"\r\n", start) and start + 2 <= stop:
        return start + 2, start + 2  # no header fields at all
    if data.startswith(b"\n", start) and start + 1 <= stop:
        return start + 1, start + 1
    crlf = data.find(b"\r\n\r\n", start, stop)
    lf = data.find(b"\n\n", start, stop)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 4, crlf + 4
    if lf >= 0:
        return lf + 2, lf + 2
    return stop, stop


def parse_header_block(raw: bytes) -> HeaderBlock:
    """Split a header block into (lower-cased name, unfolded value) pairs."""
    fields: list[tuple[str, bytes]] = []
    name: str | None = None
    value_parts: list[bytes] = []
    for line in raw.split(b"\n"):
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


_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(rb"(\?=)\s+(=\?)")


def _charset_decode(data: bytes, charset: str) -> str:
    charset = charset.split("*", 1)[0].strip().lower()  # RFC 2231 §5 language suffix
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "latin-1"
    return data.decode(charset, "replace")


def decode_words(value: bytes) -> str:
    """Decode RFC 2047 encoded words (whitespace between adjacent words dropped, §6.2); raw 8-bit
    text is taken as UTF-8 (RFC 6532), else latin-1."""
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


def decode_body(data: bytes, encoding: str, charset: str) -> str:
    """Text of a body part: transfer encoding undone, charset decoded (for SEARCH BODY/TEXT)."""
    encoding = encoding.lower()
    try:
        if encoding == "base64":
            data = base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", data) + b"==", validate=False)
        elif encoding == "quoted-printable":
            data = quopri.decodestring(data)
    except (binascii.Error, ValueError):
        pass
    return _charset_decode(data, charset or "us-ascii") if charset else _raw_text(data)


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

"""A message, fed in chunks, as a milter is shown it: header fields one by one, then the body.

Postfix (milter8.c, through its mime_state) sends each header field as its name and its value, the value
being everything after the colon with the field's lines joined by "\\n" (no CR, no final line end), and
the body as the octets after the blank line. A line in the header that is no field (no name and colon)
ends the header and starts the body, as in Postfix. Work is linear in the input: every octet is looked
at a bounded number of times, and a field longer than `max_field_bytes` is cut there (the milter sees
its start; the message itself is not changed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HeaderField:
    name: bytes
    value: bytes  # after the colon, leading blanks kept; lines joined by b"\n"


@dataclass(frozen=True, slots=True)
class HeaderEnd:
    """The header is over; body octets follow (if any)."""


Part = HeaderField | HeaderEnd | bytes  # bytes: body octets, as they are in the message

_NAME_BYTES = frozenset(range(33, 127)) - {ord(":")}


class MessageSplitter:
    def __init__(self, max_field_bytes: int = 65536) -> None:
        self.max_field_bytes = max_field_bytes
        self._line = bytearray()  # the incomplete line at the end of what came so far (header only)
        self._line_cut = False  # the line passed max_field_bytes: the rest of it is dropped
        self._name = b""
        self._field: list[bytes] | None = None  # the value's lines of the field being read
        self._field_size = 0
        self._in_body = False

    @property
    def in_body(self) -> bool:
        return self._in_body

    def feed(self, chunk: bytes) -> list[Part]:
        if self._in_body:
            return [chunk] if chunk else []
        parts: list[Part] = []
        start = 0
        while not self._in_body:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._add_to_line(chunk[start:])
                return parts
            self._add_to_line(chunk[start : end + 1])
            line = bytes(self._line)
            self._line.clear()
            self._line_cut = False
            start = end + 1
            self._header_line(line, parts)
        if start < len(chunk):
            parts.append(chunk[start:])
        return parts

    def end(self) -> list[Part]:
        """The parts still held back when the message ends (its last field, the end of the header)."""
        parts: list[Part] = []
        if not self._in_body:
            if self._line:
                line = bytes(self._line)
                self._line.clear()
                self._header_line(line, parts)
            if not self._in_body:
                self._flush_field(parts)
                parts.append(HeaderEnd())
                self._in_body = True
        return parts

    def _add_to_line(self, data: bytes) -> None:
        room = self.max_field_bytes + 2 - len(self._line)
        if len(data) > room:
            data = data[: max(room, 0)]
            self._line_cut = True
        self._line += data

    def _header_line(self, line: bytes, parts: list[Part]) -> None:
        text = line[:-1] if line.endswith(b"\n") else line
        if text.endswith(b"\r"):
            text = text[:-1]
        if not text:  # the blank line: the body follows it
            self._flush_field(parts)
            parts.append(HeaderEnd())
            self._in_body = True
            return
        if text[0] in b" \t" and self._field is not None:
            room = self.max_field_bytes - self._field_size - 1
            if room > 0:
                self._field.append(text[:room])
                self._field_size += min(len(text), room) + 1
            return
        colon = text.find(b":")
        name = text[:colon].rstrip(b" \t") if colon > 0 else b""
        if not name or any(b not in _NAME_BYTES for b in name):
            # Not a field: the header ends here and this line is the first of the body.
            self._flush_field(parts)
            parts.append(HeaderEnd())
            self._in_body = True
            parts.append(line)
            return
        self._flush_field(parts)
        self._name = name
        self._field = [text[colon + 1 :][: max(self.max_field_bytes - len(name) - 1, 0)]]
        self._field_size = len(name) + 1 + len(self._field[0])

    def _flush_field(self, parts: list[Part]) -> None:
        if self._field is None:
            return
        parts.append(HeaderField(self._name, b"\n".join(self._field)))
        self._field = None
        self._field_size = 0

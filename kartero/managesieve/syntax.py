"""ManageSieve syntax (RFC 5804 §4): a command's words, strings out, script names.

A command is words on one line, except that a string may be a literal, `{n+}` (or `{n}`) CRLF and then n
octets, after which the command goes on. `split_words` reads one such line segment in one pass; the
connection reads the literal octets between segments. Nothing here backtracks: every function is linear
in its input.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# RFC 5804 §1.6: a script name is at least one character; we take at most this many octets of UTF-8.
MAX_NAME_OCTETS = 512
# RFC 5804 §4 (errata 2655): a quoted string holds at most 1024 octets; longer strings go out as literals.
MAX_QUOTED_OUT = 1024
# The longest number a literal's `{...}` or an argument may have: 4294967295 (RFC 5804 §4, number).
MAX_NUMBER = 2**32 - 1


class SyntaxProblem(ValueError):
    """A line segment is not what RFC 5804 §4 allows (the text is safe to send to the client)."""


@dataclass(frozen=True, slots=True)
class Word:
    """One argument: a string (quoted, or a literal's octets) or an atom (a command name, a number)."""

    data: bytes
    is_string: bool


@dataclass(frozen=True, slots=True)
class LiteralStart:
    """The segment ends with a literal's header: `size` octets follow the CRLF."""

    size: int


def literal_at_end(segment: bytes) -> LiteralStart | None:
    """The literal a line segment (without its CRLF) announces at its end, if any: `{n+}` or `{n}`
    (RFC 5804 §4 has clients send `{n+}`; a client that sends `{n}` gets no continuation, as the protocol
    has none, and its octets are read the same way)."""
    if not segment.endswith(b"}"):
        return None
    start = segment.rfind(b"{", max(0, len(segment) - 14))
    if start < 0:
        return None
    digits = segment[start + 1 : -1].removesuffix(b"+")
    if not digits or not digits.isdigit() or len(digits) > 10 or int(digits) > MAX_NUMBER:
        return None
    if start > 0 and segment[start - 1 : start] != b" ":
        return None
    return LiteralStart(int(digits))


def split_words(segment: bytes) -> list[Word]:
    """The words of a line segment (without its CRLF, and without the literal header `literal_at_end`
    found at its end). Quoted strings take `\\"` and `\\\\` escapes (RFC 5804 §4 QUOTED-SPECIALS).
    Raises SyntaxProblem."""
    words: list[Word] = []
    i, n = 0, len(segment)
    while i < n:
        if segment[i] == 0x20:
            i += 1
            continue
        if segment[i] == 0x22:  # a quoted string
            out = bytearray()
            i += 1
            while True:
                if i >= n:
                    raise SyntaxProblem("Unterminated quoted string")
                c = segment[i]
                if c == 0x22:
                    i += 1
                    break
                if c == 0x5C:
                    if i + 1 >= n or segment[i + 1] not in (0x22, 0x5C):
                        raise SyntaxProblem("Invalid escape in quoted string")
                    out.append(segment[i + 1])
                    i += 2
                    continue
                if c in (0x00, 0x0D, 0x0A):
                    raise SyntaxProblem("Invalid character in quoted string")
                out.append(c)
                i += 1
            words.append(Word(bytes(out), True))
            if i < n and segment[i] != 0x20:
                raise SyntaxProblem("Expected a space after a string")
            continue
        end = segment.find(b" ", i)
        end = n if end < 0 else end
        atom = segment[i:end]
        if not atom.isascii() or not all(0x21 <= c <= 0x7E and c not in b'"{}' for c in atom):
            raise SyntaxProblem("Invalid characters in command")
        words.append(Word(atom, False))
        i = end
    return words


def parse_number(word: Word) -> int | None:
    """A `number` argument (RFC 5804 §4: 0..4294967295), or None."""
    if word.is_string or not word.data.isdigit() or len(word.data) > 10:
        return None
    value = int(word.data)
    return value if value <= MAX_NUMBER else None


def string(data: bytes) -> bytes:
    """A string as the server sends it: quoted when RFC 5804 §4 allows (short, no CR/LF/NUL), else a
    literal-s2c `{n}` CRLF octets."""
    if len(data) <= MAX_QUOTED_OUT and not any(c in data for c in (b"\r", b"\n", b"\0")):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def check_name(data: bytes) -> str | None:
    """A valid script name as text, or None: UTF-8, 1 to MAX_NAME_OCTETS octets, Net-Unicode (RFC 5198
    §2: NFC, none of the controls U+0000-001F, U+007F-009F, nor U+2028/U+2029; RFC 5804 §1.6)."""
    if not 0 < len(data) <= MAX_NAME_OCTETS:
        return None
    try:
        name = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(c < " " or "\x7f" <= c <= "\x9f" or c in "\u2028\u2029" for c in name):
        return None
    return name if unicodedata.is_normalized("NFC", name) else None

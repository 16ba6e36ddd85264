"""IMAP command framing and tokens (RFC 9051 §4, §9): atoms, strings, literals, parenthesised lists.

A command is one or more lines joined by literals: a line ending in `{n}` (synchronising: the server
answers `+` first), `{n+}` (LITERAL+) or `~{n}` (literal8) is followed by n octets and then the rest of
the command. `CommandFramer` turns the byte stream into complete commands; `tokenize` turns one command
into tokens, with each literal's octets spliced in as a String.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ParseError(ValueError):
    """The command is malformed; the message is the reason given to the client after `BAD`."""


@dataclass(frozen=True, slots=True)
class Atom:
    value: str


@dataclass(frozen=True, slots=True)
class String:
    value: bytes
    is_literal: bool = False


@dataclass(frozen=True, slots=True)
class PList:
    items: tuple[Token, ...]


Token = Atom | String | PList

_LITERAL_AT_END = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\r?\n$")


@dataclass(frozen=True, slots=True)
class LiteralRequest:
    """The line just read announces a literal of `size` octets."""

    size: int
    is_sync: bool
    is_binary: bool


@dataclass(frozen=True, slots=True)
class RawCommand:
    """A complete command: its lines (literal markers removed) and the literals between them."""

    lines: tuple[bytes, ...]
    literals: tuple[bytes, ...]

    def first_words(self) -> tuple[str, str]:
        """(tag, command name) as far as the first line tells; for limits and error replies."""
        words = self.lines[0].split(b" ", 2)
        tag = words[0].decode("ascii", "replace") if words else ""
        name = words[1].decode("ascii", "replace").upper() if len(words) > 1 else ""
        return tag, name


def literal_request(line: bytes) -> LiteralRequest | None:
    """The literal a command line ends with, if any."""
    m = _LITERAL_AT_END.search(line)
    if m is None:
        return None
    return LiteralRequest(int(m.group(2)), is_sync=not m.group(3), is_binary=bool(m.group(1)))


def strip_literal_marker(line: bytes) -> bytes:
    return _LITERAL_AT_END.sub(b"", line)


_ATOM_STOP = frozenset(' (){"\x00\r\n')
_SENTINEL = "\x00"


def tokenize(raw: RawCommand) -> list[Token]:
    """Tokens of a whole command. Raises ParseError with a reason for the client."""
    parts: list[str] = []
    for line in raw.lines:
        stripped = line.rstrip(b"\r\n")
        if b"\x00" in stripped:
            raise ParseError("NUL in command")
        try:
            parts.append(stripped.decode("utf-8"))
        except UnicodeDecodeError:
            raise ParseError("command is not valid UTF-8") from None
    text = _SENTINEL.join(parts)
    literals = list(raw.literals)
    tokens, pos = _parse_sequence(text, 0, literals, nested=False)
    if pos != len(text):
        raise ParseError("unbalanced parentheses")
    return tokens


def _parse_sequence(text: str, pos: int, literals: list[bytes], *, nested: bool) -> tuple[list[Token], int]:
    tokens: list[Token] = []
    n = len(text)
    expect_space = False
    while pos < n:
        ch = text[pos]
        if ch == ")":
            if not nested:
                raise ParseError("unexpected )")
            return tokens, pos
        if expect_space:
            if ch != " ":
                raise ParseError(f"expected space at {pos}")
            pos += 1
            expect_space = False
            continue
        if ch == "(":
            items, pos = _parse_sequence(text, pos + 1, literals, nested=True)
            if pos >= n or text[pos] != ")":
                raise ParseError("missing )")
            tokens.append(PList(tuple(items)))
            pos += 1
        elif ch == '"':
            value, pos = _parse_quoted(text, pos)
            tokens.append(String(value.encode("utf-8")))
        elif ch == _SENTINEL:
            if not literals:
                raise ParseError("literal missing")
            tokens.append(String(literals.pop(0), is_literal=True))
            pos += 1
        elif ch == " ":
            raise ParseError("extra space")
        else:
            start = pos
            depth = 0
            while pos < n:
                c = text[pos]
                if c == "[":
                    depth += 1
                elif c == "]" and depth:
                    depth -= 1
                elif (depth == 0 and c in _ATOM_STOP) or (depth and c in "\x00\r\n"):
                    break
                pos += 1
            if depth:
                raise ParseError("missing ]")
            tokens.append(Atom(text[start:pos]))
        expect_space = True
    if nested:
        raise ParseError("missing )")
    return tokens, pos


def _parse_quoted(text: str, pos: int) -> tuple[str, int]:
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text) or text[i + 1] not in '"\\':
                raise ParseError("bad escape in quoted string")
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            return "".join(out), i + 1
        elif ch in "\r\n\x00":
            break
        else:
            out.append(ch)
            i += 1
    raise ParseError("unterminated quoted string")

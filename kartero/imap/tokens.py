"""IMAP command framing and tokens (RFC 9051 §4, §9): atoms, strings, literals, parenthesised lists.

A command is one or more lines joined by literals: a line ending in `{n}` (synchronising: the server
answers `+` first), `{n+}` (LITERAL+) or `~{n}` (literal8) is followed by n octets and then the rest of
the command. The connection frames the byte stream into lines and literals (`split_literal` reads the
marker at a line's end); `tokenize` turns one command into tokens, with each literal's octets spliced in
as a String.

`[` is an ATOM-CHAR (RFC 9051 §9): it opens a bracketed run only in a FETCH item's section
(`BODY[HEADER.FIELDS (A B)]`, `binary.peek[1]`; in FETCH, and in NOTIFY, whose MessageNew event takes
fetch attributes: RFC 5465 §5.2), whose brackets may hold spaces and parentheses; anywhere
else (`SELECT a[b`, `LIST "" a[%`) it is a character of the atom.

Everything here is one pass over the input: no backtracking, no recursion (a list nested `MAX_NESTING` deep is
a ParseError, not a RecursionError), and at most `MAX_TOKENS` tokens per command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Parenthesised lists may nest this deep (lists, SEARCH groups, FETCH items, LIST options): more than any
# client needs, and deeper input is a BAD.
MAX_NESTING = 100
# Tokens (atoms, strings and lists) in one command. A command may hold 1 MiB, and each token costs memory
# and a step in every later stage (SEARCH evaluates its keys for every message).
MAX_TOKENS = 10_000


class ParseError(ValueError):
    """The command is malformed; the message is the reason given to the client after `BAD`."""


@dataclass(frozen=True, slots=True)
class Atom:
    value: str


@dataclass(frozen=True, slots=True)
class String:
    value: bytes
    is_literal: bool = False
    literal: int = field(default=-1, compare=False)  # a literal's index in the command (its spooled octets)


@dataclass(frozen=True, slots=True)
class PList:
    items: tuple[Token, ...]


Token = Atom | String | PList


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
        return first_words(self.lines[0])


def upper_ascii(text: str) -> str:
    """`text` in upper case when it is ASCII, else unchanged: IMAP keywords are case-insensitive ASCII
    (RFC 9051 §9), and `str.upper()` would make U+017F (long s) an `S` and U+0131 (dotless i) an `I`, so
    a word that is not SEEN or INBOX would pass for one."""
    return text.upper() if text.isascii() else text


def first_words(line: bytes) -> tuple[str, str]:
    """(tag, command name) of a command's first line, without parsing it."""
    words = line.split(b" ", 2)
    tag = words[0].decode("ascii", "replace")
    name = upper_ascii(words[1].decode("ascii", "replace")) if len(words) > 1 else ""
    return tag, name


def split_literal(line: bytes) -> tuple[bytes, LiteralRequest | None]:
    """A command line (ending in LF) without its literal marker (`{n}`, `{n+}` or `~{n}`, n of at most 20
    digits) and line ending, and the literal announced; `(line, None)` when it announces none. Only the
    end of the line is read."""
    end = len(line) - 2 if line.endswith(b"\r\n") else len(line) - 1
    if not line.endswith(b"}", 0, end):
        return line, None
    start = line.rfind(b"{", max(0, end - 23), end)
    if start < 0:
        return line, None
    digits = line[start + 1 : end - 1]
    is_sync = not digits.endswith(b"+")
    if not is_sync:
        digits = digits[:-1]
    if not 1 <= len(digits) <= 20 or not digits.isdigit():
        return line, None
    is_binary = line.endswith(b"~", 0, start)
    return line[: start - is_binary], LiteralRequest(int(digits), is_sync=is_sync, is_binary=is_binary)


# Runs of characters that need no decision, skipped in one C call each. A negated character class with
# nothing after it cannot backtrack: each is one linear scan.
_ATOM_RUN = re.compile(r'[^ (){"\x00\r\n\[]*')
_BRACKETED_RUN = re.compile(r"[^\[\]\x00\r\n]*")
_QUOTED_RUN = re.compile(r'[^"\\\x00\r\n]*')
_SENTINEL = "\x00"  # stands for a literal in the joined text (a NUL cannot come from a line)
# The FETCH items whose `[` opens a section (RFC 9051 §6.4.5), in upper case.
_SECTION_ITEMS = frozenset({"BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"})
_LONGEST_SECTION_ITEM = max(map(len, _SECTION_ITEMS))


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
    literals = raw.literals
    next_literal = 0
    # The lists being read, outermost first: a stack instead of recursion.
    open_lists: list[list[Token]] = [[]]
    count = 0
    n = len(text)
    pos = 0
    expect_space = False
    while pos < n:
        ch = text[pos]
        if ch == ")":
            if len(open_lists) == 1:
                raise ParseError("unexpected )")
            items = open_lists.pop()
            open_lists[-1].append(PList(tuple(items)))
            pos += 1
            expect_space = True
            continue
        if expect_space:
            if ch != " ":
                raise ParseError(f"expected space at {pos}")
            pos += 1
            expect_space = False
            continue
        count += 1
        if count > MAX_TOKENS:
            raise ParseError(f"too many arguments ({MAX_TOKENS} at most)")
        if ch == "(":
            if len(open_lists) > MAX_NESTING:
                raise ParseError(f"parentheses nested too deeply ({MAX_NESTING} levels at most)")
            open_lists.append([])
            pos += 1
            continue
        if ch == '"':
            value, pos = _parse_quoted(text, pos)
            open_lists[-1].append(String(value.encode("utf-8")))
        elif ch == _SENTINEL:
            if next_literal >= len(literals):
                raise ParseError("literal missing")
            open_lists[-1].append(String(literals[next_literal], is_literal=True, literal=next_literal))
            next_literal += 1
            pos += 1
        elif ch == " ":
            raise ParseError("extra space")
        else:
            start = pos
            pos = _read_atom(text, pos, _is_fetch(open_lists[0]))
            open_lists[-1].append(Atom(text[start:pos]))
        expect_space = True
    if len(open_lists) > 1:
        raise ParseError("missing )")
    return open_lists[0]


def _is_fetch(top: list[Token]) -> bool:
    """Whether the command read so far (its top-level tokens) is FETCH, UID FETCH or NOTIFY (RFC 5465
    §5.2: MessageNew's fetch attributes)."""
    if len(top) < 2 or not isinstance(top[1], Atom):
        return False
    name = upper_ascii(top[1].value)
    return name in ("FETCH", "NOTIFY") or (name == "UID" and len(top) > 2 and isinstance(top[2], Atom)
                               and upper_ascii(top[2].value) == "FETCH")  # fmt: skip


def _read_atom(text: str, pos: int, is_fetch: bool) -> int:
    """The end of the atom starting at `pos`. In a FETCH command the brackets of a section
    (BODY[HEADER.FIELDS (A B)]) may hold spaces and parentheses; they must be balanced. Anywhere else `[`
    is an atom character like any other."""
    n = len(text)
    start = pos
    while True:
        pos = _ATOM_RUN.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= n or text[pos] != "[":
            return pos
        # Only the atom's first bracket can open a section: the prefix is looked at while it is short.
        if not is_fetch or pos - start > _LONGEST_SECTION_ITEM or upper_ascii(text[start:pos]) not in _SECTION_ITEMS:
            pos += 1
            continue
        depth = 0
        while True:
            depth += 1 if text[pos] == "[" else -1
            pos += 1
            if not depth:
                break
            pos = _BRACKETED_RUN.match(text, pos).end()  # type: ignore[union-attr]
            if pos >= n or text[pos] not in "[]":
                raise ParseError("missing ]")


def _parse_quoted(text: str, pos: int) -> tuple[str, int]:
    out: list[str] = []
    i = pos + 1
    n = len(text)
    while i < n:
        end = _QUOTED_RUN.match(text, i).end()  # type: ignore[union-attr]
        out.append(text[i:end])
        i = end
        if i >= n:
            break
        ch = text[i]
        if ch == "\\":
            if i + 1 >= n or text[i + 1] not in '"\\':
                raise ParseError("bad escape in quoted string")
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            return "".join(out), i + 1
        else:  # CR, LF or NUL
            break
    raise ParseError("unterminated quoted string")

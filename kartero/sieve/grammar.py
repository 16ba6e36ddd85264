"""The Sieve grammar (RFC 5228 §8): tokens, then a tree of commands, tests and arguments.

The lexer is one pass over the text with no backtracking; the parser descends one Python frame per block
or test list, and refuses nesting deeper than MAX_DEPTH before it goes further, so the depth of its
recursion is bounded by that cap and never chosen by the script. Every error carries the 1-based line and
column (in characters) of where it was found.
"""

from __future__ import annotations

from dataclasses import dataclass

from kartero.sieve.model import SieveError

# A script is a user's text, stored and parsed at upload and again at delivery: these bound the work.
MAX_SCRIPT_CHARS = 1024 * 1024
MAX_DEPTH = 50  # blocks and test lists inside each other
MAX_NODES = 10_000  # commands and tests in one script
MAX_LIST = 1_000  # strings in one string list
MAX_NUMBER = 2**63 - 1

_QUANTIFIERS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True, slots=True)
class Position:
    line: int
    column: int

    def error(self, message: str) -> SieveError:
        return SieveError(self.line, self.column, message)


@dataclass(slots=True)
class Token:
    kind: str  # "identifier", "tag", "number", "string", "text", or the character itself: [ ] ( ) { } , ;
    value: str | int
    position: Position


@dataclass(slots=True)
class StringArgument:
    values: list[str]
    positions: list[Position]
    is_list: bool  # written in brackets (a single string may still be a list argument)
    position: Position


@dataclass(slots=True)
class NumberArgument:
    value: int
    position: Position


@dataclass(slots=True)
class TagArgument:
    name: str  # lower-case, without the colon
    position: Position


Argument = StringArgument | NumberArgument | TagArgument


@dataclass(slots=True)
class Test:
    name: str  # lower-case
    arguments: list[Argument]
    tests: list[Test]
    position: Position
    has_test_list: bool = False  # written as ( ... )


@dataclass(slots=True)
class Command:
    name: str  # lower-case
    arguments: list[Argument]
    tests: list[Test]
    block: list[Command] | None
    position: Position
    has_test_list: bool = False


@dataclass(slots=True)
class _Cursor:
    text: str
    pos: int = 0
    line: int = 1
    line_start: int = 0

    def position(self, at: int | None = None) -> Position:
        at = self.pos if at is None else at
        return Position(self.line, at - self.line_start + 1)


def _is_identifier_start(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z")


def _is_identifier_char(c: str) -> bool:
    return _is_identifier_start(c) or "0" <= c <= "9"


def tokenize(text: str) -> list[Token]:
    """The tokens of `text`; raises SieveError at the first character that starts none."""
    if len(text) > MAX_SCRIPT_CHARS:
        raise SieveError(1, 1, f"script longer than {MAX_SCRIPT_CHARS} characters")
    cur = _Cursor(text)
    tokens: list[Token] = []
    n = len(text)
    while cur.pos < n:
        c = text[cur.pos]
        if c == "\n":
            cur.pos += 1
            cur.line, cur.line_start = cur.line + 1, cur.pos
        elif c in " \t\r":
            cur.pos += 1
        elif c == "#":
            end = text.find("\n", cur.pos)
            cur.pos = n if end < 0 else end
        elif c == "/" and text.startswith("/*", cur.pos):
            _skip_bracket_comment(cur)
        elif c in "[](){},;":
            tokens.append(Token(c, c, cur.position()))
            cur.pos += 1
        elif c == '"':
            tokens.append(_quoted_string(cur))
        elif c == ":":
            start = cur.position()
            end = cur.pos + 1
            if end >= n or not _is_identifier_start(text[end]):
                raise start.error("a tag needs a name after ':'")
            while end < n and _is_identifier_char(text[end]):
                end += 1
            tokens.append(Token("tag", text[cur.pos + 1 : end].lower(), start))
            cur.pos = end
        elif "0" <= c <= "9":
            tokens.append(_number(cur))
        elif _is_identifier_start(c):
            start = cur.position()
            end = cur.pos
            while end < n and _is_identifier_char(text[end]):
                end += 1
            word = text[cur.pos : end]
            if word.lower() == "text" and end < n and text[end] == ":":
                cur.pos = end + 1
                tokens.append(_multiline(cur, start))
            else:
                tokens.append(Token("identifier", word.lower(), start))
                cur.pos = end
        else:
            raise cur.position().error(f"unexpected character {c!r}")
    tokens.append(Token("end", "", cur.position()))
    return tokens


def _skip_bracket_comment(cur: _Cursor) -> None:
    start = cur.position()
    end = cur.text.find("*/", cur.pos + 2)
    if end < 0:
        raise start.error("unterminated /* comment")
    _advance_lines(cur, end + 2)


def _advance_lines(cur: _Cursor, to: int) -> None:
    """Move the cursor to `to`, counting the line breaks passed."""
    newlines = cur.text.count("\n", cur.pos, to)
    if newlines:
        cur.line += newlines
        cur.line_start = cur.text.rfind("\n", cur.pos, to) + 1
    cur.pos = to


def _quoted_string(cur: _Cursor) -> Token:
    """RFC 5228 §2.4.2: backslash escapes itself and the quote; before any other character it is dropped.
    The closing quote is searched again only when an escaped quote was passed: one pass over the string."""
    start = cur.position()
    text = cur.text
    out: list[str] = []
    i = cur.pos + 1
    quote = text.find('"', i)
    while True:
        if quote < 0:
            raise start.error("unterminated string")
        backslash = text.find("\\", i, quote)
        if backslash < 0:
            break
        out.append(text[i:backslash])
        out.append(text[backslash + 1])  # the quote is further on, so this character exists
        i = backslash + 2
        if backslash + 1 == quote:
            quote = text.find('"', i)
    out.append(text[i:quote])
    _advance_lines(cur, quote + 1)
    return Token("string", _crlf("".join(out)), start)


def _crlf(value: str) -> str:
    """Line breaks inside strings are CRLF (RFC 5228 §2.4.2), however the script file ended its lines."""
    if "\n" not in value:
        return value
    return value.replace("\r\n", "\n").replace("\n", "\r\n")


def _multiline(cur: _Cursor, start: Position) -> Token:
    """`text:` then blanks and an optional comment to the end of the line, then lines up to a lone '.';
    a line starting with '.' loses that dot (RFC 5228 §2.4.2 dot-stuffing)."""
    text = cur.text
    n = len(text)
    i = cur.pos
    while i < n and text[i] in " \t":
        i += 1
    if i < n and text[i] == "#":
        end = text.find("\n", i)
        i = n if end < 0 else end
    elif i < n and text[i] == "\r" and i + 1 < n and text[i + 1] == "\n":
        i += 1
    if i >= n or text[i] != "\n":
        raise cur.position(i).error("text: must be followed by the end of the line")
    i += 1
    lines: list[str] = []
    while True:
        if i >= n:
            raise start.error("unterminated text: string (a line with a single '.' ends it)")
        end = text.find("\n", i)
        line_end = n if end < 0 else end
        line = text[i:line_end]
        if line.endswith("\r"):
            line = line[:-1]
        if line == ".":
            _advance_lines(cur, line_end)
            return Token("text", "".join(f"{item}\r\n" for item in lines), start)
        lines.append(line[1:] if line.startswith(".") else line)
        if end < 0:
            raise start.error("unterminated text: string (a line with a single '.' ends it)")
        i = end + 1


def _number(cur: _Cursor) -> Token:
    start = cur.position()
    text = cur.text
    end = cur.pos
    while end < len(text) and "0" <= text[end] <= "9":
        end += 1
    digits = text[cur.pos : end]
    if len(digits) > 19:
        raise start.error("number too large")
    value = int(digits)
    if end < len(text) and text[end].lower() in _QUANTIFIERS:
        value *= _QUANTIFIERS[text[end].lower()]
        end += 1
    if end < len(text) and _is_identifier_char(text[end]):
        raise cur.position(end).error(f"unexpected character {text[end]!r} after a number")
    if value > MAX_NUMBER:
        raise start.error("number too large")
    cur.pos = end
    return Token("number", value, start)


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.nodes = 0

    def peek(self) -> Token:
        return self.tokens[self.index]

    def take(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def expect(self, kind: str, what: str) -> Token:
        token = self.peek()
        if token.kind != kind:
            raise token.position.error(f"expected {what}, found {_describe(token)}")
        return self.take()

    def count_node(self, position: Position) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise position.error(f"more than {MAX_NODES} commands and tests")

    def commands(self, depth: int, closing: str) -> list[Command]:
        out: list[Command] = []
        while True:
            token = self.peek()
            if token.kind == closing:
                return out
            if token.kind != "identifier":
                raise token.position.error(f"expected a command, found {_describe(token)}")
            out.append(self.command(depth))

    def command(self, depth: int) -> Command:
        token = self.take()
        assert isinstance(token.value, str)
        self.count_node(token.position)
        arguments = self.arguments()
        tests, has_list = self.tests(depth)
        after = self.peek()
        if after.kind == ";":
            self.take()
            return Command(token.value, arguments, tests, None, token.position, has_list)
        if after.kind == "{":
            if depth >= MAX_DEPTH:
                raise after.position.error(f"blocks nested deeper than {MAX_DEPTH}")
            self.take()
            block = self.commands(depth + 1, "}")
            self.take()
            return Command(token.value, arguments, tests, block, token.position, has_list)
        raise after.position.error(f"expected ';' or '{{' after {token.value}, found {_describe(after)}")

    def arguments(self) -> list[Argument]:
        out: list[Argument] = []
        while True:
            token = self.peek()
            if token.kind in ("string", "text"):
                self.take()
                assert isinstance(token.value, str)
                out.append(StringArgument([token.value], [token.position], False, token.position))
            elif token.kind == "[":
                out.append(self.string_list())
            elif token.kind == "number":
                self.take()
                assert isinstance(token.value, int)
                out.append(NumberArgument(token.value, token.position))
            elif token.kind == "tag":
                self.take()
                assert isinstance(token.value, str)
                out.append(TagArgument(token.value, token.position))
            else:
                return out

    def string_list(self) -> StringArgument:
        opening = self.take()
        values: list[str] = []
        positions: list[Position] = []
        while True:
            token = self.peek()
            if token.kind not in ("string", "text"):
                raise token.position.error(f"expected a string in the list, found {_describe(token)}")
            self.take()
            assert isinstance(token.value, str)
            values.append(token.value)
            positions.append(token.position)
            if len(values) > MAX_LIST:
                raise token.position.error(f"more than {MAX_LIST} strings in a list")
            after = self.take()
            if after.kind == "]":
                return StringArgument(values, positions, True, opening.position)
            if after.kind != ",":
                raise after.position.error(f"expected ',' or ']' in the string list, found {_describe(after)}")

    def tests(self, depth: int) -> tuple[list[Test], bool]:
        token = self.peek()
        if token.kind == "identifier":
            return [self.test(depth)], False
        if token.kind == "(":
            if depth >= MAX_DEPTH:
                raise token.position.error(f"tests nested deeper than {MAX_DEPTH}")
            self.take()
            out: list[Test] = []
            while True:
                first = self.peek()
                if first.kind != "identifier":
                    raise first.position.error(f"expected a test, found {_describe(first)}")
                out.append(self.test(depth + 1))
                after = self.take()
                if after.kind == ")":
                    return out, True
                if after.kind != ",":
                    raise after.position.error(f"expected ',' or ')' in the test list, found {_describe(after)}")
        return [], False

    def test(self, depth: int) -> Test:
        token = self.take()
        assert isinstance(token.value, str)
        self.count_node(token.position)
        arguments = self.arguments()
        if depth >= MAX_DEPTH and self.peek().kind in ("identifier", "("):
            raise self.peek().position.error(f"tests nested deeper than {MAX_DEPTH}")
        tests, has_list = self.tests(depth + 1)
        return Test(token.value, arguments, tests, token.position, has_list)


def _describe(token: Token) -> str:
    if token.kind == "end":
        return "the end of the script"
    if token.kind in ("string", "text"):
        return "a string"
    if token.kind == "number":
        return "a number"
    if token.kind == "tag":
        return f"':{token.value}'"
    if token.kind == "identifier":
        return f"'{token.value}'"
    return f"'{token.value}'"


def parse(text: str) -> list[Command]:
    """The commands of a script; raises SieveError (line:column: message) for anything not RFC 5228 §8."""
    if "\x00" in text:
        index = text.index("\x00")
        line = text.count("\n", 0, index) + 1
        raise SieveError(line, index - (text.rfind("\n", 0, index) + 1) + 1, "NUL character in the script")
    parser = _Parser(tokenize(text))
    commands = parser.commands(0, "end")
    return commands


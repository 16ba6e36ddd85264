"""POSIX extended regular expressions for the :regex match type (draft-ietf-sieve-regex-01), run by a Pike VM.

Python's `re` backtracks: `(a|a)*b` over 30 characters of `a` takes it seconds, and the key is a user's
while the text is an attacker's. Here the pattern compiles to a Thompson NFA program and the search
steps every live thread one character at a time (Pike VM), so a search costs O(len(program) x len(text))
and charges the run's Budget for every thread step. The program is bounded (MAX_PROGRAM instructions,
bounds {m,n} up to RE_DUP_MAX), so is the pattern (match.MAX_PATTERN), and group nesting (MAX_NESTING)
bounds the parser's recursion.

Semantics: an unanchored search like regexec(3); of the matches starting leftmost, the longest wins
(POSIX); `^` and `$` anchor at the ends of the value. Groups 1-9 are the match variables ${1}..${9}.
Supported: | ( ) * + ? {m} {m,} {m,n} . [..] [^..] ranges, [:class:], [.c.], [=c=], escaped
characters and the GNU escapes \\w \\W \\s \\S. Back-references (which no NFA can run) are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kartero.sieve.match import C_SCAN_CHARS, MAX_PATTERN, Budget

RE_DUP_MAX = 255
MAX_PROGRAM = 10_000
MAX_NESTING = 50
CAPTURE_GROUPS = 9


class RegexError(ValueError):
    """The pattern is not a supported ERE; the message says why."""


def _ascii_class(test: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda c: c.isascii() and test(c)


_NAMED: dict[str, Callable[[str], bool]] = {
    "alpha": _ascii_class(str.isalpha),
    "digit": _ascii_class(str.isdigit),
    "alnum": _ascii_class(str.isalnum),
    "upper": _ascii_class(str.isupper),
    "lower": _ascii_class(str.islower),
    "space": lambda c: c in " \t\n\r\f\v",
    "blank": lambda c: c in " \t",
    "punct": lambda c: c.isascii() and c.isprintable() and not c.isalnum() and c != " ",
    "print": lambda c: c.isascii() and c.isprintable(),
    "graph": lambda c: c.isascii() and c.isprintable() and c != " ",
    "cntrl": lambda c: ord(c) < 32 or ord(c) == 127,
    "xdigit": lambda c: c in "0123456789abcdefABCDEF",
}
_WORD = _NAMED["alnum"]


@dataclass(frozen=True, slots=True)
class CharClass:
    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...]
    named: tuple[str, ...]
    negated: bool
    fold: bool  # the text is ASCII-lowercased: try the upper-case letter too

    def matches(self, c: str) -> bool:
        hit = self._contains(c)
        if not hit and self.fold and "a" <= c <= "z":
            hit = self._contains(c.upper())
        return hit != self.negated

    def _contains(self, c: str) -> bool:
        if c in self.chars:
            return True
        for low, high in self.ranges:
            if low <= c <= high:
                return True
        return any(_NAMED[name](c) for name in self.named)


# Program instructions: (opcode, argument, argument)
CHAR, ANY, CLASS, SPLIT, JMP, SAVE, MATCH, BOL, EOL = range(9)
Instruction = tuple[int, object, object]


# -- parsing to a tree ----------------------------------------------------------------------------------
# Nodes: ("char", c) ("any",) ("class", CharClass) ("bol",) ("eol",) ("group", index|None, node)
# ("cat", [nodes]) ("alt", [nodes]) ("repeat", node, min, max|None)
Node = tuple[object, ...]


class _Parser:
    def __init__(self, pattern: str, fold: bool) -> None:
        self.pattern = pattern
        self.pos = 0
        self.fold = fold
        self.groups = 0

    def error(self, message: str) -> RegexError:
        return RegexError(f"{message} at offset {self.pos} of the regex")

    def parse(self) -> Node:
        node = self.alternation(0)
        if self.pos < len(self.pattern):
            raise self.error("unmatched ')'")
        return node

    def alternation(self, depth: int) -> Node:
        branches = [self.concatenation(depth)]
        while self.pos < len(self.pattern) and self.pattern[self.pos] == "|":
            self.pos += 1
            branches.append(self.concatenation(depth))
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def concatenation(self, depth: int) -> Node:
        items: list[Node] = []
        while self.pos < len(self.pattern) and self.pattern[self.pos] not in "|)":
            atom = self.atom(depth)
            items.append(self.repeats(atom))
        return items[0] if len(items) == 1 else ("cat", items)

    def repeats(self, atom: Node) -> Node:
        while self.pos < len(self.pattern):
            c = self.pattern[self.pos]
            if c == "*":
                atom, self.pos = ("repeat", atom, 0, None), self.pos + 1
            elif c == "+":
                atom, self.pos = ("repeat", atom, 1, None), self.pos + 1
            elif c == "?":
                atom, self.pos = ("repeat", atom, 0, 1), self.pos + 1
            elif c == "{" and self._is_bound():
                low, high = self.bound()
                atom = ("repeat", atom, low, high)
            else:
                break
        return atom

    def _is_bound(self) -> bool:
        return self.pos + 1 < len(self.pattern) and self.pattern[self.pos + 1].isdigit()

    def bound(self) -> tuple[int, int | None]:
        self.pos += 1
        low = self.number()
        high: int | None = low
        if self.pos < len(self.pattern) and self.pattern[self.pos] == ",":
            self.pos += 1
            high = self.number() if self.pos < len(self.pattern) and self.pattern[self.pos].isdigit() else None
        if self.pos >= len(self.pattern) or self.pattern[self.pos] != "}":
            raise self.error("unterminated {m,n} bound")
        self.pos += 1
        if (high is not None and high < low) or low > RE_DUP_MAX or (high or 0) > RE_DUP_MAX:
            raise self.error(f"invalid bound (at most {RE_DUP_MAX})")
        return low, high

    def number(self) -> int:
        start = self.pos
        while self.pos < len(self.pattern) and self.pattern[self.pos].isdigit() and self.pos - start < 4:
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a number in the bound")
        return int(self.pattern[start : self.pos])

    def atom(self, depth: int) -> Node:
        c = self.pattern[self.pos]
        self.pos += 1
        if c == "(":
            if depth >= MAX_NESTING:
                raise self.error(f"groups nested deeper than {MAX_NESTING}")
            self.groups += 1
            index = self.groups
            inner = self.alternation(depth + 1) if self.pos < len(self.pattern) else ("cat", [])
            if self.pos >= len(self.pattern) or self.pattern[self.pos] != ")":
                raise self.error("unmatched '('")
            self.pos += 1
            return ("group", index, inner)
        if c in "*+?":
            raise self.error(f"nothing to repeat before '{c}'")
        if c == "{" and self.pos < len(self.pattern) and self.pattern[self.pos].isdigit():
            raise self.error("nothing to repeat before '{'")
        if c == ".":
            return ("any",)
        if c == "^":
            return ("bol",)
        if c == "$":
            return ("eol",)
        if c == "[":
            return ("class", self.bracket())
        if c == "\\":
            return self.escape()
        return ("char", self._fold(c))

    def _fold(self, c: str) -> str:
        return c.lower() if self.fold and "A" <= c <= "Z" else c

    def escape(self) -> Node:
        if self.pos >= len(self.pattern):
            raise self.error("trailing backslash")
        c = self.pattern[self.pos]
        self.pos += 1
        if c.isdigit() and c != "0":
            raise self.error("back-references are not supported")
        if c in "wWsS":
            name = "alnum" if c in "wW" else "space"
            chars = frozenset("_") if c in "wW" else frozenset()
            return ("class", CharClass(chars, (), (name,), c.isupper(), self.fold))
        if c.isalpha() and c not in "nt":
            raise self.error(f"unsupported escape '\\{c}'")
        return ("char", {"n": "\n", "t": "\t"}.get(c, self._fold(c)))

    def bracket(self) -> CharClass:
        negated = False
        if self.pos < len(self.pattern) and self.pattern[self.pos] == "^":
            negated = True
            self.pos += 1
        chars: set[str] = set()
        ranges: list[tuple[str, str]] = []
        named: list[str] = []
        first = True
        while True:
            if self.pos >= len(self.pattern):
                raise self.error("unterminated '['")
            c = self.pattern[self.pos]
            if c == "]" and not first:
                self.pos += 1
                break
            first = False
            if c == "[" and self.pos + 1 < len(self.pattern) and self.pattern[self.pos + 1] in ":.=":
                kind = self.pattern[self.pos + 1]
                end = self.pattern.find(kind + "]", self.pos + 2)
                if end < 0:
                    raise self.error(f"unterminated '[{kind}'")
                name = self.pattern[self.pos + 2 : end]
                self.pos = end + 2
                if kind == ":":
                    if name not in _NAMED:
                        raise self.error(f"unknown character class [:{name}:]")
                    named.append(name)
                    continue
                if len(name) != 1:
                    raise self.error(f"unsupported collating element [{kind}{name}{kind}]")
                low = name
            else:
                low = c
                self.pos += 1
            if (
                self.pos + 1 < len(self.pattern)
                and self.pattern[self.pos] == "-"
                and self.pattern[self.pos + 1] != "]"
            ):
                high = self.pattern[self.pos + 1]
                self.pos += 2
                if high < low:
                    raise self.error(f"invalid range {low}-{high}")
                ranges.append((low, high))
            else:
                chars.add(self._fold(low))
                if self.fold:
                    chars.add(low)
        return CharClass(frozenset(chars), tuple(ranges), tuple(named), negated, self.fold)


# -- compiling to a program -----------------------------------------------------------------------------


class _Compiler:
    def __init__(self) -> None:
        self.program: list[list[object]] = []

    def emit(self, op: int, a: object = None, b: object = None) -> int:
        if len(self.program) >= MAX_PROGRAM:
            raise RegexError(f"regex too complex (more than {MAX_PROGRAM} steps)")
        self.program.append([op, a, b])
        return len(self.program) - 1

    def node(self, node: Node) -> None:
        kind = node[0]
        if kind == "char":
            self.emit(CHAR, node[1])
        elif kind == "any":
            self.emit(ANY)
        elif kind == "class":
            self.emit(CLASS, node[1])
        elif kind == "bol":
            self.emit(BOL)
        elif kind == "eol":
            self.emit(EOL)
        elif kind == "cat":
            for item in node[1]:  # type: ignore[attr-defined]
                self.node(item)
        elif kind == "alt":
            branches: list[Node] = node[1]  # type: ignore[assignment]
            jumps = []
            for branch in branches[:-1]:
                split = self.emit(SPLIT)
                self.program[split][1] = len(self.program)
                self.node(branch)
                jumps.append(self.emit(JMP))
                self.program[split][2] = len(self.program)
            self.node(branches[-1])
            for jump in jumps:
                self.program[jump][1] = len(self.program)
        elif kind == "group":
            index = node[1]
            assert isinstance(index, int)
            inner: Node = node[2]  # type: ignore[assignment]
            if index <= CAPTURE_GROUPS:
                self.emit(SAVE, 2 * index)
            self.node(inner)
            if index <= CAPTURE_GROUPS:
                self.emit(SAVE, 2 * index + 1)
        else:  # repeat
            inner_node: Node = node[1]  # type: ignore[assignment]
            low, high = node[2], node[3]
            assert isinstance(low, int)
            for _ in range(low):
                self.node(inner_node)
            if high is None:
                loop = self.emit(SPLIT)
                self.program[loop][1] = len(self.program)
                self.node(inner_node)
                self.emit(JMP, loop)
                self.program[loop][2] = len(self.program)
            else:
                assert isinstance(high, int)
                splits = []
                for _ in range(high - low):
                    split = self.emit(SPLIT)
                    self.program[split][1] = len(self.program)
                    splits.append(split)
                    self.node(inner_node)
                for split in splits:
                    self.program[split][2] = len(self.program)


@dataclass(frozen=True, slots=True)
class Regex:
    program: tuple[Instruction, ...]
    fold: bool
    first: str | None  # the one character every match starts with, if there is one: skipped to by str.find

    def search(self, value: str, budget: Budget) -> list[str] | None:
        """None, or the match variables ${0}..${9} ("" for a group that took no part)."""
        text = value.translate(_ASCII_LOWER) if self.fold else value
        program = self.program
        budget.charge(len(program) // C_SCAN_CHARS + 1)
        marks = [-1] * len(program)
        length = len(text)
        best: tuple[int, int, tuple[int, ...]] | None = None
        threads: list[tuple[int, tuple[int, ...]]] = []
        empty = (-1,) * (2 * CAPTURE_GROUPS + 2)
        first = self.first
        i = -1
        while i < length:
            i += 1
            if first is not None and not threads and best is None:
                # No thread alive: no match can start before the next occurrence of the first character.
                found = text.find(first, i)
                budget.charge(((found if found >= 0 else length) - i) // C_SCAN_CHARS + 1)
                if found < 0:
                    break
                i = found
            if best is None:
                threads.append((-1, (i, *empty[1:])))  # -1: a new thread entering at the start
            threads = self._closure(threads, i, length, marks, budget)
            following: list[tuple[int, tuple[int, ...]]] = []
            c = text[i] if i < length else ""
            for pc, caps in threads:
                if best is not None and caps[0] > best[0]:
                    continue
                op, arg, _ = program[pc]
                if op == MATCH:
                    if best is None or caps[0] < best[0] or (caps[0] == best[0] and i > best[1]):
                        best = (caps[0], i, caps)
                    continue
                if i >= length:
                    continue
                if (
                    (op == CHAR and arg == c)
                    or op == ANY
                    or (op == CLASS and arg.matches(c))  # type: ignore[attr-defined]
                ):
                    following.append((pc + 1, caps))
            if best is not None:
                limit = best[0]
                following = [(pc, caps) for pc, caps in following if caps[0] <= limit]
            threads = following
            if not threads and best is not None:
                break
        if best is None:
            return None
        start, end, caps = best
        out = [value[start:end]]
        for group in range(1, CAPTURE_GROUPS + 1):
            a, b = caps[2 * group], caps[2 * group + 1]
            out.append(value[a:b] if a >= 0 and b >= 0 else "")
        return out

    def _closure(
        self, threads: list[tuple[int, tuple[int, ...]]], i: int, length: int, marks: list[int], budget: Budget
    ) -> list[tuple[int, tuple[int, ...]]]:
        """Follow the jumps, splits, saves and anchors of every thread (in priority order, one thread per
        instruction), leaving threads that wait on a character or have matched. `marks[pc] == i`: the
        instruction was reached in this step already. Every instruction visited is charged: a pattern of
        empty groups has few threads but long chains of jumps."""
        program = self.program
        out: list[tuple[int, tuple[int, ...]]] = []
        visited = 0
        for entry, caps in threads:
            stack = [(0 if entry < 0 else entry, caps)]
            while stack:
                pc, caps = stack.pop()
                if marks[pc] == i:
                    continue
                marks[pc] = i
                visited += 1
                op, a, b = program[pc]
                if op == JMP:
                    stack.append((a, caps))  # type: ignore[arg-type]
                elif op == SPLIT:
                    stack.append((b, caps))  # type: ignore[arg-type]
                    stack.append((a, caps))  # type: ignore[arg-type]
                elif op == SAVE:
                    slot: int = a  # type: ignore[assignment]
                    stack.append((pc + 1, (*caps[:slot], i, *caps[slot + 1 :])))
                elif op == BOL:
                    if i == 0:
                        stack.append((pc + 1, caps))
                elif op == EOL:
                    if i == length:
                        stack.append((pc + 1, caps))
                else:
                    out.append((pc, caps))
        budget.charge(visited + 1)
        return out


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def compile_regex(pattern: str, fold: bool) -> Regex:
    """Compile an ERE; `fold` for i;ascii-casemap. Raises RegexError for what is not a supported ERE."""
    if len(pattern) > MAX_PATTERN:
        raise RegexError(f"regex longer than {MAX_PATTERN} characters")
    tree = _Parser(pattern, fold).parse()
    compiler = _Compiler()
    compiler.node(tree)
    compiler.emit(MATCH)
    program = tuple((int(op), a, b) for op, a, b in compiler.program)  # type: ignore[call-overload]
    return Regex(program, fold, _first_character(program))


def _first_character(program: tuple[Instruction, ...]) -> str | None:
    """The character every match must start with, when the instructions reachable without reading one
    are all that same CHAR (no anchor, class, empty match)."""
    found: set[object] = set()
    stack, seen = [0], set()
    while stack:
        pc = stack.pop()
        if pc in seen:
            continue
        seen.add(pc)
        op, a, b = program[pc]
        if op == JMP:
            stack.append(a)  # type: ignore[arg-type]
        elif op == SPLIT:
            stack.extend((a, b))  # type: ignore[arg-type]
        elif op == SAVE:
            stack.append(pc + 1)
        elif op == CHAR:
            found.add(a)
        else:
            return None
    if len(found) != 1:
        return None
    (char,) = found
    return char if isinstance(char, str) else None


def quote_regex(value: str) -> str:
    """RFC 5229 / draft-ietf-sieve-regex :quoteregex: a backslash before every ERE special character."""
    return "".join("\\" + c if c in "\\^$.[]|()?*+{}" else c for c in value)

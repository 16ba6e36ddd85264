"""Comparators (RFC 4790 via RFC 5228 §2.7.3) and match types: :is, :contains, :matches (RFC 5228 §2.7.1),
:value and :count (RFC 5231), :regex (kartero.sieve.regex).

The values come from the message (an attacker's) and the keys from the script (a user's), so every match
costs at most O(len(key) x len(value)) and charges a shared `Budget` for it; no backtracking happens
anywhere. :matches places the pieces between `*` leftmost, each `*` taking as little as it can and the last
piece anchored at the end, which is both the linear algorithm and the capture rule of RFC 5229 §3.2.
"""

from __future__ import annotations

from dataclasses import dataclass

OCTET = "i;octet"
CASEMAP = "i;ascii-casemap"
NUMERIC = "i;ascii-numeric"
COMPARATORS = (OCTET, CASEMAP, NUMERIC)
RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")

MAX_PATTERN = 4096  # characters of a :matches or :regex key (after variable expansion)

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class BudgetExceeded(Exception):
    """The run spent its matching budget (Limits.max_match_steps)."""


# A scan in C (str.find, `in`, translate) costs this many characters per unit of the budget: about what
# one Python-level step (an NFA thread, a character compared in a loop) costs.
C_SCAN_CHARS = 16


class Budget:
    """Work left for matching in one run: one unit per Python-level step (a character compared in a loop,
    an NFA thread stepped), one per C_SCAN_CHARS characters a C-level scan reads."""

    __slots__ = ("left",)

    def __init__(self, steps: int) -> None:
        self.left = steps

    def charge(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise BudgetExceeded


def fold(comparator: str, value: str) -> str:
    """The value as the comparator sees it: i;ascii-casemap folds A-Z only (RFC 4790 §9.2)."""
    return value.translate(_ASCII_LOWER) if comparator == CASEMAP else value


def numeric_value(value: str) -> int | None:
    """RFC 4790 §9.1: the leading digits as a number; None (positive infinity) when there are none."""
    end = 0
    while end < len(value) and "0" <= value[end] <= "9":
        end += 1
    return int(value[:end]) if end else None


def _order(comparator: str, a: str, b: str) -> int:
    """-1, 0 or 1 as a sorts before, with, or after b."""
    if comparator == NUMERIC:
        x, y = numeric_value(a), numeric_value(b)
        if x is None or y is None:
            return 0 if x is y else (1 if x is None else -1)
        return (x > y) - (x < y)
    fa, fb = fold(comparator, a), fold(comparator, b)
    return (fa > fb) - (fa < fb)


def relation_holds(relation: str, comparator: str, value: str, key: str) -> bool:
    order = _order(comparator, value, key)
    return {
        "gt": order > 0,
        "ge": order >= 0,
        "lt": order < 0,
        "le": order <= 0,
        "eq": order == 0,
        "ne": order != 0,
    }[relation]


def is_equal(comparator: str, value: str, key: str) -> bool:
    if comparator == NUMERIC:
        return _order(comparator, value, key) == 0
    return fold(comparator, value) == fold(comparator, key)


# -- :matches -------------------------------------------------------------------------------------------

_ANY = None  # "?" in a compiled piece


@dataclass(frozen=True, slots=True)
class Wildcard:
    """A compiled :matches key: the pieces between `*`s, each a sequence of characters and `?` (None)."""

    pieces: tuple[tuple[str | None, ...], ...]
    kinds: tuple[str, ...]  # "*" or "?" in the order they appear: the match variables ${1}...

    @property
    def stars(self) -> int:
        return len(self.pieces) - 1


def compile_wildcard(key: str, comparator: str) -> Wildcard:
    """`*` any run, `?` one character, backslash quotes the next character (RFC 5228 §2.7.1)."""
    key = fold(comparator, key)
    pieces: list[tuple[str | None, ...]] = []
    current: list[str | None] = []
    kinds: list[str] = []
    i = 0
    while i < len(key):
        c = key[i]
        if c == "\\" and i + 1 < len(key):
            current.append(key[i + 1])
            i += 2
            continue
        if c == "*":
            pieces.append(tuple(current))
            current = []
            kinds.append("*")
        elif c == "?":
            current.append(_ANY)
            kinds.append("?")
        else:
            current.append(c)
        i += 1
    pieces.append(tuple(current))
    return Wildcard(tuple(pieces), tuple(kinds))


def _piece_at(piece: tuple[str | None, ...], text: str, at: int) -> bool:
    return all(item is _ANY or text[at + offset] == item for offset, item in enumerate(piece))


def _find_piece(piece: tuple[str | None, ...], text: str, start: int, limit: int, budget: Budget) -> int:
    """The leftmost position p in [start, limit - len(piece)] where the piece matches, or -1."""
    size = len(piece)
    last = limit - size
    if last < start:
        return -1
    if all(item is _ANY for item in piece):
        return start
    if _ANY not in piece:
        budget.charge((limit - start) // C_SCAN_CHARS + 1)
        return text.find("".join(piece), start, limit)  # type: ignore[arg-type]
    # Find the first literal run with str.find, then check the rest of the piece there.
    run_start = next(i for i, item in enumerate(piece) if item is not _ANY)
    run_end = run_start
    while run_end < size and piece[run_end] is not _ANY:
        run_end += 1
    run = "".join(piece[run_start:run_end])  # type: ignore[arg-type]
    p = start
    while p <= last:
        found = text.find(run, p + run_start, last + run_end)
        if found < 0:
            return -1
        p = found - run_start
        budget.charge(size + 1)
        if _piece_at(piece, text, p):
            return p
        p += 1
    return -1


def match_wildcard(pattern: Wildcard, comparator: str, value: str, budget: Budget) -> list[str] | None:
    """None, or the match variables: the whole value, then what each `*` and `?` matched."""
    text = fold(comparator, value)
    pieces = pattern.pieces
    budget.charge(1)
    if len(pieces) == 1:
        piece = pieces[0]
        if len(piece) != len(text) or not _piece_at(piece, text, 0):
            return None
        budget.charge(len(piece))
        return [value, *(value[i] for i, item in enumerate(piece) if item is _ANY)]
    first, last = pieces[0], pieces[-1]
    tail_start = len(text) - len(last)
    if tail_start < len(first) or not _piece_at(first, text, 0) or not _piece_at(last, text, tail_start):
        return None
    budget.charge(len(first) + len(last))
    spans: list[tuple[int, int]] = []  # where each middle piece matched
    pos = len(first)
    for piece in pieces[1:-1]:
        found = _find_piece(piece, text, pos, tail_start, budget)
        if found < 0:
            return None
        spans.append((found, found + len(piece)))
        pos = found + len(piece)
    captures = [value]
    captures.extend(value[i] for i, item in enumerate(first) if item is _ANY)
    gap_start = len(first)
    for (start, end), piece in zip(spans, pieces[1:-1], strict=True):
        captures.append(value[gap_start:start])
        captures.extend(value[start + i] for i, item in enumerate(piece) if item is _ANY)
        gap_start = end
    captures.append(value[gap_start:tail_start])
    captures.extend(value[tail_start + i] for i, item in enumerate(last) if item is _ANY)
    return captures


def quote_wildcard(value: str) -> str:
    """RFC 5229 §4.1 :quotewildcard: `*`, `?` and backslash get a backslash."""
    return "".join("\\" + c if c in "*?\\" else c for c in value)

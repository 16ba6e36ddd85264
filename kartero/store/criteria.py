"""Search criteria the store evaluates (part of the Store interface): a small tree, no protocol syntax.

The IMAP layer translates SEARCH keys into these (sequence numbers already turned into UIDs); a store
evaluates what it can in its database and the rest (body text, arbitrary header fields) on the message
bytes. Text matching is case-insensitive substring matching after decoding (RFC 9051 §6.4.4).
"""

from __future__ import annotations

import bisect
import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


class DateOp(Enum):
    BEFORE = "before"
    ON = "on"
    SINCE = "since"


@dataclass(frozen=True, slots=True)
class All:
    pass


@dataclass(frozen=True, slots=True)
class Flag:
    name: str  # e.g. "\\Seen" or a keyword; compared case-insensitively
    present: bool = True


@dataclass(frozen=True, slots=True)
class Header:
    field: str  # lower-case field name; "" matches any field
    text: str  # "" matches messages that have the field at all


@dataclass(frozen=True, slots=True)
class Body:
    text: str


@dataclass(frozen=True, slots=True)
class Text:
    """Header or body contains the text."""

    text: str


@dataclass(frozen=True, slots=True)
class Size:
    larger_than: int | None = None
    smaller_than: int | None = None


@dataclass(frozen=True, slots=True)
class InternalDate:
    op: DateOp
    date: datetime.date


@dataclass(frozen=True, slots=True)
class SentDate:
    op: DateOp
    date: datetime.date


@dataclass(frozen=True, slots=True)
class Uids:
    ranges: tuple[tuple[int, int], ...]  # inclusive (low, high), sorted, not overlapping

    @classmethod
    def of(cls, uids: Iterable[int]) -> Uids:
        """The ranges covering exactly `uids`."""
        ranges: list[tuple[int, int]] = []
        for uid in sorted(set(uids)):
            if ranges and uid == ranges[-1][1] + 1:
                ranges[-1] = (ranges[-1][0], uid)
            else:
                ranges.append((uid, uid))
        return cls(tuple(ranges))

    def __contains__(self, uid: int) -> bool:
        i = bisect.bisect_right(self.ranges, uid, key=lambda r: r[0]) - 1
        return i >= 0 and self.ranges[i][0] <= uid <= self.ranges[i][1]


@dataclass(frozen=True, slots=True)
class ModSeq:
    at_least: int


@dataclass(frozen=True, slots=True)
class Not:
    criterion: Criterion


@dataclass(frozen=True, slots=True)
class Or:
    left: Criterion
    right: Criterion


@dataclass(frozen=True, slots=True)
class And:
    criteria: tuple[Criterion, ...]


Criterion = All | Flag | Header | Body | Text | Size | InternalDate | SentDate | Uids | ModSeq | Not | Or | And


class SortKey(Enum):
    ARRIVAL = "arrival"
    CC = "cc"
    DATE = "date"
    FROM = "from"
    SIZE = "size"
    SUBJECT = "subject"
    TO = "to"


@dataclass(frozen=True, slots=True)
class Sort:
    key: SortKey
    reverse: bool = False

"""Search criteria the store evaluates (part of the Store interface): a small tree, no protocol syntax.

The IMAP layer translates SEARCH keys into these (sequence numbers already turned into UIDs); a store
evaluates what it can in its database and the rest (body text, arbitrary header fields) on the message
bytes. Text matching is case-insensitive substring matching after decoding (RFC 9051 §6.4.4).
A tree is at most MAX_DEPTH levels deep (checked when it is built), so a store may evaluate it recursively.
"""

from __future__ import annotations

import bisect
import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field
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


# Numbers in criteria are what SQLite stores: signed 64-bit, used from 0 up.
MAX_NUMBER = 2**63 - 1


def _check_number(value: int | None) -> None:
    if value is not None and not 0 <= value <= MAX_NUMBER:
        raise ValueError(f"{value} is outside 0..{MAX_NUMBER}")


@dataclass(frozen=True, slots=True)
class Size:
    larger_than: int | None = None
    smaller_than: int | None = None

    def __post_init__(self) -> None:
        _check_number(self.larger_than)
        _check_number(self.smaller_than)


@dataclass(frozen=True, slots=True)
class InternalDate:
    op: DateOp
    date: datetime.date


@dataclass(frozen=True, slots=True)
class SentDate:
    op: DateOp
    date: datetime.date


@dataclass(frozen=True, slots=True)
class SavedDate:
    """The day a message came into its mailbox (RFC 8514); the internal date where that is not known."""

    op: DateOp
    date: datetime.date


@dataclass(frozen=True, slots=True)
class Blob:
    """The messages whose stored body is this one (SEARCH EMAILID, RFC 8474)."""

    blob_id: str


@dataclass(frozen=True, slots=True)
class Uids:
    ranges: tuple[tuple[int, int], ...]  # inclusive (low, high), sorted, not overlapping

    def __post_init__(self) -> None:
        previous = -1
        for low, high in self.ranges:
            if not previous < low <= high <= MAX_NUMBER:
                raise ValueError("UID ranges must be sorted, apart, and within 0..MAX_NUMBER")
            previous = high

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

    def __post_init__(self) -> None:
        _check_number(self.at_least)


# Criteria nest at most this deep (NOT, OR and AND levels), so that evaluating one never recurses
# further; the IMAP parser allows 100 levels of search keys.
MAX_DEPTH = 128


def depth_of(criterion: Criterion) -> int:
    """Levels of the tree: 1 for a leaf."""
    return criterion.depth if isinstance(criterion, Not | Or | And) else 1


def _check_depth(node: Not | Or | And, children: Iterable[Criterion]) -> None:
    levels = 1 + max((depth_of(child) for child in children), default=0)
    if levels > MAX_DEPTH:
        raise ValueError(f"criteria nested deeper than {MAX_DEPTH} levels")
    object.__setattr__(node, "depth", levels)


@dataclass(frozen=True, slots=True)
class Not:
    criterion: Criterion
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_depth(self, (self.criterion,))


@dataclass(frozen=True, slots=True)
class Or:
    left: Criterion
    right: Criterion
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_depth(self, (self.left, self.right))


@dataclass(frozen=True, slots=True)
class And:
    criteria: tuple[Criterion, ...]
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_depth(self, self.criteria)


Criterion = (
    All | Flag | Header | Body | Text | Size | InternalDate | SentDate | SavedDate | Blob | Uids | ModSeq | Not | Or
    | And
)


class SortKey(Enum):
    ARRIVAL = "arrival"
    CC = "cc"
    DATE = "date"
    FROM = "from"
    SIZE = "size"
    SUBJECT = "subject"
    TO = "to"
    DISPLAYFROM = "displayfrom"  # RFC 5957: the display name of the first From mailbox, else its address
    DISPLAYTO = "displayto"


@dataclass(frozen=True, slots=True)
class Sort:
    key: SortKey
    reverse: bool = False


@dataclass(frozen=True, slots=True)
class ThreadFields:
    """What THREAD (RFC 5256) needs of one message: from the index, and the Message-ID, In-Reply-To and
    References fields from its header block (as written, "" when absent)."""

    uid: int
    sent_date: int  # the Date: field as UTC seconds, else the internal date (RFC 5256 §2.2)
    subject: str  # decoded, case-folded
    base_subject: str  # RFC 5256 §2.1, upper case
    message_id: str
    in_reply_to: str
    references: str

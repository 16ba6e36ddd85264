"""SEARCH, SORT and THREAD evaluated in Python over a backend's candidate rows: shared by every store.

A backend puts what its database can decide into its own query (the SQLite store: `sqlite_search.py`) and
hands the rows that query selected to this module as `Candidate`s: the message row, the index fields kept
at delivery (`SearchFields`) and a way to open the message's bytes. What is left of the criterion (bodies,
arbitrary header fields, what did not fit in the query) is checked here, and SORT keys and THREAD fields
are read here, so a PostgreSQL backend gives the same answers for the same messages.

Work stays bounded: a candidate's bytes are read in bounded windows and let go once it is decided, each
text is decoded once per message however many keys ask, and every BODY/TEXT string of a search is found
in one pass over the decoded text. Criteria are at most c.MAX_DEPTH deep, so `matches` may recurse.
"""

from __future__ import annotations

import datetime
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kartero.mime.addresses import parse_address_list
from kartero.mime.headers import MessageData, decode_words, find_body_start, iter_body_text, parse_header_block
from kartero.mime.imapform import MAX_LIST_ADDRESSES
from kartero.mime.parttree import PartNode, decode_parts
from kartero.mime.structure import parse_content_type
from kartero.store import criteria as c
from kartero.store.interface import MessageRow

# Of a message's header block, SEARCH reads at most this much (a header with no end is the whole message).
SEARCH_HEADER_BYTES = 1 << 20


def has_flag(flags: frozenset[str], name: str) -> bool:
    """Flags and keywords compare case-insensitively (RFC 9051 §2.3.2)."""
    lowered = name.lower()
    return any(f.lower() == lowered for f in flags)


def operands(criterion: c.Or | c.And) -> list[c.Criterion]:
    """The operands of a chain of ORs (or of ANDs), flattened: `(a OR b) OR c` is `a OR b OR c`."""
    kind = type(criterion)
    found: list[c.Criterion] = []
    pending: list[c.Criterion] = [criterion]
    while pending:
        node = pending.pop()
        if isinstance(node, c.Or) and kind is c.Or:
            pending += (node.right, node.left)
        elif isinstance(node, c.And) and kind is c.And:
            pending += reversed(node.criteria)
        else:
            found.append(node)
    return found


class Opened(Protocol):
    """A handle on a message's bytes (`MailStore.open_message`)."""

    def view(self) -> MessageData: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SearchFields:
    """The index fields of one message that SEARCH, SORT and THREAD read (kartero.mime.index, kept at
    delivery): header values decoded and case-folded, sort keys, the Date and the part tree."""

    sent_date: int | None  # unix seconds of Date:, None when it has none that parses
    sent_day: int | None  # the day written in Date: (00:00 UTC); None: none, or stored before it was kept
    subject: str
    from_: str
    to: str
    cc: str
    bcc: str
    sort_subject: str
    sort_from: str
    sort_to: str
    sort_cc: str
    parts: str  # the part tree as stored (kartero.mime.parttree.encode_parts)

    def header(self, name: str) -> str:
        """The stored decoded value of subject, from, to, cc or bcc."""
        return self.from_ if name == "from" else str(getattr(self, name))


@dataclass(slots=True)
class Candidate:
    """One message a backend's query selected, with lazy access to its bytes (read in bounded windows,
    never whole) and to what is made from them, each made at most once however many keys ask (a search
    may hold up to a thousand keys). `release()` lets the bytes go once the candidate is decided."""

    row: MessageRow
    fields: SearchFields
    opener: Callable[[str], Opened]
    body_needles: frozenset[str] = frozenset()  # every BODY/TEXT string of the search, case-folded
    display: dict[str, str] = field(default_factory=dict)  # SORT DISPLAYFROM/DISPLAYTO keys, once read
    _opened: Opened | None = None
    _data: MessageData | None = None
    _tree: PartNode | None = None
    _header_fields: list[tuple[str, str]] | None = None
    _header_text: str | None = None
    _body_found: frozenset[str] | None = None

    @property
    def tree(self) -> PartNode:
        if self._tree is None:
            self._tree = decode_parts(self.fields.parts)
        return self._tree

    @property
    def data(self) -> MessageData:
        if self._data is None:
            self._opened = self.opener(self.row.blob_id)
            self._data = self._opened.view()
        return self._data

    def release(self) -> None:
        if self._opened is not None:
            self._opened.close()
        self._opened = self._data = None
        self._header_fields = self._header_text = self._body_found = None

    @property
    def header_fields(self) -> list[tuple[str, str]]:
        """The header fields: lower-case name, case-folded decoded value."""
        if self._header_fields is None:
            block = parse_header_block(_header_block(self))
            self._header_fields = [(k, decode_words(v).casefold()) for k, v in block.fields]
        return self._header_fields

    @property
    def header_text(self) -> str:
        """The decoded header block, case-folded."""
        if self._header_text is None:
            self._header_text = decode_words(_header_block(self)).casefold()
        return self._header_text

    def body_contains(self, needle: str) -> bool:
        """Whether the decoded text parts hold `needle` (case-folded, one of body_needles). The text is
        never held whole: one pass over it, in pieces, finds every needle of the search at once."""
        if needle not in self.body_needles:  # a caller that did not say in advance: one more pass
            self.body_needles |= {needle}
            self._body_found = None
        if self._body_found is None:
            self._body_found = _find_in_body(self, self.body_needles)
        return needle in self._body_found


def matching(candidates: Iterable[Candidate], rest: c.Criterion | None) -> Iterator[Candidate]:
    """The candidates that meet `rest` too (all when None); each lets its bytes go once decided, so a
    search holds one message's worth of windows at a time, not the mailbox."""
    needles = body_needles(rest) if rest is not None else frozenset()
    for candidate in candidates:
        candidate.body_needles = needles
        try:
            if rest is None or matches(rest, candidate):
                yield candidate
        finally:
            candidate.release()


def sorted_uids(candidates: Iterable[Candidate], keys: Sequence[c.Sort], rest: c.Criterion | None) -> list[int]:
    """RFC 5256 SORT (and RFC 5957 DISPLAYFROM/DISPLAYTO): the UIDs of the candidates that meet `rest`, in
    the order of `keys`, ties in the candidates' order (ascending UID)."""
    display = [name for key, name in _DISPLAY_FIELDS.items() if any(k.key is key for k in keys)]
    found: list[Candidate] = []
    for candidate in matching(candidates, rest):
        if display:  # read from the header while the candidate's bytes are open
            header = parse_header_block(_header_block(candidate))
            for name in display:
                candidate.display[name] = _display_name(header.get(name))
        found.append(candidate)
    for key in reversed(keys):  # stable sorts, last key first
        found.sort(key=_sort_key(key.key), reverse=key.reverse)
    return [candidate.row.uid for candidate in found]


def thread_fields(candidates: Iterable[Candidate], rest: c.Criterion | None) -> list[c.ThreadFields]:
    """What THREAD (RFC 5256) needs of the candidates that meet `rest`, in their order (each header
    read in bounded windows)."""
    found: list[c.ThreadFields] = []
    for candidate in matching(candidates, rest):
        header = parse_header_block(_header_block(candidate))
        message_id, in_reply_to, references = ((header.get(n) or b"").decode("latin-1") for n in _THREAD_FIELDS)
        row, fields = candidate.row, candidate.fields
        sent_date = row.internal_date if fields.sent_date is None else fields.sent_date
        found.append(c.ThreadFields(row.uid, sent_date, fields.subject, fields.sort_subject, message_id,
                                    in_reply_to, references))  # fmt: skip
    return found


def _utc_date(seconds: int) -> datetime.date:
    try:
        return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date()
    except (OverflowError, OSError, ValueError):  # beyond datetime's years 1 to 9999
        return datetime.date.min if seconds < 0 else datetime.date.max


def _compare_date(value: datetime.date, op: c.DateOp, date: datetime.date) -> bool:
    if op is c.DateOp.BEFORE:
        return value < date
    if op is c.DateOp.ON:
        return value == date
    return value >= date


def _header_block(candidate: Candidate) -> bytes:
    return candidate.data[: min(candidate.tree.body_start, SEARCH_HEADER_BYTES)]


def _headermatches(candidate: Candidate, field: str, text: str) -> bool:
    if field in ("subject", "from", "to", "cc", "bcc"):
        value = candidate.fields.header(field)
        if text:
            return text.casefold() in value.casefold()
        return bool(value) or any(k == field for k, _ in candidate.header_fields)
    values = [v for k, v in candidate.header_fields if not field or k == field]
    if not text:
        return bool(values)
    needle = text.casefold()
    return any(needle in v for v in values)


def _text_pieces(candidate: Candidate) -> Iterator[str]:
    """The decoded text parts of a message (and the headers of embedded messages), in bounded pieces."""
    data = candidate.data
    pending = [candidate.tree]  # depth-first, in order, without recursion
    while pending:
        node = pending.pop()
        if node.children:
            pending += reversed(node.children)
            continue
        embedded = node.message
        if embedded is not None:
            header_end, _ = find_body_start(data, embedded.header_start, embedded.end)
            start = embedded.header_start
            yield decode_words(data[start : min(header_end, start + SEARCH_HEADER_BYTES)])
            yield "\n"
            pending.append(embedded)
            continue
        header_end = min(node.body_start, node.header_start + SEARCH_HEADER_BYTES)
        header = parse_header_block(data[node.header_start : header_end])
        content_type = parse_content_type(header.get("content-type"))
        if content_type.type.lower() in (b"text", b"message"):
            charset = (content_type.param(b"charset") or b"us-ascii").decode("latin-1")
            yield from iter_body_text(data, node.encoding, charset, node.body_start, node.end)
            yield "\n"


def _find_in_body(candidate: Candidate, needles: frozenset[str]) -> frozenset[str]:
    """Which of `needles` (case-folded) the text parts hold, in one pass; a needle may span two pieces."""
    found: set[str] = set()
    left = set(needles)
    keep = max((len(n) for n in needles), default=1) - 1
    tail = ""
    for piece in _text_pieces(candidate):
        window = tail + piece.casefold()
        for needle in list(left):
            if needle in window:
                found.add(needle)
                left.discard(needle)
        if not left:
            break
        tail = window[-keep:] if keep else ""
    return frozenset(found)


def body_needles(criterion: c.Criterion) -> frozenset[str]:
    """The case-folded strings of every BODY and TEXT key (a criterion is at most c.MAX_DEPTH deep)."""
    needles: set[str] = set()
    pending = [criterion]
    while pending:
        match pending.pop():
            case c.Body(text=text) | c.Text(text=text):
                needles.add(text.casefold())
            case c.Not(criterion=inner):
                pending.append(inner)
            case c.Or(left=left, right=right):
                pending += [left, right]
            case c.And(criteria=items):
                pending += items
    return frozenset(needles)


def matches(criterion: c.Criterion, candidate: Candidate) -> bool:
    """Whether the candidate meets the criterion; recursion is bounded by c.MAX_DEPTH."""
    row = candidate.row
    match criterion:
        case c.All():
            return True
        case c.Flag(name=name, present=present):
            return has_flag(row.flags, name) == present
        case c.Header(field=field, text=text):
            return _headermatches(candidate, field, text)
        case c.Body(text=text):
            return candidate.body_contains(text.casefold())
        case c.Text(text=text):
            needle = text.casefold()
            return needle in candidate.header_text or candidate.body_contains(needle)
        case c.Size(larger_than=larger, smaller_than=smaller):
            return (larger is None or row.size > larger) and (smaller is None or row.size < smaller)
        case c.InternalDate(op=op, date=date):
            return _compare_date(_utc_date(row.internal_date), op, date)
        case c.SentDate(op=op, date=date):  # the day written in Date:, else its instant's, else the internal date
            fields = candidate.fields
            sent = next(d for d in (fields.sent_day, fields.sent_date, row.internal_date) if d is not None)
            return _compare_date(_utc_date(sent), op, date)
        case c.SavedDate(op=op, date=date):
            saved = row.saved_at if row.saved_at is not None else row.internal_date
            return _compare_date(_utc_date(saved), op, date)
        case c.Blob(blob_id=blob_id):
            return row.blob_id == blob_id
        case c.Uids():
            return row.uid in criterion
        case c.ModSeq(at_least=at_least):
            return row.modseq >= at_least
        case c.Not(criterion=inner):
            return not matches(inner, candidate)
        case c.Or(left=left, right=right):
            return matches(left, candidate) or matches(right, candidate)
        case c.And(criteria=items):
            return all(matches(item, candidate) for item in items)
    raise TypeError(f"unknown criterion {criterion!r}")


def _sort_key(key: c.SortKey) -> Callable[[Candidate], Any]:
    match key:
        case c.SortKey.ARRIVAL:
            return lambda s: s.row.internal_date
        case c.SortKey.DATE:
            return lambda s: s.fields.sent_date if s.fields.sent_date is not None else s.row.internal_date
        case c.SortKey.SIZE:
            return lambda s: s.row.size
        case c.SortKey.SUBJECT:
            return lambda s: s.fields.sort_subject
        case c.SortKey.FROM:
            return lambda s: s.fields.sort_from
        case c.SortKey.TO:
            return lambda s: s.fields.sort_to
        case c.SortKey.CC:
            return lambda s: s.fields.sort_cc
        case c.SortKey.DISPLAYFROM:
            return lambda s: s.display["from"]
        case c.SortKey.DISPLAYTO:
            return lambda s: s.display["to"]
    raise TypeError(f"unknown sort key {key!r}")


_DISPLAY_FIELDS = {c.SortKey.DISPLAYFROM: "from", c.SortKey.DISPLAYTO: "to"}
_THREAD_FIELDS = ("message-id", "in-reply-to", "references")


def _display_name(value: bytes | None) -> str:
    """RFC 5957 §2: the display name of the first mailbox of an address list, RFC 2047-decoded, or its
    addr-spec when it has none; "" without a mailbox. As the i;unicode-casemap collation compares it
    (RFC 5051 §2: titlecase, then NFKD; upper case stands for titlecase)."""
    if value is None:
        return ""
    for address in parse_address_list(value, MAX_LIST_ADDRESSES):
        if address.host is None or address.mailbox is None:
            continue  # the start or end of a group
        name = " ".join(decode_words(address.name).split()) if address.name else ""
        if not name:
            name = decode_words(address.mailbox + (b"@" + address.host if address.host else b""))
        return unicodedata.normalize("NFKD", name.upper())
    return ""

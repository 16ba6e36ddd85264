"""Typed IMAP commands and the grammar of their arguments (RFC 9051 §6, §9; RFC 7162; RFC 5256; ...).

`parse_command` turns the tokens of one command into a frozen dataclass, or raises ParseError with the
reason a client gets after `BAD`. Mailbox names are decoded here (modified UTF-7, or UTF-8 once the
client enabled UTF8=ACCEPT), so handlers only ever see Unicode names.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from kartero.imap import metadata, mutf7
from kartero.imap.tokens import MAX_NESTING, Atom, ParseError, PList, String, Token, upper_ascii

STAR = -1  # "*" in a sequence set: the largest number in use

# RFC 9051 §9: number and nz-number (sequence numbers, UIDs, UIDVALIDITY, section parts) are unsigned
# 32-bit; number64 (LARGER, SMALLER, partial offsets) and RFC 7162 §7 mod-sequence-value are 63-bit, which
# is also what SQLite can store. Larger values are a BAD, never an overflow further down.
MAX_NUMBER = 2**32 - 1
MAX_NUMBER64 = 2**63 - 1
# Mailbox names: at most this many octets (UTF-8) and hierarchy levels. Far above what a client shows, and
# they bound what LIST matching, RENAME and the store do per name.
MAX_MAILBOX_NAME = 1000
MAX_MAILBOX_LEVELS = 100
# LIST/LSUB: patterns per command (RFC 5258 allows a list of them).
MAX_LIST_PATTERNS = 100
# SEARCH/SORT: keys per command, counting NOT, OR and parenthesised groups. Each key is evaluated for every
# message of the mailbox.
MAX_SEARCH_KEYS = 1000
# NOTIFY: mailbox names named by SUBTREE and MAILBOXES together. Each change in the account is matched
# against them.
MAX_NOTIFY_MAILBOXES = 1000
# NOTIFY: event groups of one NOTIFY SET. Each change is matched against every group.
MAX_NOTIFY_GROUPS = 100
# CATENATE (RFC 4469): octets of one URL part. An IMAP URL of a message part is a mailbox name, a few
# numbers and a section; this bounds what the URL parser reads and what BADURL echoes.
MAX_URL = 2048
# CATENATE: URL parts of one message. Each is looked up and its section computed when the command runs.
MAX_CATENATE_URLS = 100


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """Ranges as written (STAR for `*`), or the saved search result `$` (RFC 5182)."""

    ranges: tuple[tuple[int, int], ...] = ()
    is_saved: bool = False


@dataclass(frozen=True, slots=True)
class SeqKey:
    """A search key naming messages by sequence numbers or (is_uid) UIDs; resolved against the view."""

    numbers: SequenceSet
    is_uid: bool


@dataclass(frozen=True, slots=True)
class SAnd:
    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class SOr:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class SNot:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class SKey:
    """A leaf search key and its arguments, already typed:
    ALL; NONE; RECENT, NEW and OLD (IMAP4rev1's \\Recent, RFC 3501 §6.4.4); FLAG (name, present);
    HEADER (field, text) with field lower-cased; BODY (text); TEXT (text); LARGER (n); SMALLER (n);
    BEFORE/ON/SINCE (date) on the internal date; SENTBEFORE/SENTON/SENTSINCE (date);
    SAVEDBEFORE/SAVEDON/SAVEDSINCE (date); MODSEQ (n); EMAILID/THREADID (object id).
    """

    name: str
    args: tuple[object, ...] = ()


SearchKey = SKey | SeqKey | SAnd | SOr | SNot


@dataclass(frozen=True, slots=True)
class Section:
    """BODY[...]/BINARY[...]: a part path, then HEADER, HEADER.FIELDS(.NOT), TEXT or MIME."""

    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()

    def spec(self) -> str:
        out = ".".join(str(p) for p in self.part)
        if self.text:
            out = f"{out}.{self.text}" if out else self.text
        if self.fields:
            out += " (" + " ".join(self.fields) + ")"
        return out


@dataclass(frozen=True, slots=True)
class BodyItem:
    kind: str  # "BODY", "BINARY" or "BINARY.SIZE"
    section: Section
    peek: bool = False
    partial: tuple[int, int] | None = None  # (origin, count)

    def response_name(self) -> str:
        name = f"{self.kind}[{self.section.spec()}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name


SIMPLE_FETCH = frozenset(
    {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY", "UID", "MODSEQ",
     "RFC822", "RFC822.HEADER", "RFC822.TEXT", "SAVEDATE", "EMAILID", "THREADID", "PREVIEW"}
)  # fmt: skip
PREVIEW_LAZY = "PREVIEW (LAZY)"  # RFC 8970 §3.1: PREVIEW with its only modifier
FetchItem = str | BodyItem


# -- commands -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Simple:
    """A command without arguments: CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE UNSELECT EXPUNGE IDLE
    NAMESPACE."""

    name: str


@dataclass(frozen=True, slots=True)
class Login:
    user: bytes
    password: bytes


@dataclass(frozen=True, slots=True)
class Authenticate:
    mechanism: str
    initial: bytes | None  # SASL-IR (RFC 4959); b"" for "="


@dataclass(frozen=True, slots=True)
class Enable:
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QResync:
    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class Select:
    mailbox: str
    readonly: bool
    condstore: bool = False
    qresync: QResync | None = None


@dataclass(frozen=True, slots=True)
class MailboxCommand:
    """CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE."""

    name: str
    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class ListCommand:
    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()  # SUBSCRIBED, REMOTE, RECURSIVEMATCH, SPECIAL-USE
    returns: frozenset[str] = frozenset()  # SUBSCRIBED, CHILDREN, SPECIAL-USE, STATUS
    status_items: tuple[str, ...] = ()
    is_lsub: bool = False
    is_extended: bool = False
    metadata: MetadataRequest | None = None  # RETURN (METADATA (...)), RFC 9590


@dataclass(frozen=True, slots=True)
class MetadataRequest:
    """The entries RETURN (METADATA (...)) asks of each listed mailbox (RFC 9590), as GETMETADATA would."""

    entries: tuple[str, ...]
    max_size: int | None = None
    depth: int = 0


@dataclass(frozen=True, slots=True)
class Status:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CatPart:
    """One part of a CATENATE message (RFC 4469 §3): TEXT octets, or the IMAP URL of octets to copy."""

    text: bytes = b""
    url: bytes | None = None
    literal: int = -1  # the TEXT literal's index in the command
    spooled: int = 0  # the TEXT left the core in AppendData pieces: `text` is empty, this its size


@dataclass(frozen=True, slots=True)
class AppendMessage:
    flags: frozenset[str]
    date: datetime.datetime | None
    data: bytes
    spooled: int = 0  # a large message left the core in AppendData pieces: `data` is empty, this its size
    literal: int = -1  # the message literal's index in the command
    parts: tuple[CatPart, ...] = ()  # CATENATE: the message is these parts one after the other (`data` empty)


@dataclass(frozen=True, slots=True)
class Append:
    """APPEND with one message, or several (MULTIAPPEND, RFC 3502: stored all or none)."""

    mailbox: str
    messages: tuple[AppendMessage, ...]

    @property
    def spooled(self) -> int:
        """Octets of the messages (and CATENATE TEXT parts) that left the core in AppendData pieces, one
        after the other."""
        return sum(message.spooled + sum(part.spooled for part in message.parts) for message in self.messages)


@dataclass(frozen=True, slots=True)
class Search:
    is_uid: bool
    key: SearchKey
    # None: a plain SEARCH; else ESEARCH with these of MIN MAX ALL COUNT SAVE (none: ALL, unless PARTIAL)
    returns: tuple[str, ...] | None
    charset: str | None = None
    partial: tuple[int, int] | None = None  # RFC 5267 §4.4 PARTIAL a:b as sent (positions from 1, either order)
    update: bool = False  # RFC 5267 §4.3 UPDATE


@dataclass(frozen=True, slots=True)
class SortCommand:
    is_uid: bool
    keys: tuple[tuple[str, bool], ...]  # (a SORT_KEYS name, reverse)
    charset: str
    key: SearchKey
    returns: tuple[str, ...] | None = None  # RFC 5267 ESORT: as for Search
    partial: tuple[int, int] | None = None
    update: bool = False


@dataclass(frozen=True, slots=True)
class CancelUpdate:
    """RFC 5267 §4.3.5: stop the updates of the searches with these tags."""

    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ThreadCommand:
    is_uid: bool
    algorithm: str  # a THREAD_ALGORITHMS name
    charset: str
    key: SearchKey


@dataclass(frozen=True, slots=True)
class Fetch:
    is_uid: bool
    numbers: SequenceSet
    items: tuple[FetchItem, ...]
    changed_since: int | None = None
    vanished: bool = False


@dataclass(frozen=True, slots=True)
class StoreCommand:
    is_uid: bool
    numbers: SequenceSet
    op: str  # "+" add, "-" remove, "" replace
    silent: bool
    flags: frozenset[str]
    unchanged_since: int | None = None


@dataclass(frozen=True, slots=True)
class CopyMove:
    name: str  # COPY or MOVE
    is_uid: bool
    numbers: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class UidExpunge:
    numbers: SequenceSet


@dataclass(frozen=True, slots=True)
class NotifyGroup:
    """One event group of NOTIFY SET (RFC 5465 §3.1): which mailboxes, which events (none: NONE)."""

    filter: str  # SELECTED, SELECTED-DELAYED, INBOXES, PERSONAL, SUBSCRIBED, SUBTREE or MAILBOXES
    mailboxes: frozenset[str]  # for SUBTREE and MAILBOXES (a set: each change in the account is matched)
    events: frozenset[str]  # event names as RFC 5465 §8 spells them (MessageNew, FlagChange, ...)
    fetch_items: tuple[FetchItem, ...] = ()  # MessageNew (fetch-att ...)


@dataclass(frozen=True, slots=True)
class Notify:
    groups: tuple[NotifyGroup, ...]  # () for NOTIFY NONE
    status: bool = False  # NOTIFY SET STATUS


@dataclass(frozen=True, slots=True)
class Id:
    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class Compress:
    mechanism: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A well-formed command naming a mailbox no mailbox can be: a name too long or too deep, or not valid
    modified UTF-7. It is answered NO with `text` and `code` (not BAD: the syntax is right), by the handler
    rather than the core because a refused SELECT/EXAMINE still leaves the selected state (RFC 9051
    §6.3.2: "if the SELECT fails, no mailbox is selected")."""

    name: str  # the command: SELECT, CREATE, COPY, ...
    text: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class GetMetadata:
    """GETMETADATA (RFC 5464 §4.2); mailbox "" names the server."""

    mailbox: str
    entries: tuple[str, ...]  # lower case, checked by metadata.parse_entry
    max_size: int | None
    depth: int  # 0, 1 or metadata.DEPTH_INFINITY


@dataclass(frozen=True, slots=True)
class SetMetadata:
    """SETMETADATA (RFC 5464 §4.3): values to set, None to remove; mailbox "" names the server."""

    mailbox: str
    entries: tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class QuotaCommand:
    """GETQUOTA root, GETQUOTAROOT mailbox and SETQUOTA root (resource limit ...) (RFC 9208 §4.2-4.3)."""

    name: str
    argument: str  # the quota root (GETQUOTA, SETQUOTA) or the mailbox (GETQUOTAROOT)
    limits: tuple[tuple[str, int], ...] = ()  # SETQUOTA's resource names (upper case) and limits


Command = (
    Simple | Login | Authenticate | Enable | Select | MailboxCommand | Rename | ListCommand | Status | Append
    | Search | SortCommand | ThreadCommand | Fetch | StoreCommand | CopyMove | UidExpunge | Id | Compress | Refused
    | CancelUpdate
    | Notify
    | GetMetadata | SetMetadata
    | QuotaCommand
)  # fmt: skip


@dataclass
class _Args:
    """A cursor over a command's argument tokens."""

    tokens: list[Token]
    utf8: bool
    pos: int = 0
    name: str = field(default="")
    refusal: Refused | None = None  # the first mailbox name that cannot be (the command then gets NO)

    def more(self) -> bool:
        return self.pos < len(self.tokens)

    def take(self, word: str) -> bool:
        """Whether the next token is the atom `word` (in any case); if it is, it is consumed."""
        token = self.peek()
        if isinstance(token, Atom) and upper_ascii(token.value) == word:
            self.pos += 1
            return True
        return False

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self, what: str) -> Token:
        if self.pos >= len(self.tokens):
            raise ParseError(f"{self.name}: missing {what}")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def end(self) -> None:
        if self.pos < len(self.tokens):
            raise ParseError(f"{self.name}: unexpected arguments")

    def atom(self, what: str) -> str:
        token = self.next(what)
        if not isinstance(token, Atom):
            raise ParseError(f"{self.name}: {what} must be an atom")
        return token.value

    def astring(self, what: str) -> bytes:
        token = self.next(what)
        if isinstance(token, String):
            return token.value
        if isinstance(token, Atom):
            return token.value.encode("utf-8")
        raise ParseError(f"{self.name}: {what} must be a string")

    def nstring(self, what: str) -> bytes | None:
        token = self.peek()
        if isinstance(token, Atom) and upper_ascii(token.value) == "NIL":
            self.pos += 1
            return None
        return self.astring(what)

    def plist(self, what: str) -> tuple[Token, ...]:
        token = self.next(what)
        if not isinstance(token, PList):
            raise ParseError(f"{self.name}: {what} must be a parenthesised list")
        return token.items

    def number(self, what: str, maximum: int = MAX_NUMBER) -> int:
        return parse_number(self.atom(what), what, maximum)

    def mailbox(self) -> str:
        """A mailbox name; one no mailbox can have is noted in `refusal` (the command is answered NO once
        its syntax has been checked in full) and stands as ""."""
        try:
            return decode_mailbox(self.astring("mailbox name"), utf8=self.utf8)
        except ImpossibleMailboxName as exc:
            if self.refusal is None:
                self.refusal = Refused(self.name, str(exc), "CANNOT")
            return ""


class ImpossibleMailboxName(ParseError):
    """A syntactically valid name no mailbox can have: answered `NO [CANNOT]` (RFC 9051 §7.1: the operation
    can never succeed) whatever the command, and matching nothing in LIST."""


class MailboxNameTooLong(ImpossibleMailboxName):
    """A mailbox name beyond MAX_MAILBOX_NAME or MAX_MAILBOX_LEVELS."""

    def __init__(self) -> None:
        super().__init__(f"Mailbox name too long ({MAX_MAILBOX_NAME} octets and {MAX_MAILBOX_LEVELS} levels at most)")


def parse_number(text: str, what: str = "number", maximum: int = MAX_NUMBER) -> int:
    """A decimal number from 0 to `maximum`; raises ParseError."""
    if not text.isascii() or not text.isdigit():
        raise ParseError(f"{what} must be a number")
    if len(text) > 20 or int(text) > maximum:
        raise ParseError(f"{what} too large ({maximum} at most)")
    return int(text)


def _decode_name(raw: bytes, *, utf8: bool) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("mailbox name is not valid UTF-8") from None
    if not utf8:
        try:
            text = mutf7.decode(text)
        except mutf7.MUTF7Error:
            raise ImpossibleMailboxName("Mailbox name is not valid mUTF-7") from None  # Dovecot's words
    if upper_ascii(text[:5]) == "INBOX" and text[5:6] in ("", "/"):  # ASCII case only (upper_ascii)
        text = "INBOX" + text[5:]
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in text):
        raise ImpossibleMailboxName("Mailbox name holds control characters")
    return text


def _is_too_long(name: str) -> bool:
    return len(name.encode("utf-8")) > MAX_MAILBOX_NAME or name.count("/") >= MAX_MAILBOX_LEVELS


def decode_mailbox(raw: bytes, *, utf8: bool) -> str:
    """A mailbox name from the wire; INBOX in any case is INBOX (RFC 9051 §5.1). Raises ParseError, and
    ImpossibleMailboxName for a name beyond the limits or not valid modified UTF-7."""
    if len(raw) > 8 * MAX_MAILBOX_NAME:  # too long in any encoding: not worth decoding
        raise MailboxNameTooLong
    text = _decode_name(raw, utf8=utf8)
    if _is_too_long(text):
        raise MailboxNameTooLong
    return text


def parse_sequence_set(text: str) -> SequenceSet:
    """RFC 9051 sequence-set (numbers 1 to MAX_NUMBER, or `*`), or `$`. Raises ParseError."""
    if text == "$":
        return SequenceSet(is_saved=True)
    ranges: list[tuple[int, int]] = []
    for piece in text.split(","):
        low, colon, high = piece.partition(":")
        first = _sequence_number(low, text)
        last = _sequence_number(high, text) if colon else first
        ranges.append((first, last))
    return SequenceSet(tuple(ranges))


def _sequence_number(text: str, whole: str) -> int:
    if text == "*":
        return STAR
    if not text.isascii() or not text.isdigit():
        raise ParseError(f"bad sequence set {whole[:40]!r}")
    number = parse_number(text, "message number")
    if number == 0:
        raise ParseError("0 is not a valid message number")
    return number


_MONTHS = {m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                        "dec"], start=1)}  # fmt: skip
_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})", re.ASCII)
_DATE_TIME = re.compile(r"( \d|\d{2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})", re.ASCII)


def parse_date(text: str) -> datetime.date:
    m = _DATE.fullmatch(text)
    month = _MONTHS.get(m.group(2).lower()) if m else None
    if m is None or month is None:
        raise ParseError(f"bad date {text[:40]!r} (expected e.g. 1-Feb-2026)")
    try:
        return datetime.date(int(m.group(3)), month, int(m.group(1)))
    except ValueError:
        raise ParseError(f"bad date {text!r}") from None


# APPEND dates are kept as Unix seconds and shown again in any time zone: years outside these bounds could
# not be (Python's datetime ends at 9999).
_FIRST_YEAR, _LAST_YEAR = 1900, 9998


def parse_date_time(text: str) -> datetime.datetime:
    """RFC 9051 date-time: "26-Nov-2026 10:00:00 +0100", between the years 1900 and 9998."""
    m = _DATE_TIME.fullmatch(text)
    month = _MONTHS.get(m.group(2).lower()) if m else None
    if m is None or month is None:
        raise ParseError(f"bad date-time {text[:40]!r}")
    hours, minutes = int(m.group(8)), int(m.group(9))
    if hours > 23 or minutes > 59:
        raise ParseError(f"bad time zone in {text!r}")
    offset = datetime.timedelta(hours=hours, minutes=minutes)
    tz = datetime.timezone(offset if m.group(7) == "+" else -offset)
    year = int(m.group(3))
    if not _FIRST_YEAR <= year <= _LAST_YEAR:
        raise ParseError(f"date-time out of range in {text!r}")
    try:
        return datetime.datetime(year, month, int(m.group(1)), int(m.group(4)), int(m.group(5)), int(m.group(6)),
                                 tzinfo=tz)  # fmt: skip
    except ValueError:
        raise ParseError(f"bad date-time {text!r}") from None


def _flag_list(items: tuple[Token, ...], what: str = "flag") -> frozenset[str]:
    flags: set[str] = set()
    for token in items:
        if not isinstance(token, Atom) or not token.value or token.value == "\\*" or "[" in token.value:
            raise ParseError(f"bad {what}")
        value = token.value
        if value.startswith("\\"):
            canonical = _SYSTEM_FLAGS.get(value.lower())
            if canonical is None:
                raise ParseError(f"unknown system flag {value}")
            value = canonical
        flags.add(value)
    return frozenset(flags)


_SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}


# -- per-command grammars ------------------------------------------------------------------------------


def _login(a: _Args) -> Command:
    user, password = a.astring("user name"), a.astring("password")
    a.end()
    return Login(user, password)


def _authenticate(a: _Args) -> Command:
    mechanism = upper_ascii(a.atom("mechanism"))
    initial: bytes | None = None
    if a.more():
        token = a.next("initial response")
        if isinstance(token, Atom):
            initial = b"" if token.value == "=" else token.value.encode("ascii", "replace")
        elif isinstance(token, String):
            initial = token.value
        else:
            raise ParseError("bad initial response")
    a.end()
    return Authenticate(mechanism, initial)


def _enable(a: _Args) -> Command:
    caps = []
    while a.more():
        caps.append(upper_ascii(a.atom("capability")))
    if not caps:
        raise ParseError("ENABLE needs at least one capability")
    return Enable(tuple(caps))


def _select(a: _Args) -> Command:
    mailbox = a.mailbox()
    condstore = False
    qresync: QResync | None = None
    if a.more():
        params = list(a.plist("select parameters"))
        i = 0
        while i < len(params):
            token = params[i]
            if not isinstance(token, Atom):
                raise ParseError("bad select parameter")
            name = upper_ascii(token.value)
            if name == "CONDSTORE":
                condstore = True
            elif name == "QRESYNC" and i + 1 < len(params) and isinstance(params[i + 1], PList):
                qresync = _qresync(params[i + 1].items)  # type: ignore[union-attr]
                i += 1
            else:
                raise ParseError(f"unknown select parameter {token.value}")
            i += 1
    a.end()
    return Select(mailbox, readonly=a.name == "EXAMINE", condstore=condstore, qresync=qresync)


def _qresync(items: tuple[Token, ...]) -> QResync:
    if len(items) < 2:
        raise ParseError("QRESYNC needs (uidvalidity modseq ...)")
    uidvalidity = parse_number(_atom_value(items[0]), "uidvalidity")
    modseq = parse_number(_atom_value(items[1]), "mod-sequence", MAX_NUMBER64)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    rest = list(items[2:])
    if rest and isinstance(rest[0], Atom):
        known = parse_sequence_set(_atom_value(rest.pop(0)))
    if rest and isinstance(rest[0], PList) and len(rest[0].items) == 2:
        seqs, uids = rest.pop(0).items  # type: ignore[union-attr]
        match = (parse_sequence_set(_atom_value(seqs)), parse_sequence_set(_atom_value(uids)))
    if rest:
        raise ParseError("bad QRESYNC parameters")
    return QResync(uidvalidity, modseq, known, match)


def _mailbox_command(a: _Args) -> Command:
    mailbox = a.mailbox()
    special: tuple[str, ...] = ()
    if a.name == "CREATE" and a.more():
        params = a.plist("create parameters")
        if len(params) != 2 or not isinstance(params[0], Atom) or upper_ascii(params[0].value) != "USE":
            raise ParseError("only the USE create parameter is supported")
        uses = params[1].items if isinstance(params[1], PList) else ()
        special = tuple(t.value for t in uses if isinstance(t, Atom))
    a.end()
    return MailboxCommand(a.name, mailbox, special)


def _rename(a: _Args) -> Command:
    old, new = a.mailbox(), a.mailbox()
    a.end()
    return Rename(old, new)


def _list_pattern(token: Token, utf8: bool) -> str | None:
    """A LIST reference or pattern, under the same limits as a mailbox name (a longer one could match
    no name); matching costs the pattern's length per character of each name. None for one that can
    match no name (not valid modified UTF-7, control characters): it lists nothing, as Dovecot does."""
    if isinstance(token, Atom):
        raw = token.value.encode("utf-8")
    elif isinstance(token, String):
        raw = token.value
    else:
        raise ParseError("bad mailbox pattern")
    if len(raw) > 8 * MAX_MAILBOX_NAME:
        raise ParseError("mailbox pattern too long")
    try:
        pattern = _decode_name(raw, utf8=utf8) if raw else ""
    except ImpossibleMailboxName:
        return None
    if _is_too_long(pattern):
        raise ParseError("mailbox pattern too long")
    return pattern


def _list(a: _Args) -> Command:
    selection: set[str] = set()
    is_extended = False
    if isinstance(a.peek(), PList):
        is_extended = True
        for token in a.plist("selection options"):
            if not isinstance(token, Atom):
                raise ParseError("bad selection option")
            selection.add(upper_ascii(token.value))
    reference = _list_pattern(a.next("reference"), a.utf8)
    patterns_token = a.next("mailbox pattern")
    if isinstance(patterns_token, PList):
        is_extended = True
        if not patterns_token.items:
            raise ParseError("empty list of mailbox patterns")
        if len(patterns_token.items) > MAX_LIST_PATTERNS:
            raise ParseError(f"too many mailbox patterns ({MAX_LIST_PATTERNS} at most)")
        decoded = [_list_pattern(t, a.utf8) for t in patterns_token.items]
    else:
        decoded = [_list_pattern(patterns_token, a.utf8)]
    # A reference or pattern no name can match lists nothing (an empty tuple of patterns).
    patterns = tuple(p for p in decoded if p is not None) if reference is not None else ()
    returns: set[str] = set()
    status_items: tuple[str, ...] = ()
    metadata_request: MetadataRequest | None = None
    if a.more():
        if upper_ascii(a.atom("RETURN")) != "RETURN":
            raise ParseError("expected RETURN")
        is_extended = True
        options = list(a.plist("return options"))
        i = 0
        while i < len(options):
            token = options[i]
            if not isinstance(token, Atom):
                raise ParseError("bad return option")
            option = upper_ascii(token.value)
            if option not in LIST_RETURNS:  # RFC 5258 §3: an unknown option is a BAD
                raise ParseError(f"unknown return option {token.value[:40]}")
            if option == "STATUS":
                if i + 1 >= len(options) or not isinstance(options[i + 1], PList):
                    raise ParseError("STATUS needs a list of items")
                status_items = _status_items(options[i + 1].items)  # type: ignore[union-attr]
                i += 1
            elif option == "METADATA":
                following = options[i + 1] if i + 1 < len(options) else None
                if not isinstance(following, PList):
                    raise ParseError("METADATA needs a list of entries")
                metadata_request = _list_metadata(following.items)
                i += 1
            returns.add(option)
            i += 1
    a.end()
    unknown = selection - LIST_SELECTIONS
    if unknown:
        raise ParseError(f"unknown selection option {sorted(unknown)[0]}")
    if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
        raise ParseError("RECURSIVEMATCH needs another selection option")
    return ListCommand(reference or "", patterns, frozenset(selection), frozenset(returns), status_items,
                       is_lsub=a.name == "LSUB", is_extended=is_extended, metadata=metadata_request)  # fmt: skip


def _list_metadata(tokens: tuple[Token, ...]) -> MetadataRequest:
    """RETURN (METADATA (entry ... [MAXSIZE n] [DEPTH d])) of RFC 9590: entry names, and the options of
    GETMETADATA (RFC 5464 §4.2) wherever they stand in the list (an entry name starts with "/")."""
    entries: list[str] = []
    max_size: int | None = None
    depth = 0
    i = 0
    while i < len(tokens):
        token = tokens[i]
        option = upper_ascii(token.value) if isinstance(token, Atom) else ""
        if option in ("MAXSIZE", "DEPTH"):
            if i + 1 >= len(tokens):
                raise ParseError(f"{option} needs a value")
            value = _atom_value(tokens[i + 1])
            if option == "MAXSIZE":
                max_size = parse_number(value, "MAXSIZE")
            elif value.lower() in _DEPTHS:
                depth = _DEPTHS[value.lower()]
            else:
                raise ParseError("DEPTH is 0, 1 or infinity")
            i += 2
            continue
        entries.append(metadata.parse_entry(_string_value(token), is_set=False))
        i += 1
    if not entries or len(entries) > metadata.MAX_REQUESTED:
        raise ParseError(f"METADATA takes 1 to {metadata.MAX_REQUESTED} entries")
    return MetadataRequest(tuple(entries), max_size, depth)


# RFC 5258 §3.1-3.2, RFC 6154 (SPECIAL-USE), RFC 5819 (STATUS).
LIST_SELECTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURNS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS", "METADATA"})  # + RFC 9590


STATUS_ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "HIGHESTMODSEQ", "RECENT",
                "APPENDLIMIT", "MAILBOXID", "DELETED-STORAGE")  # fmt: skip


def _status_items(tokens: tuple[Token, ...]) -> tuple[str, ...]:
    items = []
    for token in tokens:
        if not isinstance(token, Atom) or upper_ascii(token.value) not in STATUS_ITEMS:
            raise ParseError("unknown STATUS item")
        items.append(upper_ascii(token.value))
    if not items:
        raise ParseError("STATUS needs at least one item")
    return tuple(items)


def _status(a: _Args) -> Command:
    mailbox = a.mailbox()
    items = _status_items(a.plist("status items"))
    a.end()
    return Status(mailbox, items)


def _append(a: _Args) -> Command:
    """APPEND mailbox 1*([flags] [date-time] literal): one message, or several (MULTIAPPEND, RFC 3502
    §6.3.11); each message is one literal, so there are at most as many as a command has literals."""
    mailbox = a.mailbox()
    messages: list[AppendMessage] = []
    while not messages or a.more():
        flags: frozenset[str] = frozenset()
        date: datetime.datetime | None = None
        if isinstance(a.peek(), PList):
            flags = _flag_list(a.plist("flags"))
        token = a.peek()
        if isinstance(token, String) and not token.is_literal:
            date = parse_date_time(token.value.decode("ascii", "replace"))
            a.pos += 1
        message = a.next("message literal")
        if isinstance(message, Atom) and upper_ascii(message.value) == "CATENATE":
            messages.append(AppendMessage(flags, date, b"", parts=_cat_parts(a.plist("CATENATE parts"))))
            continue
        if isinstance(message, Atom) and upper_ascii(message.value) == "UTF8":
            inner = a.plist("UTF8 literal")
            if len(inner) != 1 or not isinstance(inner[0], String):
                raise ParseError("bad UTF8 literal")
            message = inner[0]
        if not isinstance(message, String) or not message.is_literal:
            raise ParseError("APPEND needs the message as a literal")
        messages.append(AppendMessage(flags, date, message.value, literal=message.literal))
    return Append(mailbox, tuple(messages))


def _cat_parts(tokens: tuple[Token, ...]) -> tuple[CatPart, ...]:
    """RFC 4469 §5: "CATENATE" SP "(" cat-part *(SP cat-part) ")", cat-part = "TEXT" SP literal /
    "URL" SP astring (the URL is checked when the command runs: a bad one is NO [BADURL])."""
    if not tokens or len(tokens) % 2:
        raise ParseError("CATENATE needs TEXT or URL parts")
    parts: list[CatPart] = []
    urls = 0
    for i in range(0, len(tokens), 2):
        kind, value = tokens[i], tokens[i + 1]
        name = upper_ascii(kind.value) if isinstance(kind, Atom) else ""
        if name == "TEXT" and isinstance(value, String) and value.is_literal:
            parts.append(CatPart(text=value.value, literal=value.literal))
        elif name == "URL" and isinstance(value, Atom | String):
            url = value.value if isinstance(value, String) else value.value.encode("utf-8")
            if not url or len(url) > MAX_URL:
                raise ParseError(f"URL empty or too long ({MAX_URL} octets at most)")
            parts.append(CatPart(url=url))
            urls += 1
            if urls > MAX_CATENATE_URLS:
                raise ParseError(f"too many URL parts ({MAX_CATENATE_URLS} at most)")
        else:
            raise ParseError("CATENATE parts are TEXT literal or URL astring")
    return tuple(parts)


# -- SEARCH ---------------------------------------------------------------------------------------------


def _search_string(a: _Args, what: str) -> str:
    return a.astring(what).decode("utf-8", "replace")


_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True), "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}  # fmt: skip
_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}
_DATE_KEYS = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE", "SAVEDBEFORE", "SAVEDON",
                        "SAVEDSINCE"})  # fmt: skip


@dataclass
class _KeyCount:
    keys: int = 0


def _search_key(a: _Args, count: _KeyCount, depth: int = 0) -> SearchKey:
    """One search key. NOT, OR and parentheses nest at most MAX_NESTING deep (the recursion here and in
    every stage after it is bounded by that), and a program holds at most MAX_SEARCH_KEYS keys."""
    if depth > MAX_NESTING:
        raise ParseError(f"search keys nested too deeply ({MAX_NESTING} levels at most)")
    count.keys += 1
    if count.keys > MAX_SEARCH_KEYS:
        raise ParseError(f"too many search keys ({MAX_SEARCH_KEYS} at most)")
    token = a.next("search key")
    if isinstance(token, PList):
        inner = _Args(list(token.items), a.utf8, name=a.name)
        keys = [_search_key(inner, count, depth + 1)]
        while inner.more():
            keys.append(_search_key(inner, count, depth + 1))
        return keys[0] if len(keys) == 1 else SAnd(tuple(keys))
    if not isinstance(token, Atom):
        raise ParseError("bad search key")
    key = upper_ascii(token.value)
    if key in _FLAG_KEYS:
        return SKey("FLAG", _FLAG_KEYS[key])
    if key in _HEADER_KEYS:
        return SKey("HEADER", (_HEADER_KEYS[key], _search_string(a, key)))
    if key in _DATE_KEYS:
        return SKey(key, (parse_date(a.astring("date").decode("ascii", "replace")),))
    match key:
        case "SAVEDATESUPPORTED":  # every mailbox keeps save dates (RFC 8514 §4.3)
            return SKey("ALL")
        case "ALL" | "OLD" | "NEW" | "RECENT":
            return SKey(key)
        case "BODY" | "TEXT":
            return SKey(key, (_search_string(a, key),))
        case "HEADER":
            field_name = _search_string(a, "header field").lower()
            return SKey("HEADER", (field_name, _search_string(a, "header text")))
        case "KEYWORD" | "UNKEYWORD":
            flag = next(iter(_flag_list((a.next("keyword"),), "keyword")))
            return SKey("FLAG", (flag, key == "KEYWORD"))
        case "LARGER" | "SMALLER":
            return SKey(key, (a.number("size", MAX_NUMBER64),))
        case "NOT":
            return SNot(_search_key(a, count, depth + 1))
        case "OR":
            return SOr(_search_key(a, count, depth + 1), _search_key(a, count, depth + 1))
        case "UID":
            return SeqKey(parse_sequence_set(a.atom("UID set")), is_uid=True)
        case "EMAILID" | "THREADID":  # RFC 8474 §6
            return SKey(key, (a.atom("object id"),))
        case "MODSEQ":
            if isinstance(a.peek(), String):  # entry-name and entry-type (RFC 7162 §3.1.5), ignored
                a.pos += 1
                a.atom("entry type")
            return SKey("MODSEQ", (a.number("mod-sequence", MAX_NUMBER64),))
    if key[:1].isdigit() or key[:1] in "*$":
        return SeqKey(parse_sequence_set(key), is_uid=False)
    raise ParseError(f"unknown search key {token.value}")


def _search_program(a: _Args) -> SearchKey:
    count = _KeyCount()
    keys = [_search_key(a, count)]
    while a.more():
        keys.append(_search_key(a, count))
    return keys[0] if len(keys) == 1 else SAnd(tuple(keys))


_ESEARCH_RETURNS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})


@dataclass(frozen=True, slots=True)
class _Returns:
    results: tuple[str, ...] | None = None  # None: no RETURN
    partial: tuple[int, int] | None = None
    update: bool = False


def _return_options(a: _Args) -> _Returns:
    """RETURN (...) of SEARCH and SORT: the ESEARCH options (RFC 4731), and CONTEXT (a hint, dropped),
    UPDATE and PARTIAL low:high (RFC 5267 §4); one PARTIAL or one ALL at most (§4.4)."""
    if not a.take("RETURN"):
        return _Returns()
    options: list[str] = []
    partial: tuple[int, int] | None = None
    update = False
    tokens = a.plist("return options")
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name = upper_ascii(token.value) if isinstance(token, Atom) else ""
        if name in _ESEARCH_RETURNS:
            options.append(name)
        elif name == "UPDATE":
            update = True
        elif name == "PARTIAL":
            if partial is not None:
                raise ParseError("one PARTIAL or ALL at most")
            if i + 1 >= len(tokens) or not isinstance(tokens[i + 1], Atom):
                raise ParseError("PARTIAL needs a range low:high")
            i += 1
            partial = _partial_range(_atom_value(tokens[i]))
        elif name != "CONTEXT":
            raise ParseError("unknown return option")
        i += 1
    if (partial is not None and "ALL" in options) or options.count("ALL") > 1:
        raise ParseError("one PARTIAL or ALL at most")
    return _Returns(tuple(dict.fromkeys(options)), partial, update)


def _partial_range(text: str) -> tuple[int, int]:
    """RFC 5267 partial-range: nz-number ":" nz-number, in either order (500:400 is 400:500), kept as
    written because the PARTIAL result echoes the range the client sent (§4.4)."""
    low, colon, high = text.partition(":")
    if not colon:
        raise ParseError("PARTIAL needs a range low:high")
    first, last = parse_number(low, "partial range"), parse_number(high, "partial range")
    if not first or not last:
        raise ParseError("partial ranges start at 1")
    return (first, last)


def _search(a: _Args, is_uid: bool) -> Command:
    returns = _return_options(a)
    charset = None
    if a.take("CHARSET"):
        charset = upper_ascii(a.astring("charset").decode("ascii", "replace"))
    return Search(is_uid, _search_program(a), returns.results, charset, returns.partial, returns.update)


# RFC 5256 §3 and RFC 5957 (SORT=DISPLAY).
SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})


def _sort(a: _Args, is_uid: bool) -> Command:
    returns = _return_options(a)
    keys: list[tuple[str, bool]] = []
    reverse = False
    for token in a.plist("sort criteria"):
        if not isinstance(token, Atom):
            raise ParseError("bad sort criterion")
        word = upper_ascii(token.value)
        if word == "REVERSE":
            reverse = True
            continue
        if word not in SORT_KEYS:
            raise ParseError(f"unsupported sort key {token.value}")
        keys.append((word, reverse))
        reverse = False
    if not keys or reverse:
        raise ParseError("bad sort criteria")
    charset = upper_ascii(a.astring("charset").decode("ascii", "replace"))
    return SortCommand(is_uid, tuple(keys), charset, _search_program(a), returns.results, returns.partial,
                       returns.update)  # fmt: skip


def _cancel_update(a: _Args) -> Command:
    tags = [a.astring("tag").decode("utf-8", "replace")]
    while a.more():
        tags.append(a.astring("tag").decode("utf-8", "replace"))
    return CancelUpdate(tuple(tags))


# RFC 5256 §3.
THREAD_ALGORITHMS = frozenset({"ORDEREDSUBJECT", "REFERENCES"})


def _thread(a: _Args, is_uid: bool) -> Command:
    algorithm = upper_ascii(a.atom("thread algorithm"))
    if algorithm not in THREAD_ALGORITHMS:
        raise ParseError(f"unknown thread algorithm {algorithm[:40]}")
    charset = upper_ascii(a.astring("charset").decode("ascii", "replace"))
    return ThreadCommand(is_uid, algorithm, charset, _search_program(a))


# -- FETCH and STORE ---------------------------------------------------------------------------------------

_BODY_KINDS = frozenset({"BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"})
_SECTION_TEXTS = frozenset({"", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"})


def parse_fetch_item(text: str) -> FetchItem:
    """A FETCH item: a simple name, or BODY[section]<partial> and its BINARY forms (RFC 9051 §6.4.5), in
    any case (RFC 9051 §9); the item comes back in upper case, as responses name it."""
    upper = upper_ascii(text)
    if upper in SIMPLE_FETCH:
        return upper
    start, end = text.find("["), text.rfind("]")
    kind = upper[:start]
    if start < 0 or end < start or kind not in _BODY_KINDS:
        raise ParseError(f"unknown fetch item {text[:40]}")
    section = parse_section(upper[start + 1 : end])
    if kind.startswith("BINARY") and (section.text or section.fields):
        raise ParseError("BINARY takes a part number only")
    partial = _parse_partial(text[end + 1 :], text)
    if partial is not None and kind == "BINARY.SIZE":
        raise ParseError("bad partial range")
    return BodyItem(kind.replace(".PEEK", ""), section, peek=".PEEK" in kind, partial=partial)


def _parse_partial(spec: str, item: str) -> tuple[int, int] | None:
    """`<origin.count>` after a section (RFC 9051 partial: number64 "." nz-number64), or nothing."""
    if not spec:
        return None
    if not (spec.startswith("<") and spec.endswith(">")):
        raise ParseError(f"unknown fetch item {item[:40]}")
    origin, dot, count = spec[1:-1].partition(".")
    if not dot:
        raise ParseError("bad partial range")
    partial = (parse_number(origin, "partial origin", MAX_NUMBER64), parse_number(count, "partial length",
                                                                                  MAX_NUMBER64))  # fmt: skip
    if partial[1] == 0:
        raise ParseError("partial length must not be 0")
    return partial


def parse_section(spec: str) -> Section:
    """section-spec (RFC 9051 §9), in upper case: part numbers, then HEADER, HEADER.FIELDS[.NOT] (names),
    TEXT or MIME."""
    names: str | None = None
    if spec.endswith(")") and " (" in spec:
        spec, _, names = spec[:-1].partition(" (")
    pieces = spec.split(".") if spec else []
    part: list[int] = []
    while len(part) < len(pieces) and pieces[len(part)].isascii() and pieces[len(part)].isdigit():
        number = parse_number(pieces[len(part)], "section part")
        if number == 0:
            raise ParseError("section part numbers start at 1")
        part.append(number)
    text = ".".join(pieces[len(part) :])
    if text not in _SECTION_TEXTS or (not text and len(part) < len(pieces)):
        raise ParseError(f"bad section {spec[:40]!r}")
    if text == "MIME" and not part:
        raise ParseError("MIME needs a part number")
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        if names is None or not names.strip():
            raise ParseError("HEADER.FIELDS needs a list of field names")
        fields = tuple(upper_ascii(f.strip('"')) for f in names.split())
        if any(not f or "(" in f or ")" in f for f in fields):
            raise ParseError("bad header field name")
    elif names is not None:
        raise ParseError(f"bad section {spec[:40]!r}")
    return Section(tuple(part), text, fields)


_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


def _fetch(a: _Args, is_uid: bool) -> Command:
    numbers = parse_sequence_set(a.atom("sequence set"))
    token = a.next("fetch items")
    if isinstance(token, PList):
        items = _fetch_items(token.items)
        if not items:
            raise ParseError("empty fetch item list")
    else:
        word = _atom_value(token)
        items = _FETCH_MACROS.get(upper_ascii(word)) or (parse_fetch_item(word),)
        following = a.peek()
        if items == ("PREVIEW",) and isinstance(following, PList) and _is_preview_modifiers(following):
            a.pos += 1
            items = (PREVIEW_LAZY,)
    changed_since = None
    vanished = False
    if a.more():
        modifiers = list(a.plist("fetch modifiers"))
        i = 0
        while i < len(modifiers):
            name = upper_ascii(_atom_value(modifiers[i]))
            if name == "CHANGEDSINCE" and i + 1 < len(modifiers):
                changed_since = parse_number(_atom_value(modifiers[i + 1]), "mod-sequence", MAX_NUMBER64)
                i += 2
            elif name == "VANISHED":
                vanished = True
                i += 1
            else:
                raise ParseError(f"unknown fetch modifier {name}")
        if vanished and (changed_since is None or not is_uid):
            raise ParseError("VANISHED needs UID FETCH with CHANGEDSINCE")
    a.end()
    return Fetch(is_uid, numbers, items, changed_since, vanished)


def _fetch_items(tokens: tuple[Token, ...]) -> tuple[FetchItem, ...]:
    """A parenthesised list of fetch items; PREVIEW may be followed by its modifiers (RFC 8970 §4)."""
    items: list[FetchItem] = []
    i = 0
    while i < len(tokens):
        item = parse_fetch_item(_atom_value(tokens[i]))
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if item == "PREVIEW" and isinstance(following, PList):
            if not _is_preview_modifiers(following):
                raise ParseError("unknown PREVIEW modifier")
            item, i = PREVIEW_LAZY, i + 1
        items.append(item)
        i += 1
    return tuple(items)


def _is_preview_modifiers(modifiers: PList) -> bool:
    """Whether a list after PREVIEW holds its modifiers: LAZY, the only one RFC 8970 §4 defines. Outside a
    list of items, a list that is not (e.g. `(CHANGEDSINCE 5)`) is the FETCH modifiers instead."""
    return bool(modifiers.items) and all(
        isinstance(t, Atom) and t.value.upper() == "LAZY" for t in modifiers.items
    )


def _atom_value(token: Token) -> str:
    if not isinstance(token, Atom):
        raise ParseError("expected an atom")
    return token.value


def _store(a: _Args, is_uid: bool) -> Command:
    numbers = parse_sequence_set(a.atom("sequence set"))
    unchanged_since = None
    if isinstance(a.peek(), PList):
        modifiers = a.plist("store modifiers")
        if len(modifiers) != 2 or upper_ascii(_atom_value(modifiers[0])) != "UNCHANGEDSINCE":
            raise ParseError("unknown STORE modifier")
        unchanged_since = parse_number(_atom_value(modifiers[1]), "mod-sequence", MAX_NUMBER64)
    item = upper_ascii(a.atom("store item"))
    silent = item.endswith(".SILENT")
    base = item.removesuffix(".SILENT")
    ops = {"FLAGS": "", "+FLAGS": "+", "-FLAGS": "-"}
    if base not in ops:
        raise ParseError(f"unknown STORE item {item}")
    if isinstance(a.peek(), PList):
        flags = _flag_list(a.plist("flags"))
    else:
        flags = _flag_list(tuple(a.tokens[a.pos :]))
        a.pos = len(a.tokens)
    a.end()
    return StoreCommand(is_uid, numbers, ops[base], silent, flags, unchanged_since)


def _copy_move(a: _Args, is_uid: bool) -> Command:
    numbers = parse_sequence_set(a.atom("sequence set"))
    mailbox = a.mailbox()
    a.end()
    return CopyMove(a.name, is_uid, numbers, mailbox)


def _uid(a: _Args) -> Command:
    sub = upper_ascii(a.atom("UID command"))
    a.name = sub
    match sub:
        case "FETCH":
            return _fetch(a, True)
        case "STORE":
            return _store(a, True)
        case "COPY" | "MOVE":
            return _copy_move(a, True)
        case "SEARCH":
            return _search(a, True)
        case "SORT":
            return _sort(a, True)
        case "THREAD":
            return _thread(a, True)
        case "EXPUNGE":
            numbers = parse_sequence_set(a.atom("UID set"))
            a.end()
            return UidExpunge(numbers)
    raise ParseError(f"unknown UID command {sub}")


def _id(a: _Args) -> Command:
    token = a.next("ID parameters")
    if isinstance(token, Atom) and upper_ascii(token.value) == "NIL":
        a.end()
        return Id(None)
    if not isinstance(token, PList) or len(token.items) % 2 or len(token.items) > 60:
        raise ParseError("ID needs NIL or a list of field/value pairs")
    params: list[tuple[str, str | None]] = []
    for key, value in zip(token.items[::2], token.items[1::2], strict=True):
        if not isinstance(key, String):
            raise ParseError("ID field names must be strings")
        text = None if isinstance(value, Atom) and upper_ascii(value.value) == "NIL" else _token_text(value)
        params.append((key.value.decode("utf-8", "replace")[:30], text[:1024] if text else text))
    a.end()
    return Id(tuple(params))


def _token_text(token: Token) -> str:
    if isinstance(token, String):
        return token.value.decode("utf-8", "replace")
    if isinstance(token, Atom):
        return token.value
    raise ParseError("bad ID value")


def _compress(a: _Args) -> Command:
    mechanism = upper_ascii(a.atom("mechanism"))
    a.end()
    return Compress(mechanism)


_NOTIFY_EVENTS = {
    name.upper(): name
    for name in ("MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange", "MailboxName",
                 "SubscriptionChange", "MailboxMetadataChange", "ServerMetadataChange")
}  # fmt: skip
_MESSAGE_EVENTS = frozenset({"MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange"})
_NOTIFY_FILTERS = frozenset({"SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE",
                             "MAILBOXES"})  # fmt: skip


def _notify(a: _Args) -> Command:
    """NOTIFY NONE | NOTIFY SET [STATUS] 1*(event-group) (RFC 5465 §8). Unknown event names parse (the
    handler refuses those it does not support with NO [BADEVENT]); the rules of §5 and §6.1 are BADs."""
    verb = upper_ascii(a.atom("NONE or SET"))
    if verb == "NONE":
        a.end()
        return Notify(())
    if verb != "SET":
        raise ParseError("NOTIFY takes SET or NONE")
    status = a.take("STATUS")
    groups: list[NotifyGroup] = []
    named = 0
    while not groups or a.more():
        if len(groups) >= MAX_NOTIFY_GROUPS:
            raise ParseError(f"too many event groups ({MAX_NOTIFY_GROUPS} at most)")
        group = _Args(list(a.plist("event group")), a.utf8, name=a.name)
        kind = upper_ascii(group.atom("mailbox filter"))
        if kind not in _NOTIFY_FILTERS:
            raise ParseError(f"unknown mailbox filter {kind[:40]}")
        mailboxes: frozenset[str] = frozenset()
        if kind in ("SUBTREE", "MAILBOXES"):
            token = group.peek()
            names = []
            if isinstance(token, PList):
                group.pos += 1
                inner = _Args(list(token.items), a.utf8, name=a.name)
                while inner.more():
                    names.append(inner.mailbox())
            else:
                names.append(group.mailbox())
            if not names:
                raise ParseError(f"{kind} needs a mailbox")
            named += len(names)
            if named > MAX_NOTIFY_MAILBOXES:
                raise ParseError(f"too many mailboxes ({MAX_NOTIFY_MAILBOXES} at most)")
            mailboxes = frozenset(names)
        events: set[str] = set()
        fetch_items: tuple[FetchItem, ...] = ()
        token = group.next("events")
        if isinstance(token, Atom) and upper_ascii(token.value) == "NONE":
            pass
        elif isinstance(token, PList):
            items = list(token.items)
            for i, item in enumerate(items):
                if isinstance(item, PList):  # MessageNew's fetch attributes
                    previous = items[i - 1] if i else None
                    if not isinstance(previous, Atom) or upper_ascii(previous.value) != "MESSAGENEW":
                        raise ParseError("fetch attributes must follow MessageNew")
                    if not kind.startswith("SELECTED"):  # RFC 5465 §5.2: FETCH is sent only there
                        raise ParseError("fetch attributes only for the selected mailbox")
                    if not item.items:
                        raise ParseError("empty fetch attribute list")
                    fetch_items = tuple(parse_fetch_item(_atom_value(t)) for t in item.items)
                    continue
                name = _atom_value(item)
                events.add(_NOTIFY_EVENTS.get(upper_ascii(name), name))
            if not events:
                raise ParseError("empty event list")
        else:
            raise ParseError("events must be a list or NONE")
        group.end()
        if kind.startswith("SELECTED"):  # RFC 5465 §6.1
            # §5: MessageNew and MessageExpunge go together; FlagChange/AnnotationChange need both. Only for
            # the selected mailbox, as in Dovecot 2.3: the RFC's own example (§3.1) asks for
            # `(subtree Lists (MessageNew))`, and for other mailboxes each event is a STATUS of its own.
            if len(events & {"MessageNew", "MessageExpunge"}) == 1:
                raise ParseError("MessageNew and MessageExpunge must be given together")
            if events & {"FlagChange", "AnnotationChange"} and "MessageNew" not in events:
                raise ParseError("FlagChange needs MessageNew and MessageExpunge")
            if any(g.filter.startswith("SELECTED") for g in groups):
                raise ParseError("only one of SELECTED and SELECTED-DELAYED")
            if events - _MESSAGE_EVENTS:
                raise ParseError("only message events for the selected mailbox")
        groups.append(NotifyGroup(kind, mailboxes, frozenset(events), fetch_items))
    return Notify(tuple(groups), status)


def _getmetadata(a: _Args) -> Command:
    max_size: int | None = None
    depth = 0
    token = a.peek()
    if isinstance(token, PList):  # RFC 5464 §4.2: options first
        a.pos += 1
        options = token.items
        if not options or len(options) % 2:
            raise ParseError("GETMETADATA options come in pairs")
        for name_token, value_token in zip(options[::2], options[1::2], strict=True):
            name, value = upper_ascii(_atom_value(name_token)), _atom_value(value_token)
            if name == "MAXSIZE":
                max_size = parse_number(value, "MAXSIZE")
            elif name == "DEPTH":
                if value.lower() not in _DEPTHS:
                    raise ParseError("DEPTH is 0, 1 or infinity")
                depth = _DEPTHS[value.lower()]
            else:
                raise ParseError(f"unknown GETMETADATA option {name}")
    mailbox = a.mailbox()
    token = a.next("entries")
    tokens = token.items if isinstance(token, PList) else (token,)
    if not tokens or len(tokens) > metadata.MAX_REQUESTED:
        raise ParseError(f"GETMETADATA takes 1 to {metadata.MAX_REQUESTED} entries")
    entries = tuple(metadata.parse_entry(_string_value(t), is_set=False) for t in tokens)
    a.end()
    return GetMetadata(mailbox, entries, max_size, depth)


_DEPTHS = {"0": 0, "1": 1, "infinity": metadata.DEPTH_INFINITY}


def _setmetadata(a: _Args) -> Command:
    mailbox = a.mailbox()
    pairs = a.plist("entries and values")
    a.end()
    if not pairs or len(pairs) % 2:
        raise ParseError("SETMETADATA takes entry and value pairs")
    entries: list[tuple[str, bytes | None]] = []
    for entry, value in zip(pairs[::2], pairs[1::2], strict=True):
        name = metadata.parse_entry(_string_value(entry), is_set=True)
        if isinstance(value, Atom) and upper_ascii(value.value) == "NIL":
            entries.append((name, None))
        elif isinstance(value, String):  # RFC 5464 §5: nstring / literal8
            entries.append((name, value.value))
        else:
            raise ParseError("a metadata value is a string or NIL")
    return SetMetadata(mailbox, tuple(entries))


def _quota(a: _Args) -> Command:
    """RFC 9208 §4.2: quota roots are astrings (ours is ""); SETQUOTA's list is resource-name and
    64-bit limit pairs, checked here though the command is always refused (§4.2.3: admin only)."""
    if a.name == "GETQUOTAROOT":
        mailbox = a.mailbox()
        a.end()
        return QuotaCommand(a.name, mailbox)
    root = a.astring("quota root").decode("utf-8", "replace")
    limits: list[tuple[str, int]] = []
    if a.name == "SETQUOTA":
        pairs = a.plist("resource limits")
        if len(pairs) % 2:
            raise ParseError("SETQUOTA takes resource name and limit pairs")
        for name, limit in zip(pairs[::2], pairs[1::2], strict=True):
            limits.append((upper_ascii(_atom_value(name)), parse_number(_atom_value(limit), "limit", MAX_NUMBER64)))
    a.end()
    return QuotaCommand(a.name, root, tuple(limits))


def _string_value(token: Token) -> bytes:
    """An astring's octets."""
    if isinstance(token, String):
        return token.value
    if isinstance(token, Atom):
        return token.value.encode("utf-8")
    raise ParseError("expected a string")


_NO_ARGS = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "IDLE",
                      "NAMESPACE", "UNAUTHENTICATE"})  # fmt: skip

_GRAMMARS: dict[str, Callable[[_Args], Command]] = {
    "LOGIN": _login,
    "AUTHENTICATE": _authenticate,
    "ENABLE": _enable,
    "SELECT": _select,
    "EXAMINE": _select,
    "CREATE": _mailbox_command,
    "DELETE": _mailbox_command,
    "SUBSCRIBE": _mailbox_command,
    "UNSUBSCRIBE": _mailbox_command,
    "RENAME": _rename,
    "LIST": _list,
    "LSUB": _list,
    "STATUS": _status,
    "APPEND": _append,
    "SEARCH": lambda a: _search(a, False),
    "SORT": lambda a: _sort(a, False),
    "THREAD": lambda a: _thread(a, False),
    "CANCELUPDATE": _cancel_update,
    "FETCH": lambda a: _fetch(a, False),
    "STORE": lambda a: _store(a, False),
    "COPY": lambda a: _copy_move(a, False),
    "MOVE": lambda a: _copy_move(a, False),
    "UID": _uid,
    "ID": _id,
    "COMPRESS": _compress,
    "NOTIFY": _notify,
    "GETMETADATA": _getmetadata,
    "SETMETADATA": _setmetadata,
    "GETQUOTA": _quota,
    "GETQUOTAROOT": _quota,
    "SETQUOTA": _quota,
}


def parse_command(name: str, args: list[Token], *, utf8: bool) -> Command:
    """The typed form of command `name` with argument tokens `args`; raises ParseError."""
    if name in _NO_ARGS:
        if args:
            raise ParseError(f"{name} takes no arguments")
        return Simple(name)
    grammar = _GRAMMARS.get(name)
    if grammar is None:
        raise ParseError(f"unknown command {name}")
    cursor = _Args(args, utf8, name=name)
    command = grammar(cursor)
    return cursor.refusal or command

"""What one IMAP session knows: the account, the selected mailbox's sequence numbers, and how to tell
the client about changes made elsewhere (new mail, flags set by other sessions, expunges).

Expunges are reported only where RFC 9051 §7.5.1 allows (not during FETCH, STORE or SEARCH by sequence
number), so a message's sequence number never changes under a command the client is still issuing.
A session remembers only UIDs (an array, 4 octets each) and the MODSEQ it has reported up to; flag changes
are found with the store's `changes_since`, skipping the ones this session made and already announced.
"""

from __future__ import annotations

import bisect
import dataclasses
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kartero.imap import mutf7
from kartero.imap.response import Status
from kartero.imap.state import ImapState
from kartero.imap.syntax import STAR, SequenceSet
from kartero.store.interface import (
    ExpungeHold,
    FileSpan,
    FlagOp,
    FlagUpdate,
    MailStore,
    MessageRow,
    NoSuchMailbox,
    SpamReports,
    apply_flag_op,
)

if TYPE_CHECKING:
    from kartero.imap.commands.notify import NotifyState

# Untagged responses are handed to the network in batches of about this many octets.
CHUNK = 256 * 1024
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
MAX_UID = 2**32


@dataclass(frozen=True, slots=True)
class Done:
    """How a command ends: its tagged response, and a new state when it changes one."""

    status: Status
    text: str
    code: str | None = None
    state: ImapState | None = None
    bye: str | None = None  # instead of the tagged response: `* BYE bye`, and the connection closes


# Dovecot 2.3's words when another session deleted the selected mailbox (it disconnects too).
DELETED_BYE = "Selected mailbox was deleted, have to disconnect."


@dataclass(slots=True)
class View:
    mailbox_id: int
    name: str
    readonly: bool
    uidvalidity: int
    uids: array[int]
    modseq: int  # every change up to this MODSEQ has been reported to the client
    # Every change but expunges held back (RFC 9051 §7.5.1) has been reported up to this MODSEQ.
    flags_modseq: int = 0
    own_changes: dict[int, int] = field(default_factory=dict)  # uid -> modseq of our own STOREs
    # HIGHESTMODSEQ went out with CONDSTORE in effect (at SELECT, or at the first command enabling it).
    condstore_announced: bool = False
    # The keywords the client was told of in FLAGS, by their case-folded name (keywords are
    # case-insensitive, RFC 9051 §2.3.2).
    keywords: dict[str, str] = field(default_factory=dict)
    # Keeps messages expunged elsewhere readable until this session has reported their expunge.
    hold: ExpungeHold | None = None
    # Flags this session stored on such messages since (as Dovecot does, the change lives in the session's
    # view until it reports the expunge): UID -> (flags, MODSEQ shown).
    held_flags: dict[int, tuple[frozenset[str], int]] = field(default_factory=dict)
    deleted: bool = False  # another session deleted the mailbox (found by `sync`)
    # IMAP4rev1 \\Recent: the UIDs this session sees as recent, as [low, high) ranges in ascending order
    # (RFC 3501 §2.3.2; see Session.claim_recent).
    recent: list[tuple[int, int]] = field(default_factory=list)

    def is_recent(self, uid: int) -> bool:
        i = bisect.bisect_right(self.recent, (uid, MAX_UID)) - 1
        return i >= 0 and self.recent[i][0] <= uid < self.recent[i][1]

    def recent_count(self) -> int:
        uids = self.uids
        return sum(bisect.bisect_left(uids, high) - bisect.bisect_left(uids, low) for low, high in self.recent)

    def reported(self, modseq: int) -> None:
        """Every change up to `modseq`, expunges included, has been reported to the client."""
        self.modseq = modseq
        if self.hold is not None:
            self.hold.advance(modseq)

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    @property
    def exists(self) -> int:
        return len(self.uids)


class ResultContext(Protocol):
    """A search whose results the client asked to have kept up to date (RFC 5267 §4.3 UPDATE); see
    search.py. Both calls yield nothing once the view they searched is no longer selected."""

    def expunging(self, session: Session, uids: Sequence[int]) -> Iterator[bytes]:
        """REMOVEFROM for these UIDs, while their sequence numbers are still valid (§4.3.4)."""
        ...

    def refresh(self, session: Session) -> Iterator[bytes]:
        """ADDTO/REMOVEFROM for the changes the session has just reported (after EXISTS, §4.3.3)."""
        ...


@dataclass(slots=True)
class Session:
    """The non-protocol state handlers share; `enabled` is the core's set (CONDSTORE, QRESYNC, ...)."""

    store: MailStore
    account_id: int
    user: str
    enabled: set[str]
    selected: View | None = None
    saved: tuple[int, ...] = ()  # the SEARCHRES result `$` (UIDs)
    condstore: bool = False  # CONDSTORE in effect (enabled, or used by a command: RFC 7162 §3.1)
    # The spool file the adapter wrote a large APPEND message to (Append.spooled), for that command only.
    spooled_message: FileSpan | None = None
    spool_dir: Path | None = None  # where a large CATENATE message is assembled (RFC 4469)
    contexts: dict[str, ResultContext] = field(default_factory=dict)  # RFC 5267 UPDATE, by command tag
    notify: NotifyState | None = None  # NOTIFY SET in effect (RFC 5465)
    default_quota: int = 0  # [limits] default_quota: the limit of an account without its own (0: none)
    spam_reports: SpamReports | None = None  # where moves into/out of Junk go ([spam] learn); None: off

    @property
    def utf8(self) -> bool:
        return "UTF8=ACCEPT" in self.enabled

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    def select(self, view: View | None) -> None:
        """Show `view` (None: nothing); the hold of the view left behind is released, and NOTIFY watches
        that mailbox by STATUS again."""
        old, self.selected = self.selected, view
        if old is not None and old is not view:
            if old.hold is not None:
                old.hold.release()
            if self.notify is not None:
                self.notify.deselected(self.store, old.mailbox_id, old.modseq)

    def claim_recent(self, view: View, first_recent_uid: int, uid_end: int) -> None:
        """Note the UIDs below `uid_end` that are \\Recent to this session (IMAP4rev1 only; RFC 9051
        dropped the flag). A read-write session claims them, moving the mailbox's first recent UID on,
        so no other session sees them as recent (as Dovecot does); a read-only one does not change that
        state (RFC 3501 §6.3.2) and sees as recent what nobody has claimed yet."""
        if self.rev2 or first_recent_uid >= uid_end:
            return
        start = first_recent_uid if view.readonly else self.store.claim_recent(view.mailbox_id, uid_end)
        if view.recent and view.recent[-1][1] >= start:
            start = min(start, view.recent[-1][0])
            view.recent.pop()
        if start < uid_end:
            view.recent.append((start, uid_end))

    def shown_flags(self, view: View, row: MessageRow) -> frozenset[str]:
        """A message's flags as this session shows them: \\Recent added for IMAP4rev1."""
        return row.flags | {"\\Recent"} if view.recent and view.is_recent(row.uid) else row.flags

    def uses_condstore(self) -> bool:
        return self.condstore or "CONDSTORE" in self.enabled

    def mailbox_name(self, name: str) -> str:
        """A mailbox name as the client expects it on the wire (modified UTF-7 unless UTF8=ACCEPT)."""
        return name if self.utf8 else mutf7.encode(name)


def update_flags(session: Session, view: View, uids: list[int], op: FlagOp, flags: frozenset[str],
                 unchanged_since: int | None) -> FlagUpdate:  # fmt: skip
    """Store.update_flags for the view's messages, and for those another session expunged that the
    client has not been told of, a change in this view only: STORE on them succeeds and FETCH shows it
    until the expunge is reported, as Dovecot 2.3 does (RFC 2180 §4.2.1 lets STORE succeed there). Such
    a message's MODSEQ moves on by one per change, so CONDSTORE clients see a change as a change."""
    update = session.store.update_flags(view.mailbox_id, uids, op, flags, unchanged_since)
    missing = [uid for uid in update.missing if view.seq_of(uid) is not None]
    if not missing:
        return update
    changed, refused, before = list(update.changed), list(update.refused), dict(update.modseq_before)
    for row in session.store.message_rows(view.mailbox_id, missing, expunged=True):
        row = shown_row(view, row)
        if unchanged_since is not None and row.modseq > unchanged_since:
            refused.append(row.uid)
            continue
        new_flags = apply_flag_op(row.flags, op, flags)
        if new_flags != row.flags:
            view.held_flags[row.uid] = (new_flags, row.modseq + 1)
            changed.append(dataclasses.replace(row, flags=new_flags, modseq=row.modseq + 1))
            before[row.uid] = row.modseq
    changed.sort(key=lambda row: row.uid)
    return FlagUpdate(tuple(changed), tuple(sorted(refused)), before, update.missing)


def shown_row(view: View, row: MessageRow) -> MessageRow:
    """A message as this view shows it: with the flags this session stored on it after another session
    expunged it (see update_flags)."""
    held = view.held_flags.get(row.uid)
    return row if held is None else dataclasses.replace(row, flags=held[0], modseq=held[1])


def resolve(view: View, numbers: SequenceSet, *, is_uid: bool, saved: tuple[int, ...] = ()) -> list[tuple[int, int]]:
    """(sequence number, UID) of the messages a set names, ascending; absent UIDs are skipped.

    For sequence numbers out of range the caller decides (a BAD for FETCH/STORE, RFC 9051 §6.4.5).
    """
    uids = view.uids
    if not uids:
        return []
    if numbers.is_saved:
        return [(seq, uid) for uid in saved if (seq := view.seq_of(uid)) is not None]
    # Index spans, sorted and merged before any message is listed: work in the number of ranges plus the
    # messages named, however many ranges overlap (a client may send thousands of `1:4294967295`).
    spans: list[tuple[int, int]] = []
    top = uids[-1] if is_uid else len(uids)
    for low, high in numbers.ranges:
        low, high = sorted((top if low == STAR else low, top if high == STAR else high))
        if is_uid:
            spans.append((bisect.bisect_left(uids, low), bisect.bisect_right(uids, high)))
        else:
            spans.append((max(low, 1) - 1, min(high, top)))
    spans.sort()
    chosen: list[tuple[int, int]] = []
    end = 0
    for start, stop in spans:
        start = max(start, end)
        if start < stop:
            chosen.extend((i + 1, uids[i]) for i in range(start, stop))
            end = stop
    return chosen


def out_of_range(view: View, numbers: SequenceSet) -> bool:
    """A sequence set naming numbers beyond EXISTS (STAR aside): RFC 9051 §6.4.5 says BAD."""
    return any(
        (low != STAR and low > view.exists) or (high != STAR and high > view.exists) for low, high in numbers.ranges
    )


def format_set(numbers: Iterable[int]) -> str:
    """`1:3,7,9:10` for a collection of numbers."""
    ordered = sorted(set(numbers))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def format_flags(flags: Iterable[str]) -> str:
    return "(" + " ".join(sorted(flags, key=str.lower)) + ")"


def flags_lines(view: View) -> bytes:
    """FLAGS and PERMANENTFLAGS for the keywords the view knows (RFC 9051 §7.3.5, §7.1)."""
    flags = " ".join((*SYSTEM_FLAGS, *sorted(view.keywords.values(), key=str.lower)))
    permanent = (
        "* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n"
        if view.readonly
        else f"* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted\r\n"
    )
    return f"* FLAGS ({flags})\r\n{permanent}".encode()


def keyword_lines(view: View, rows: Iterable[MessageRow]) -> Iterator[bytes]:
    """FLAGS and PERMANENTFLAGS again when `rows` hold keywords the client has not been told of: RFC
    9051 §7.3.5 wants them announced before any response that uses them."""
    known = view.keywords
    new = {flag.lower(): flag for row in rows for flag in row.flags if flag[:1] != "\\" and flag.lower() not in known}
    if new:
        known.update(new)
        yield flags_lines(view)


def enable_condstore(session: Session) -> Iterator[bytes]:
    """Put CONDSTORE in effect for a FETCH, SEARCH or STORE that uses it. RFC 7162 §3.1: the first
    such command in a selected mailbox gets `* OK [HIGHESTMODSEQ]`, the MODSEQ the client has been told
    everything up to (STATUS HIGHESTMODSEQ is about another mailbox and does not send it)."""
    session.condstore = True
    view = session.selected
    if view is not None and not view.condstore_announced:
        view.condstore_announced = True
        yield f"* OK [HIGHESTMODSEQ {view.modseq}] Highest\r\n".encode()


def fetch_flags_line(session: Session, seq: int, row: MessageRow, *, with_uid: bool) -> bytes:
    items = [f"UID {row.uid}"] if with_uid else []
    view = session.selected
    items.append(f"FLAGS {format_flags(session.shown_flags(view, row) if view is not None else row.flags)}")
    if session.uses_condstore():
        items.append(f"MODSEQ ({row.modseq})")
    return f"* {seq} FETCH ({' '.join(items)})\r\n".encode()


def expunge_lines(session: Session, view: View, gone: Iterable[int]) -> Iterator[bytes]:
    """Remove UIDs from the view, telling the client with EXPUNGE (or VANISHED under QRESYNC)."""
    present = [uid for uid in sorted(set(gone)) if view.seq_of(uid) is not None]
    if not present:
        return
    recent = None if session.rev2 else view.recent_count()
    for context in list(session.contexts.values()):
        yield from context.expunging(session, present)
    if session.qresync:
        for uid in present:
            del view.uids[bisect.bisect_left(view.uids, uid)]
            view.own_changes.pop(uid, None)
            view.held_flags.pop(uid, None)
        yield f"* VANISHED {format_set(present)}\r\n".encode()
    else:
        for uid in reversed(present):  # highest first: the numbers sent stay valid without renumbering
            seq = view.seq_of(uid)
            assert seq is not None
            del view.uids[seq - 1]
            view.own_changes.pop(uid, None)
            view.held_flags.pop(uid, None)
            yield f"* {seq} EXPUNGE\r\n".encode()
    # RFC 3501 §7.3.2: RECENT whenever the mailbox's size changes, so a rev1 client's count of recent
    # messages stays right when recent ones are expunged (Dovecot sends it too).
    if recent is not None and view.recent_count() != recent:
        yield f"* {view.recent_count()} RECENT\r\n".encode()


def sync(session: Session, *, allow_expunge: bool) -> Iterator[bytes]:
    """Untagged responses for everything that changed since the client last heard: EXISTS for new mail,
    FETCH FLAGS for flags changed elsewhere, and (when allowed) EXPUNGE/VANISHED."""
    view = session.selected
    if view is None:
        return
    try:
        changes = session.store.changes_since(view.mailbox_id, view.modseq)
    except NoSuchMailbox:
        view.deleted = True  # the command (or push) ends with `* BYE`: see `mailbox_deleted`
        return
    if changes.highestmodseq == view.modseq and not changes.vanished:
        return
    if allow_expunge and changes.vanished:
        yield from expunge_lines(session, view, changes.vanished)
    # While expunges are held back, view.modseq stays behind them and the store returns again what was
    # reported since: skip that, so new mail and flags are reported once.
    rows = [row for row in changes.changed if row.modseq > view.flags_modseq]
    yield from keyword_lines(view, rows)
    new_uids = [row.uid for row in rows if not view.uids or row.uid > view.uids[-1]]
    flag_rows = [row for row in rows if view.uids and row.uid <= view.uids[-1]]
    if new_uids:
        view.uids.extend(new_uids)
        yield f"* {view.exists} EXISTS\r\n".encode()
        if not session.rev2:  # RFC 3501 §7.3.2: RECENT when the mailbox grows
            session.claim_recent(view, max(changes.first_recent_uid, new_uids[0]), new_uids[-1] + 1)
            yield f"* {view.recent_count()} RECENT\r\n".encode()
    for row in flag_rows:
        if view.own_changes.get(row.uid) == row.modseq:
            continue
        seq = view.seq_of(row.uid)
        if seq is not None:
            yield fetch_flags_line(session, seq, row, with_uid=True)
    view.flags_modseq = changes.highestmodseq
    if allow_expunge or not changes.vanished:
        view.reported(changes.highestmodseq)
        view.own_changes.clear()
    # Else the expunges stay pending: view.modseq is not advanced past them, so the next sync that may
    # report expunges finds them again.
    # Updating searches last: ADDTO must follow the EXISTS that makes its numbers valid (RFC 5267 §4.3.3).
    for context in list(session.contexts.values()):
        yield from context.refresh(session)


def mailbox_deleted(session: Session) -> Done | None:
    """How a command or push ends when another session deleted the selected mailbox: as Dovecot 2.3
    does, `* BYE` and the connection closes (RFC 9051 names no response for this; a client that goes on
    with the old view would get answers for messages that are gone)."""
    view = session.selected
    if view is None or not view.deleted:
        return None
    session.select(None)
    return Done(Status.NO, "Mailbox deleted", bye=DELETED_BYE)


def chunked(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Join small responses into batches of about CHUNK octets."""
    buffer: list[bytes] = []
    size = 0
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= CHUNK:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)

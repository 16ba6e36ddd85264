"""SEARCH, UID SEARCH (RFC 9051 §6.4.4, ESEARCH RFC 4731, SEARCHRES RFC 5182, CONDSTORE), SORT and THREAD
(RFC 5256, SORT=DISPLAY RFC 5957). IMAP keys become store criteria here; sequence numbers become UIDs
through the view."""

from __future__ import annotations

import datetime
from array import array
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kartero.imap import thread as rfc5256
from kartero.imap.commands.view import (
    Done,
    ResultContext,
    Session,
    View,
    chunked,
    enable_condstore,
    format_set,
    sync,
)
from kartero.imap.response import Status
from kartero.imap.syntax import (
    STAR,
    CancelUpdate,
    SAnd,
    Search,
    SearchKey,
    SeqKey,
    SequenceSet,
    SKey,
    SNot,
    SOr,
    SortCommand,
    ThreadCommand,
)
from kartero.store import criteria as c
from kartero.store.interface import NoSuchMailbox, blob_of_email_id

Handler = Generator[bytes, None, Done]
_T = TypeVar("_T")
CHARSETS = frozenset({"UTF-8", "US-ASCII"})


def to_criterion(session: Session, view: View, key: SearchKey) -> c.Criterion:
    match key:
        case SAnd(keys=keys):
            return c.And(tuple(to_criterion(session, view, k) for k in keys))
        case SOr(left=left, right=right):
            return c.Or(to_criterion(session, view, left), to_criterion(session, view, right))
        case SNot(key=inner):
            return c.Not(to_criterion(session, view, inner))
        case SeqKey(numbers=numbers, is_uid=is_uid):
            return _uid_ranges(session, view, numbers, is_uid=is_uid)
        case SKey(name="RECENT" | "NEW" | "OLD" as name):
            return _recent(session, view, name)
        case SKey(name=name, args=args):
            return _leaf(name, args)
    raise TypeError(f"unknown search key {key!r}")


def _uid_ranges(session: Session, view: View, numbers: SequenceSet, *, is_uid: bool) -> c.Uids:
    """The UIDs a sequence set names, as ranges: work in the number of ranges, not of the messages they
    cover (a client may send thousands of `1:4294967295`). A message sequence range maps to the UIDs
    between its ends; a UID range is kept as it is, as the search keeps only messages in the view."""
    uids = view.uids
    if numbers.is_saved:
        return c.Uids.of(uid for uid in session.saved if view.seq_of(uid) is not None)
    if not uids:
        return c.Uids(())
    top = uids[-1] if is_uid else len(uids)
    spans: list[tuple[int, int]] = []
    for low, high in numbers.ranges:
        low, high = sorted((top if low == STAR else low, top if high == STAR else high))
        if is_uid:
            spans.append((low, high))
        elif low <= top:
            spans.append((uids[low - 1], uids[min(high, top) - 1]))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for low, high in spans:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return c.Uids(tuple(merged))


def _recent(session: Session, view: View, name: str) -> c.Criterion:
    """RFC 3501 §6.4.4: RECENT is \\Recent, NEW is RECENT UNSEEN, OLD is NOT RECENT. IMAP4rev2 has no
    \\Recent (RFC 9051 Appendix E): nothing is recent there."""
    recent = c.Uids(tuple((low, high - 1) for low, high in view.recent) if not session.rev2 else ())
    if name == "OLD":
        return c.Not(recent)
    if name == "NEW":
        return c.And((recent, c.Flag("\\Seen", False)))
    return recent


_DATE_OPS = {"BEFORE": c.DateOp.BEFORE, "ON": c.DateOp.ON, "SINCE": c.DateOp.SINCE}


def _leaf(name: str, args: tuple[object, ...]) -> c.Criterion:
    match name:
        case "ALL":
            return c.All()
        case "NONE":
            return c.Not(c.All())
        case "FLAG":
            flag, present = args
            return c.Flag(str(flag), bool(present))
        case "HEADER":
            field, text = args
            return c.Header(str(field), str(text))
        case "BODY":
            return c.Body(str(args[0]))
        case "TEXT":
            return c.Text(str(args[0]))
        case "LARGER":
            return c.Size(larger_than=int(str(args[0])))
        case "SMALLER":
            return c.Size(smaller_than=int(str(args[0])))
        case "MODSEQ":
            return c.ModSeq(int(str(args[0])))
        case "EMAILID":
            blob_id = blob_of_email_id(str(args[0]))
            return c.Not(c.All()) if blob_id is None else c.Blob(blob_id)
        case "THREADID":  # no message has a THREADID (FETCH THREADID is NIL: RFC 8474 §5.2)
            return c.Not(c.All())
    date = args[0]
    assert isinstance(date, datetime.date)
    if name.startswith("SENT"):
        return c.SentDate(_DATE_OPS[name[4:]], date)
    if name.startswith("SAVED"):
        return c.SavedDate(_DATE_OPS[name[5:]], date)
    return c.InternalDate(_DATE_OPS[name], date)


def _uses_modseq(key: SearchKey) -> bool:
    match key:
        case SAnd(keys=keys):
            return any(_uses_modseq(k) for k in keys)
        case SOr(left=left, right=right):
            return _uses_modseq(left) or _uses_modseq(right)
        case SNot(key=inner):
            return _uses_modseq(inner)
        case SKey(name="MODSEQ"):
            return True
    return False


def search(session: Session, cmd: Search, tag: str) -> Handler:
    view = session.selected
    assert view is not None
    if cmd.charset is not None and cmd.charset not in CHARSETS:
        return Done(Status.NO, "Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")
    if cmd.update and tag in live_contexts(session):
        return Done(Status.BAD, "Tag reuse")  # RFC 5267 §4.3: updates are told apart by the tag
    uses_modseq = _uses_modseq(cmd.key)
    if uses_modseq:
        yield from enable_condstore(session)
    criterion = to_criterion(session, view, cmd.key)
    rows = session.store.search(view.mailbox_id, criterion)
    in_view = [row for row in rows if view.seq_of(row.uid) is not None]
    numbers = [row.uid if cmd.is_uid else view.seq_of(row.uid) or 0 for row in in_view]
    returns = cmd.returns
    if returns is None and session.rev2:
        returns = ()  # IMAP4rev2 answers SEARCH with ESEARCH (RFC 9051 §6.4.4)
    if returns is None:
        line = "* SEARCH" + "".join(f" {n}" for n in numbers)
        if uses_modseq and numbers:
            line += f" (MODSEQ {max(row.modseq for row in in_view)})"
        yield from chunked([line.encode() + b"\r\n"])
    else:
        options = _result_options(returns, cmd.partial)
        # RFC 4731 §3.1 (SAVE) and RFC 7162 §3.1.5 (MODSEQ): with MIN and/or MAX alone, the result is
        # those messages, not every match.
        returned = _returned(in_view, options)
        if "SAVE" in options:
            session.saved = tuple(row.uid for row in returned)
        parts = [f'(TAG "{tag}")']
        if cmd.is_uid:
            parts.append("UID")
        parts += _result_parts(numbers, options, cmd.partial)
        if uses_modseq and returned:
            parts.append(f"MODSEQ {max(row.modseq for row in returned)}")
        if options - {"SAVE"}:
            yield f"* ESEARCH {' '.join(parts)}\r\n".encode()
    if cmd.update:
        yield from _start_updates(session, tag, _UpdateContext(tag, cmd.is_uid, view, criterion, None,
                                                               array("I", (row.uid for row in in_view))))  # fmt: skip
    yield from chunked(sync(session, allow_expunge=cmd.is_uid))
    return Done(Status.OK, "UID SEARCH completed" if cmd.is_uid else "SEARCH completed")


def _result_options(returns: tuple[str, ...], partial: tuple[int, int] | None) -> set[str]:
    """The ESEARCH results asked for: RETURN () (or only UPDATE/CONTEXT) means ALL (RFC 4731 §3.1)."""
    options = set(returns)
    if partial is not None:
        options.add("PARTIAL")
    return options or {"ALL"}


def _returned(items: list[_T], options: set[str]) -> list[_T]:
    """The messages a result stands for, for SAVE (RFC 5182 §2.4) and MODSEQ (RFC 7162 §3.1.5): the MIN
    and/or MAX one when only they are asked for, else every match. `items` in result order (mailbox
    order, or the SORT order)."""
    if items and options & {"MIN", "MAX"} and not options & {"ALL", "COUNT", "PARTIAL"}:
        picks = [items[0]] if "MIN" in options else []
        if "MAX" in options and (len(items) > 1 or not picks):
            picks.append(items[-1])
        return picks
    return items


def _result_parts(numbers: list[int], options: set[str], partial: tuple[int, int] | None) -> list[str]:
    """MIN, MAX, COUNT, ALL and PARTIAL of ESEARCH/ESORT (RFC 4731 §3.1, RFC 5267 §3.1 and §4.4) for
    `numbers` in result order: for SORT, MIN and MAX are the first and last sorted, and ALL keeps the sort
    order (a range only where the numbers rise one by one, §3.2)."""
    parts: list[str] = []
    if numbers and "MIN" in options:
        parts.append(f"MIN {numbers[0]}")
    if numbers and "MAX" in options:
        parts.append(f"MAX {numbers[-1]}")
    if "COUNT" in options:
        parts.append(f"COUNT {len(numbers)}")
    if numbers and "ALL" in options:
        parts.append(f"ALL {format_ordered(numbers)}")
    if partial is not None:
        first, last = partial
        window = numbers[min(first, last) - 1 : max(first, last)]
        parts.append(f"PARTIAL ({first}:{last} {format_ordered(window) if window else 'NIL'})")
    return parts


def format_ordered(numbers: Sequence[int]) -> str:
    """A sequence-set that keeps the order of `numbers`: runs rising by one become ranges (`1:3,7,5`)."""
    parts: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(parts)


def sort(session: Session, cmd: SortCommand, tag: str) -> Handler:
    view = session.selected
    assert view is not None
    if cmd.charset not in CHARSETS:
        return Done(Status.NO, "Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")
    if cmd.update and tag in live_contexts(session):
        return Done(Status.BAD, "Tag reuse")
    criterion = to_criterion(session, view, cmd.key)
    keys = tuple(c.Sort(c.SortKey[name], reverse) for name, reverse in cmd.keys)
    uids = [uid for uid in session.store.sort(view.mailbox_id, keys, criterion) if view.seq_of(uid) is not None]
    numbers = [uid if cmd.is_uid else view.seq_of(uid) or 0 for uid in uids]
    if cmd.returns is None:
        yield ("* SORT" + "".join(f" {n}" for n in numbers) + "\r\n").encode()
    else:  # ESORT (RFC 5267 §3): the results in an ESEARCH response
        options = _result_options(cmd.returns, cmd.partial)
        if "SAVE" in options:
            session.saved = tuple(_returned(uids, options))
        parts = [f'(TAG "{tag}")', *(["UID"] if cmd.is_uid else []), *_result_parts(numbers, options, cmd.partial)]
        if options - {"SAVE"}:
            yield f"* ESEARCH {' '.join(parts)}\r\n".encode()
    if cmd.update:
        yield from _start_updates(session, tag, _UpdateContext(tag, cmd.is_uid, view, criterion, keys,
                                                               array("I", uids)))  # fmt: skip
    yield from chunked(sync(session, allow_expunge=cmd.is_uid))
    return Done(Status.OK, "UID SORT completed" if cmd.is_uid else "SORT completed")


# -- CONTEXT=SEARCH and CONTEXT=SORT: results kept up to date (RFC 5267 §4.3) ---------------------------

# Updating searches a session may keep: each is run again whenever the mailbox changes. RFC 5267 §4.3.1
# asks for at least one; past this many the client gets `NO [NOUPDATE]` and the results only.
MAX_CONTEXTS = 5


def live_contexts(session: Session) -> dict[str, ResultContext]:
    """The session's updating searches, forgetting those of a mailbox no longer selected (§4.3: updates
    cease when the mailbox is no longer selected)."""
    contexts = session.contexts
    for tag in [t for t, context in contexts.items() if not (isinstance(context, _UpdateContext)
                                                             and context.is_live(session))]:  # fmt: skip
        del contexts[tag]
    return contexts


def _start_updates(session: Session, tag: str, context: _UpdateContext) -> Iterator[bytes]:
    contexts = live_contexts(session)
    if len(contexts) >= MAX_CONTEXTS:
        yield f'* NO [NOUPDATE "{tag}"] Too many updating searches\r\n'.encode()
    else:
        contexts[tag] = context


@dataclass(eq=False, slots=True)
class _UpdateContext:
    """The results of one SEARCH or SORT with UPDATE, as the client knows them: UIDs in result order.
    A SEARCH context reports changes at position 0 (§4.3.3: mailbox order); a SORT context at the
    positions where the client's list changes. Sort keys never change for a message, so the results
    that stay keep their relative order, and removals then additions (each pair in ascending position)
    turn the old list into the new one."""

    tag: str
    is_uid: bool
    view: View
    criterion: c.Criterion  # fixed when the command ran: sequence numbers in it meant those messages then
    sort_keys: tuple[c.Sort, ...] | None  # None: a SEARCH
    uids: array[int]

    def is_live(self, session: Session) -> bool:
        return session.selected is self.view

    def expunging(self, session: Session, uids: Sequence[int]) -> Iterator[bytes]:
        if not self.is_live(session):
            return
        gone = set(uids)
        removed = [(i, uid) for i, uid in enumerate(self.uids) if uid in gone]
        if removed:
            self.uids = array("I", (uid for uid in self.uids if uid not in gone))
            yield from self._line(session, removed, [])

    def refresh(self, session: Session) -> Iterator[bytes]:
        if not self.is_live(session):
            return
        view = self.view
        try:
            if self.sort_keys is None:
                found = [row.uid for row in session.store.search(view.mailbox_id, self.criterion)]
            else:
                found = session.store.sort(view.mailbox_id, self.sort_keys, self.criterion)
        except NoSuchMailbox:
            return
        new = [uid for uid in found if view.seq_of(uid) is not None]
        if len(new) == len(self.uids) and all(a == b for a, b in zip(new, self.uids, strict=True)):
            return
        old_set, new_set = set(self.uids), set(new)
        removed = [(i, uid) for i, uid in enumerate(self.uids) if uid not in new_set]
        added = [(i, uid) for i, uid in enumerate(new) if uid not in old_set]
        self.uids = array("I", new)
        yield from self._line(session, removed, added)

    def _line(self, session: Session, removed: list[tuple[int, int]], added: list[tuple[int, int]]) -> Iterator[bytes]:
        """`* ESEARCH (TAG "t") [UID] REMOVEFROM (...) ADDTO (...)`; `removed` holds (old index, UID),
        `added` (new index, UID), each ascending."""
        view = self.view
        parts = []
        for name, changes, shifts in (("REMOVEFROM", removed, True), ("ADDTO", added, False)):
            numbered = [(i, n) for i, uid in changes if (n := uid if self.is_uid else view.seq_of(uid)) is not None]
            if not numbered:
                continue
            if self.sort_keys is None:
                parts.append(f"{name} (0 {format_set(n for _, n in numbered)})")
                continue
            pairs = position_pairs(numbered, removing=shifts)
            parts.append(f"{name} ({' '.join(f'{position} {format_ordered(run)}' for position, run in pairs)})")
        if parts:
            uid = " UID" if self.is_uid else ""
            yield f'* ESEARCH (TAG "{self.tag}"){uid} {" ".join(parts)}\r\n'.encode()


def position_pairs(changes: Sequence[tuple[int, int]], *, removing: bool) -> list[tuple[int, list[int]]]:
    """(context position, numbers) pairs for a SORT context's REMOVEFROM or ADDTO (RFC 5267 §4.3.3,
    §4.3.4), from (list index, number) changes in ascending index: each run of neighbouring indexes is one
    pair. The client applies the pairs in order (§4.3.2), so a removal run starts where the runs removed
    before it left it; additions carry their index in the new list, where every earlier result already is."""
    pairs: list[tuple[int, list[int]]] = []
    k = 0
    while k < len(changes):
        j = k
        while j + 1 < len(changes) and changes[j + 1][0] == changes[j][0] + 1:
            j += 1
        pairs.append((changes[k][0] + 1 - (k if removing else 0), [n for _, n in changes[k : j + 1]]))
        k = j + 1
    return pairs


def cancel_update(session: Session, cmd: CancelUpdate) -> Handler:
    """CANCELUPDATE (RFC 5267 §4.3.5): no more updates for these searches."""
    contexts = live_contexts(session)
    unknown = [tag for tag in cmd.tags if tag not in contexts]
    if unknown:
        return Done(Status.BAD, "No updating search has that tag")  # not echoed: a literal may hold CRLF
    for tag in cmd.tags:
        contexts.pop(tag, None)
    yield from chunked(sync(session, allow_expunge=True))
    return Done(Status.OK, "No further updates")


def thread(session: Session, cmd: ThreadCommand) -> Handler:
    """THREAD (RFC 5256): the store reads each match's subject, dates and reference fields (in this
    worker thread, a header at a time); the threading itself is kartero.imap.thread."""
    view = session.selected
    assert view is not None
    if cmd.charset not in CHARSETS:
        return Done(Status.NO, "Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")
    criterion = to_criterion(session, view, cmd.key)
    messages = []
    for fields in session.store.thread_fields(view.mailbox_id, criterion):
        seq = view.seq_of(fields.uid)
        if seq is None:
            continue
        references = rfc5256.message_ids(fields.references) or rfc5256.message_ids(fields.in_reply_to)[:1]
        own_id = rfc5256.message_ids(fields.message_id)[:1]
        messages.append(rfc5256.ThreadMessage(
            fields.uid if cmd.is_uid else seq, fields.sent_date, fields.base_subject,
            rfc5256.is_reply_or_forward(fields.subject), own_id[0] if own_id else "", tuple(references),
        ))  # fmt: skip
    threads = rfc5256.references(messages) if cmd.algorithm == "REFERENCES" else rfc5256.ordered_subject(messages)
    yield f"* THREAD {rfc5256.format_threads(threads)}".rstrip().encode() + b"\r\n"
    yield from chunked(sync(session, allow_expunge=cmd.is_uid))
    return Done(Status.OK, "UID THREAD completed" if cmd.is_uid else "THREAD completed")

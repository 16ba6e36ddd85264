"""SEARCH, UID SEARCH (RFC 9051 §6.4.4, ESEARCH RFC 4731, SEARCHRES RFC 5182, CONDSTORE), SORT and THREAD
(RFC 5256, SORT=DISPLAY RFC 5957). IMAP keys become store criteria here; sequence numbers become UIDs
through the view."""

from __future__ import annotations

import datetime
from collections.abc import Generator

from kartero.imap import thread as rfc5256
from kartero.imap.commands.view import Done, Session, View, chunked, enable_condstore, format_set, sync
from kartero.imap.response import Status
from kartero.imap.syntax import (
    STAR,
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
from kartero.store.interface import blob_of_email_id

Handler = Generator[bytes, None, Done]
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
        options = set(returns) or {"ALL"}
        # RFC 4731 §3.1 (SAVE) and RFC 7162 §3.1.5 (MODSEQ): with MIN and/or MAX alone, the result is
        # those messages, not every match.
        returned = in_view
        if options & {"MIN", "MAX"} and not options & {"ALL", "COUNT"}:
            returned = []
            if "MIN" in options and in_view:
                returned.append(in_view[0])
            if "MAX" in options and in_view:
                returned.append(in_view[-1])
        if "SAVE" in options:
            session.saved = tuple(row.uid for row in returned)
        parts = [f'(TAG "{tag}")']
        if cmd.is_uid:
            parts.append("UID")
        if numbers and "MIN" in options:
            parts.append(f"MIN {min(numbers)}")
        if numbers and "MAX" in options:
            parts.append(f"MAX {max(numbers)}")
        if "COUNT" in options:
            parts.append(f"COUNT {len(numbers)}")
        if numbers and "ALL" in options:
            parts.append(f"ALL {format_set(numbers)}")
        if uses_modseq and returned:
            parts.append(f"MODSEQ {max(row.modseq for row in returned)}")
        if options - {"SAVE"}:
            yield f"* ESEARCH {' '.join(parts)}\r\n".encode()
    yield from chunked(sync(session, allow_expunge=cmd.is_uid))
    return Done(Status.OK, "UID SEARCH completed" if cmd.is_uid else "SEARCH completed")


def sort(session: Session, cmd: SortCommand) -> Handler:
    view = session.selected
    assert view is not None
    if cmd.charset not in CHARSETS:
        return Done(Status.NO, "Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")
    criterion = to_criterion(session, view, cmd.key)
    keys = tuple(c.Sort(c.SortKey[name], reverse) for name, reverse in cmd.keys)
    uids = session.store.sort(view.mailbox_id, keys, criterion)
    numbers = [uid if cmd.is_uid else view.seq_of(uid) for uid in uids if view.seq_of(uid) is not None]
    yield ("* SORT" + "".join(f" {n}" for n in numbers) + "\r\n").encode()
    yield from chunked(sync(session, allow_expunge=cmd.is_uid))
    return Done(Status.OK, "UID SORT completed" if cmd.is_uid else "SORT completed")


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

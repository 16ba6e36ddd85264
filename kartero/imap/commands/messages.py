"""STORE, COPY and MOVE with their UID forms (RFC 9051 §6.4.6-6.4.8, UIDPLUS RFC 4315, MOVE RFC 6851,
CONDSTORE UNCHANGEDSINCE RFC 7162 §3.1.3)."""

from __future__ import annotations

from collections.abc import Generator

from kartero.imap.commands import junk, notify, quota
from kartero.imap.commands.view import (
    Done,
    Session,
    chunked,
    enable_condstore,
    expunge_lines,
    fetch_flags_line,
    format_set,
    keyword_lines,
    out_of_range,
    resolve,
    sync,
    update_flags,
)
from kartero.imap.response import Status
from kartero.imap.syntax import CopyMove, StoreCommand
from kartero.store.interface import FlagOp, NoSuchMailbox

Handler = Generator[bytes, None, Done]
_OPS = {"+": FlagOp.ADD, "-": FlagOp.REMOVE, "": FlagOp.REPLACE}


def store_flags(session: Session, cmd: StoreCommand) -> Handler:
    view = session.selected
    assert view is not None
    if view.readonly:
        return Done(Status.NO, "Mailbox is read-only", "READ-ONLY")
    if not cmd.is_uid and not cmd.numbers.is_saved and view.exists and out_of_range(view, cmd.numbers):
        return Done(Status.BAD, "Message sequence number out of range")
    if cmd.unchanged_since is not None:
        yield from enable_condstore(session)
    pairs = resolve(view, cmd.numbers, is_uid=cmd.is_uid, saved=session.saved)
    update = update_flags(session, view, [uid for _, uid in pairs], _OPS[cmd.op], cmd.flags, cmd.unchanged_since)
    refused = update.refused
    lines = list(keyword_lines(view, update.changed))
    # RFC 7162 §3.2.4: under CONDSTORE every untagged FETCH carries UID and MODSEQ, a STORE's included.
    with_uid = cmd.is_uid or session.uses_condstore()
    for row in update.changed:
        seq = view.seq_of(row.uid)
        # RFC 7162 §3.1.3: with UNCHANGEDSINCE the FETCH is sent even for .SILENT.
        if seq is not None and (not cmd.silent or cmd.unchanged_since is not None):
            lines.append(fetch_flags_line(session, seq, row, with_uid=with_uid))
            view.own_changes[row.uid] = row.modseq
        elif (before := update.modseq_before[row.uid]) <= view.modseq or view.own_changes.get(row.uid) == before:
            # .SILENT spares the client the echo of its own change only: when another session changed the
            # message after what the client last heard, sync() must send the flags as they are now.
            view.own_changes[row.uid] = row.modseq
    if update.changed and (kind := junk.flag_verdict(_OPS[cmd.op], cmd.flags)) is not None:
        junk.report_rows(session, update.changed, kind)
    yield from chunked(lines)
    yield from chunked(sync(session, allow_expunge=cmd.is_uid))
    if refused:
        numbers = refused if cmd.is_uid else [view.seq_of(uid) or 0 for uid in refused]
        return Done(Status.OK, "Some messages were modified meanwhile", f"MODIFIED {format_set(numbers)}")
    return Done(Status.OK, "UID STORE completed" if cmd.is_uid else "STORE completed")


def copy_move(session: Session, cmd: CopyMove) -> Handler:
    view = session.selected
    assert view is not None
    is_move = cmd.name == "MOVE"
    if is_move and view.readonly:
        return Done(Status.NO, "Mailbox is read-only", "READ-ONLY")
    if not cmd.is_uid and not cmd.numbers.is_saved and view.exists and out_of_range(view, cmd.numbers):
        return Done(Status.BAD, "Message sequence number out of range")
    target = session.store.get_mailbox(session.account_id, cmd.mailbox)
    if target is None:
        return Done(Status.NO, "No such mailbox", "TRYCREATE")
    pairs = resolve(view, cmd.numbers, is_uid=cmd.is_uid, saved=session.saved)
    # A MOVE stays within the account: its usage does not change, so it is allowed even when full.
    if not is_move and pairs and (left := quota.room(session)) is not None:
        sizes = session.store.message_rows(view.mailbox_id, [uid for _, uid in pairs])
        if sum(row.size for row in sizes) > left:
            return quota.OVERQUOTA
    try:
        result = session.store.copy_messages(view.mailbox_id, [uid for _, uid in pairs], target.id, move=is_move,
                                             all_or_none=True)  # fmt: skip
    except NoSuchMailbox:
        return Done(Status.NO, "No such mailbox", "TRYCREATE")
    copied = result.pairs
    notify.note_written(session, target.id, [result.modseq] if copied else [])
    junk.report_copied(session, view.name, target, [d for _, d in copied])
    if pairs and not copied:
        # Another session expunged a message the client still sees. As Dovecot does (RFC 2180 §4.4.1):
        # nothing is copied and the pending EXPUNGE comes first, so the client knows what to try again.
        yield from chunked(sync(session, allow_expunge=True))
        return Done(Status.NO, "Some of the requested messages no longer exist", "EXPUNGEISSUED")
    verb = ("UID " if cmd.is_uid else "") + cmd.name
    if not copied:
        yield from chunked(sync(session, allow_expunge=cmd.is_uid))
        return Done(Status.OK, f"{verb} completed (no messages)")
    code = f"COPYUID {target.uidvalidity} {format_set(s for s, _ in copied)} {format_set(d for _, d in copied)}"
    if not is_move:
        yield from chunked(sync(session, allow_expunge=cmd.is_uid))
        return Done(Status.OK, f"{verb} completed", code)
    # RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges.
    yield f"* OK [{code}] Moved\r\n".encode()
    yield from chunked(expunge_lines(session, view, [s for s, _ in copied]))
    yield from chunked(sync(session, allow_expunge=True))
    return Done(Status.OK, f"{verb} completed")


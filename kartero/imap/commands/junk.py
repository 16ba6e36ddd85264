"""Users teaching the spam filter over IMAP (DESIGN.md §1b `[spam] learn`): which COPY, MOVE and STORE
say "this is spam" or "this is not".

- A message copied or moved into Junk from any other mailbox is spam; out of Junk into any mailbox but
  Trash it is ham (deleting a spam is not a verdict on it). APPEND into Junk says nothing: a client
  uploading its own copy of a folder teaches the filter nothing about mail this server received.
- `$Junk` set by STORE is spam, `$NotJunk` ham (the keywords Thunderbird, Apple Mail and the IANA IMAP
  keyword registry use); a STORE setting both says nothing.

Junk and Trash are the account's mailboxes with the \\Junk and \\Trash special use (RFC 6154; every
account gets "Junk" and "Trash" at creation), or named so when no mailbox has the attribute. The reports
only go into `Session.spam_reports`: the learner sends them later, so the command never waits for the
spam filter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kartero.imap.commands.view import Session
from kartero.store.interface import FlagOp, Mailbox, MessageRow, SpamClass, SpamReport

JUNK_KEYWORD = "$junk"  # compared case-folded: keywords are case-insensitive (RFC 9051 §2.3.2)
NOT_JUNK_KEYWORD = "$notjunk"
# One command reports at most this many messages (the last ones): a user moving a whole mailbox into
# Junk is cleaning up, and the learner's queue would drop the rest anyway.
MAX_REPORTS_PER_COMMAND = 1000


def _is_special(mailbox: Mailbox, attribute: str, name: str, mailboxes: Sequence[Mailbox]) -> bool:
    if mailbox.special_use is not None:
        return mailbox.special_use == attribute
    return mailbox.name.lower() == name and not any(m.special_use == attribute for m in mailboxes)


def copy_verdict(session: Session, source_name: str, target: Mailbox) -> SpamClass | None:
    """What copying or moving from the mailbox `source_name` into `target` says, if anything."""
    if source_name == target.name:
        return None
    mailboxes = session.store.list_mailboxes(session.account_id)
    source = next((m for m in mailboxes if m.name == source_name), None)
    if source is None:
        return None
    into_junk = _is_special(target, "\\Junk", "junk", mailboxes)
    from_junk = _is_special(source, "\\Junk", "junk", mailboxes)
    if into_junk and not from_junk:
        return SpamClass.SPAM
    if from_junk and not into_junk and not _is_special(target, "\\Trash", "trash", mailboxes):
        return SpamClass.HAM
    return None


def flag_verdict(op: FlagOp, flags: Iterable[str]) -> SpamClass | None:
    """What a STORE of `flags` with `op` says: setting $Junk is spam, setting $NotJunk ham."""
    if op is FlagOp.REMOVE:
        return None
    folded = {flag.lower() for flag in flags}
    junk, not_junk = JUNK_KEYWORD in folded, NOT_JUNK_KEYWORD in folded
    if junk == not_junk:
        return None
    return SpamClass.SPAM if junk else SpamClass.HAM


def report_rows(session: Session, rows: Sequence[MessageRow], kind: SpamClass) -> None:
    """Hand the messages of `rows` to the learner as `kind` (nothing when learning is off)."""
    if session.spam_reports is None or not rows:
        return
    session.spam_reports.report([SpamReport(session.user, row.blob_id, row.size, kind)
                                 for row in rows[-MAX_REPORTS_PER_COMMAND:]])  # fmt: skip


def report_copied(session: Session, source_name: str, target: Mailbox, new_uids: Sequence[int]) -> None:
    """After a COPY or MOVE into `target` made `new_uids` there: report them if the move says anything."""
    if session.spam_reports is None or not new_uids:
        return
    kind = copy_verdict(session, source_name, target)
    if kind is not None:
        report_rows(session, session.store.message_rows(target.id, new_uids[-MAX_REPORTS_PER_COMMAND:]), kind)

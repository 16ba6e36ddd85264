"""IMAP command handlers: each runs in a worker thread against the store (through store/interface.py
only) and is a generator that yields untagged responses in batches and returns how the command ends.

Every command in the selected state ends with the updates the client has not heard yet (EXISTS, flag
changes, and expunges where RFC 9051 §7.5.1 allows them).
"""

from __future__ import annotations

from collections.abc import Generator

from kartero.imap.commands import fetch, mailbox, messages, metadata, notify, quota, search
from kartero.imap.commands.view import Done, Session, mailbox_deleted
from kartero.imap.response import Status
from kartero.imap.state import ImapState
from kartero.imap.syntax import (
    Append,
    CancelUpdate,
    Command,
    CopyMove,
    Fetch,
    GetMetadata,
    ListCommand,
    MailboxCommand,
    Notify,
    QuotaCommand,
    Refused,
    Rename,
    Search,
    Select,
    SetMetadata,
    Simple,
    SortCommand,
    StoreCommand,
    ThreadCommand,
    UidExpunge,
)
from kartero.imap.syntax import (
    Status as StatusCommand,
)

Handler = Generator[bytes, None, Done]


def run(session: Session, tag: str, command: Command, *, append_limit: int) -> Handler:
    """The handler for `command`; the caller drives it to StopIteration and sends what it yields."""
    return _ended_by_deletion(session, _handler(session, tag, command, append_limit=append_limit))


def _ended_by_deletion(session: Session, handler: Handler) -> Handler:
    done = yield from handler
    return mailbox_deleted(session) or done


def _handler(session: Session, tag: str, command: Command, *, append_limit: int) -> Handler:
    if session.selected is None and isinstance(command, (Fetch, StoreCommand, CopyMove, Search, SortCommand,
                                                         ThreadCommand, UidExpunge)):  # fmt: skip
        return _refuse("No mailbox selected")
    match command:
        case Select():
            return mailbox.select(session, command)
        case MailboxCommand(name="CREATE"):
            return mailbox.create(session, command)
        case MailboxCommand(name="DELETE"):
            return mailbox.delete(session, command)
        case MailboxCommand():
            return mailbox.subscribe(session, command)
        case Rename():
            return mailbox.rename(session, command)
        case ListCommand():
            return mailbox.list_mailboxes(session, command)
        case StatusCommand():
            return mailbox.status(session, command)
        case Append():
            return mailbox.append(session, command, append_limit)
        case Simple(name="CLOSE" | "UNSELECT"):
            return mailbox.close(session, command)
        case Simple(name="EXPUNGE") | UidExpunge():
            return mailbox.expunge(session, command)
        case Simple(name="NOOP" | "CHECK"):
            return mailbox.noop(session, command)
        case Fetch():
            return fetch.fetch(session, command)
        case Search():
            return search.search(session, command, tag)
        case SortCommand():
            return search.sort(session, command, tag)
        case ThreadCommand():
            return search.thread(session, command)
        case CancelUpdate():
            return search.cancel_update(session, command)
        case StoreCommand():
            return messages.store_flags(session, command)
        case CopyMove():
            return messages.copy_move(session, command)
        case Notify():
            return notify.set_notify(session, command)
        case GetMetadata():
            return metadata.getmetadata(session, command)
        case SetMetadata():
            return metadata.setmetadata(session, command)
        case QuotaCommand(name="GETQUOTAROOT"):
            return quota.getquotaroot(session, command)
        case QuotaCommand(name="GETQUOTA"):
            return quota.getquota(session, command)
        case QuotaCommand():
            return quota.setquota(session, command)
        case Refused():
            return _impossible_name(session, command)
    return _refuse(f"{type(command).__name__} is not implemented")


def _impossible_name(session: Session, cmd: Refused) -> Handler:
    """NO for a command naming a mailbox that cannot be; a SELECT or EXAMINE deselects all the same
    (RFC 9051 §6.3.2), saying so first with CLOSED (RFC 7162 §3.2.11), as Dovecot does with or without QRESYNC."""
    state = None
    if cmd.name in ("SELECT", "EXAMINE"):
        if session.selected is not None:
            yield b"* OK [CLOSED] Previous mailbox closed\r\n"
        session.select(None)  # the old view's expunge hold goes, and NOTIFY watches it by STATUS again
        state = ImapState.AUTHENTICATED
    return Done(Status.NO, cmd.text, cmd.code, state)


def _refuse(text: str) -> Handler:
    yield from ()
    return Done(Status.BAD, text)

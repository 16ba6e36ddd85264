"""GETMETADATA and SETMETADATA (RFC 5464): entries of a mailbox, or of the server (mailbox ""), kept
for the account by the store. Server entries belong to the account as well (as in Dovecot): what one
user sets under /shared on the server is not shown to another."""

from __future__ import annotations

from collections.abc import Generator

from kartero.imap.commands.view import Done, Session
from kartero.imap.metadata import MAX_ENTRIES, MAX_VALUE, is_within, metadata_response
from kartero.imap.response import Status, astring
from kartero.imap.syntax import GetMetadata, MetadataRequest, SetMetadata
from kartero.store.interface import NoSuchMailbox

Handler = Generator[bytes, None, Done]


def _mailbox(session: Session, name: str) -> tuple[int | None, bytes] | None:
    """The mailbox id (None for the server) and its name as sent back; None when there is no such mailbox."""
    if name == "":
        return None, b'""'
    mailbox = session.store.get_mailbox(session.account_id, name)
    if mailbox is None:
        return None
    return mailbox.id, astring(session.mailbox_name(mailbox.name), utf8=session.utf8)


def getmetadata(session: Session, cmd: GetMetadata) -> Handler:
    target = _mailbox(session, cmd.mailbox)
    if target is None:
        return Done(Status.NO, "No such mailbox", "NONEXISTENT")
    mailbox_id, wire_name = target
    stored = session.store.metadata(session.account_id, mailbox_id)
    found, longest = select_entries(stored, MetadataRequest(cmd.entries, cmd.max_size, cmd.depth))
    if found:
        yield metadata_response(wire_name, found.items())
    return Done(Status.OK, "GETMETADATA completed", longentries(longest))


def select_entries(stored: dict[str, bytes], request: MetadataRequest) -> tuple[dict[str, bytes | None], int]:
    """What GETMETADATA answers (also LIST RETURN (METADATA ...), RFC 9590): each requested entry, then
    the descendants DEPTH reaches that have a value (RFC 5464 §4.2.2); an entry without a value is NIL
    when asked for alone (DEPTH 0, as Dovecot answers) and left out under DEPTH 1 or infinity, as in the
    RFC's example. Values over MAXSIZE are left out; the second value is the size of the largest of them
    (0: none), for [METADATA LONGENTRIES n] (RFC 5464 §4.2.1)."""
    found: dict[str, bytes | None] = {}
    longest = 0
    for entry in request.entries:
        matches = [(entry, stored.get(entry))] if entry in stored or not request.depth else []
        if request.depth:
            matches += [(name, value) for name, value in stored.items() if name != entry and
                        is_within(name, entry, request.depth)]  # fmt: skip
        for name, value in matches:
            if value is not None and request.max_size is not None and len(value) > request.max_size:
                longest = max(longest, len(value))
            else:
                found.setdefault(name, value)
    return found, longest


def longentries(longest: int) -> str | None:
    """The response code of a command that left out values over MAXSIZE."""
    return f"METADATA LONGENTRIES {longest}" if longest else None


def setmetadata(session: Session, cmd: SetMetadata) -> Handler:
    """All the entries of the command are set, or none (RFC 5464 §4.3)."""
    yield from ()
    if any(value is not None and len(value) > MAX_VALUE for _, value in cmd.entries):
        return Done(Status.NO, "Value too large", f"METADATA MAXSIZE {MAX_VALUE}")
    target = _mailbox(session, cmd.mailbox)
    if target is None:
        return Done(Status.NO, "No such mailbox", "NONEXISTENT")
    try:
        # origin: NOTIFY reports the change to every session but this one (RFC 5465 §5).
        if not session.store.set_metadata(session.account_id, target[0], cmd.entries, MAX_ENTRIES, origin=session):
            return Done(Status.NO, f"Too many entries ({MAX_ENTRIES} at most)", "METADATA TOOMANY")
    except NoSuchMailbox:
        return Done(Status.NO, "No such mailbox", "NONEXISTENT")
    return Done(Status.OK, "SETMETADATA completed")

"""GETQUOTA, GETQUOTAROOT and SETQUOTA (RFC 9208), and the check APPEND and COPY make before storing.

Each account has one quota root, `""`, over all its mailboxes, with one resource, STORAGE: the sizes of
its messages (RFC822.SIZE) added up, which the store keeps with every change. A root exists only while a
limit applies (the account's own from `kartero user quota`, else `[limits] default_quota`): without one,
GETQUOTAROOT names no root and GETQUOTA `""` is NO, as RFC 9208 §4.3.2 lets a mailbox have no root.
STORAGE is counted in units of 1024 octets (§5.1): usage rounded up (one octet shows as 1, never 0),
the limit rounded down (a client never sees more room than there is).
"""

from __future__ import annotations

from collections.abc import Generator

from kartero.imap.commands.view import Done, Session
from kartero.imap.response import Status, astring
from kartero.imap.syntax import QuotaCommand

Handler = Generator[bytes, None, Done]

ROOT = ""
OVERQUOTA = Done(Status.NO, "Quota exceeded (mailbox is full)", "OVERQUOTA")


def kib_up(size_bytes: int) -> int:
    """Octets in RFC 9208 STORAGE units (1024 octets), rounded up."""
    return -(-size_bytes // 1024)


def _usage(session: Session) -> tuple[int, int]:
    """The account's usage and the limit that applies (0: none), in octets."""
    usage = session.store.quota_usage([session.account_id]).get(session.account_id)
    if usage is None:  # the account was deleted meanwhile: nothing to count, nothing more to store
        return 0, 0
    return usage.used_bytes, usage.effective_limit(session.default_quota)


def room(session: Session) -> int | None:
    """How many more octets the account may store (None: no limit). APPEND and COPY that would store more
    fail with OVERQUOTA and store nothing (RFC 9208 §4.1). Checked before the store call, not in its
    transaction: two commands at once may each pass and together go a message beyond, as with Dovecot."""
    used, limit = _usage(session)
    return max(0, limit - used) if limit > 0 else None


def _quota_line(used: int, limit: int) -> bytes:
    return f'* QUOTA "" (STORAGE {kib_up(used)} {limit // 1024})\r\n'.encode()


def getquotaroot(session: Session, cmd: QuotaCommand) -> Handler:
    mailbox = session.store.get_mailbox(session.account_id, cmd.argument)
    if mailbox is None:
        return Done(Status.NO, "No such mailbox", "NONEXISTENT")
    used, limit = _usage(session)
    name = astring(session.mailbox_name(mailbox.name), utf8=session.utf8)
    if not limit:
        yield b"* QUOTAROOT " + name + b"\r\n"
    else:
        yield b"* QUOTAROOT " + name + b' ""\r\n' + _quota_line(used, limit)
    return Done(Status.OK, "GETQUOTAROOT completed")


def getquota(session: Session, cmd: QuotaCommand) -> Handler:
    used, limit = _usage(session)
    if cmd.argument != ROOT or not limit:
        return Done(Status.NO, "No such quota root", "NONEXISTENT")
    yield _quota_line(used, limit)
    return Done(Status.OK, "GETQUOTA completed")


def setquota(session: Session, cmd: QuotaCommand) -> Handler:
    """RFC 9208 §4.2.3 allows a server to refuse SETQUOTA; limits are the admin's (`kartero user quota`)."""
    yield from ()
    return Done(Status.NO, "Only the administrator sets quotas", "NOPERM")

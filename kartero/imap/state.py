"""IMAP session states (RFC 9051 §3) and the one table of which commands each state allows.

Theory of operation: a connection starts NOT_AUTHENTICATED; LOGIN or AUTHENTICATE moves it to
AUTHENTICATED; a successful SELECT/EXAMINE to SELECTED, which CLOSE, UNSELECT or a failed SELECT leave
again; LOGOUT (or the server) ends in LOGOUT; UNAUTHENTICATE (RFC 8437) goes back to NOT_AUTHENTICATED.
A command not in its state's set gets `BAD`.
"""

from __future__ import annotations

from enum import Enum, auto


class ImapState(Enum):
    NOT_AUTHENTICATED = auto()
    AUTHENTICATED = auto()
    SELECTED = auto()
    LOGOUT = auto()


_ANY = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
_NOT_AUTHENTICATED = _ANY | {"STARTTLS", "LOGIN", "AUTHENTICATE"}
_AUTHENTICATED = _ANY | {
    "ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB",
    "NAMESPACE", "STATUS", "APPEND", "IDLE", "COMPRESS", "UNAUTHENTICATE", "NOTIFY", "GETMETADATA", "SETMETADATA",
    "GETQUOTA", "GETQUOTAROOT", "SETQUOTA",
}  # fmt: skip
_SELECTED = (_AUTHENTICATED - {"ENABLE"}) | {
    "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID", "SORT", "THREAD",
    "CANCELUPDATE",
}  # fmt: skip

ALLOWED: dict[ImapState, frozenset[str]] = {
    ImapState.NOT_AUTHENTICATED: frozenset(_NOT_AUTHENTICATED),
    ImapState.AUTHENTICATED: frozenset(_AUTHENTICATED),
    ImapState.SELECTED: frozenset(_SELECTED),
    ImapState.LOGOUT: frozenset(),
}


class ProtocolViolation(Exception):
    """The adapter used the core wrongly (e.g. finished a command that was not running)."""

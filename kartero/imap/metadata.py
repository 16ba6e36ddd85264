"""METADATA (RFC 5464): entry names, the limits on what a client may keep, and the METADATA response.

Entries live under `/private` (this user's) or `/shared` (everyone who can see the mailbox; with no
shared mailboxes in Kartero that is the owner too, but the two stay apart), on a mailbox or on the server
(mailbox ""). Names are case-insensitive (RFC 5464 §3.2): they are kept and returned in lower case, as
Dovecot does. Every limit is a constant here, so the core and the handlers refuse the same things.
"""

from __future__ import annotations

from collections.abc import Iterable

from kartero.imap.response import astring
from kartero.imap.tokens import ParseError

# RFC 5464 leaves the limits to the server; these hold a lot of per-mailbox settings (colours, sort orders,
# comments) while capping what one account can make the server keep and send back in one response.
MAX_ENTRY_NAME = 1024  # octets of an entry name
MAX_VALUE = 64 * 1024  # octets of a value: [METADATA MAXSIZE n] beyond (the core's literal limit too)
MAX_ENTRIES = 100  # entries of one mailbox, or of the server for one account: [METADATA TOOMANY] beyond
MAX_REQUESTED = 100  # entry names in one GETMETADATA (each answered NIL at worst)
DEPTH_INFINITY = -1

_PREFIXES = ("/private", "/shared")


def parse_entry(raw: bytes, *, is_set: bool) -> str:
    """An entry name from the wire, in lower case (RFC 5464 §3.2: names are case-insensitive). It must
    start with /private or /shared, hold printable ASCII other than `*` and `%`, no empty component and no
    trailing `/`; SETMETADATA needs a name below /private or /shared. Raises ParseError."""
    if len(raw) > MAX_ENTRY_NAME:
        raise ParseError(f"entry name too long ({MAX_ENTRY_NAME} octets at most)")
    if not raw.isascii() or any(octet < 0x20 or octet == 0x7F or octet in b"*%" for octet in raw):
        raise ParseError("invalid entry name")
    name = raw.decode("ascii").lower()
    prefix = next((p for p in _PREFIXES if name == p or name.startswith(p + "/")), None)
    if prefix is None:
        raise ParseError("entry name must begin with /private or /shared")
    if "//" in name or name.endswith("/") or (is_set and name == prefix):
        raise ParseError("invalid entry name")
    return name


def is_within(name: str, entry: str, depth: int) -> bool:
    """Whether `name` is `entry` or a descendant of it that DEPTH `depth` reaches (RFC 5464 §4.2.2: 1 is
    the children, DEPTH_INFINITY all descendants)."""
    if name == entry:
        return True
    if depth == 0 or not name.startswith(entry + "/"):
        return False
    return depth == DEPTH_INFINITY or "/" not in name[len(entry) + 1 :]


_NOT_ATOM = frozenset(b'(){ "\\]')  # what an entry name may hold (RFC 5464 §3.2) but an atom may not


def entry_name(entry: str) -> bytes:
    """An entry name as a response sends it: an atom when it can be one, else a string, so a name such as
    `/private/x {5}` cannot pass for a literal or end a list (names are printable ASCII: `parse_entry`)."""
    data = entry.encode("ascii")
    return astring(entry) if any(octet in _NOT_ATOM for octet in data) else data


def metadata_response(mailbox: bytes, entries: Iterable[tuple[str, bytes | None]]) -> bytes:
    """`* METADATA mailbox (entry value ...)` (RFC 5464 §4.4.1); `mailbox` is already on the wire form.
    A value is a quoted string when it can be one, else a literal, or a literal8 when it holds NUL."""
    parts = [entry_name(entry) + b" " + _value(value) for entry, value in entries]
    return b"* METADATA " + mailbox + b" (" + b" ".join(parts) + b")\r\n"


def _value(value: bytes | None) -> bytes:
    if value is None:
        return b"NIL"
    if b"\0" in value:
        return b"~{%d}\r\n" % len(value) + value
    if len(value) < 1024 and all(0x20 <= octet < 0x7F for octet in value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value

"""The API of Python hooks: what a hook is given and what it may answer (`from kartero import hooks`).

An admin's hooks file (`[hooks] module` in kartero.toml) defines any of these `async def` functions;
Kartero calls each on the SMTP listeners (MX and submission) at its phase of every session:

    async def on_connect(session: hooks.Session) -> hooks.Answer: ...
    async def on_mail_from(session: hooks.Session, sender: str) -> hooks.Answer: ...
    async def on_rcpt_to(session: hooks.Session, recipient: str) -> hooks.Answer: ...
    async def on_message(session: hooks.Session, message: hooks.Message) -> hooks.Answer: ...

A hook answers `accept()`, `reject(code, text)`, `tempfail(code, text)`, from `on_message` also
`add_header(name, value)`, a list of these (the first reject or tempfail in it decides; otherwise the
headers are added in order), or `None` (accept). A reject or tempfail refuses the session at connect,
the transaction at MAIL FROM and at the end of DATA, that one recipient at RCPT TO.

Every call has the deadline `[hooks] timeout`. A hook that raises, passes its deadline or answers
something else is logged with the traceback (`event=hooks.failed`) and answered per `[hooks] on_error`:
"tempfail" sends `451 4.7.1` with a generic text (never the exception's), "accept" goes on as if the
hook had accepted.

Hooks run on the server's event loop, the one that serves every connection: a hook must never block
(no `time.sleep`, no blocking sockets or HTTP clients, no long loops). Await asyncio I/O, and move
CPU-heavy or blocking work to a thread with `await asyncio.to_thread(fn, ...)`. `message.raw` reads a
file for a large message: read it in a thread too when you read much of it.

This module imports only `kartero.mail` (docs/architecture.md): it is the part of Kartero hook files
depend on, and it stays small and stable.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from kartero.mail import replies
from kartero.mail.replies import Reply

__all__ = [
    "Accept",
    "AddHeader",
    "Answer",
    "Envelope",
    "Headers",
    "Message",
    "Reject",
    "Result",
    "Session",
    "Tempfail",
    "accept",
    "add_header",
    "reject",
    "tempfail",
]

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its code and CRLF; the text gets what is
# left after "550 5.7.1 " (the longest enhanced code is 3.3.3 digits: 11 characters with its blank).
MAX_REPLY_TEXT = 512 - 4 - 12 - 2
# RFC 5322 §2.1.1: a header line is at most 998 octets; an added field is one line ("Name: value").
MAX_HEADER_LINE = 998
MAX_HEADER_NAME = 100  # longer than any field name in use; a bound on what a hook can make us log and store


# -- what a hook is given ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """The SMTP session a hook runs in. Before HELO (in `on_connect`) `helo` is "" and `tls_version`
    and `authenticated_user` are None; from `on_mail_from` on they say what the client did so far."""

    session_id: str  # the id Kartero's log lines carry for this session
    listener: str  # "smtp" (the MX, port 25) or "submission" (587 and 465)
    client_address: str  # the client's IP address
    client_port: int  # 0 when unknown
    client_hostname: str  # its verified reverse DNS name, "unknown" when there is none
    helo: str = ""  # the name the client gave in HELO/EHLO
    tls_version: str | None = None  # "TLSv1.3", None without TLS
    authenticated_user: str | None = None  # the SMTP AUTH user (submission), None when not logged in


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope: the sender of MAIL FROM ("" for the null sender of bounces) and the recipients
    Kartero accepted, all without angle brackets."""

    sender: str
    recipients: tuple[str, ...]


class Headers(Mapping[str, str]):
    """A message's header fields: an immutable, case-insensitive multi-map of decoded values.

    `headers["Subject"]` and `headers.get("subject")` give the first field of that name; `get_all`
    gives every one in order ("Received" has many); iteration gives each name once, as first written;
    `fields` gives every (name, value) pair in message order. Values are unfolded, RFC 2047 encoded
    words decoded and 8-bit text read as UTF-8; what does not decode (an unknown charset, broken base64,
    invalid UTF-8) stays as it was written (bytes as latin-1), so reading a header never fails.
    Names compare with ASCII case folding only (RFC 5322 field names are ASCII).
    """

    __slots__ = ("_fields", "_first", "_names")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields = tuple((str(name), str(value)) for name, value in fields)
        self._first: dict[str, str] = {}
        self._names: dict[str, str] = {}
        for name, value in self._fields:
            key = _fold(name)
            if key not in self._first:
                self._first[key] = value
                self._names[key] = name

    @property
    def fields(self) -> tuple[tuple[str, str], ...]:
        return self._fields

    def get_all(self, name: str) -> tuple[str, ...]:
        """Every value of the fields called `name` (any case), in message order; () when none."""
        key = _fold(name)
        return tuple(value for field_name, value in self._fields if _fold(field_name) == key)

    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str):
            raise KeyError(name)
        return self._first[_fold(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _fold(name) in self._first

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __len__(self) -> int:
        return len(self._first)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._fields == other._fields
        return Mapping.__eq__(self, other)

    def __hash__(self) -> int:
        return hash(self._fields)

    def __repr__(self) -> str:
        return f"Headers({list(self._fields)!r})"


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(name: str) -> str:
    """ASCII letters lower-cased: "ß" stays "ß" (str.lower would make "SS" "ss", a different name)."""
    return name.translate(_ASCII_LOWER)


@dataclass(frozen=True, slots=True, eq=False)
class Message:
    """The message at the end of DATA, before Kartero stores it.

    `raw` is the message as received (header and body, CRLF line ends) as a read-only binary stream:
    `read(n)`, `readline(limit)`, `for line in message.raw`, `seek(0)` to read again. A large message
    is read from its spool file, never held in memory whole, unless the hook calls `read()` without a
    size. The stream is closed when the hook returns. `size` is the message's size in octets.
    """

    envelope: Envelope
    headers: Headers
    raw: io.BufferedIOBase = field(repr=False)
    size: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"bad message size {self.size}")


# -- what a hook answers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accept:
    """Go on: the next filter (or Kartero's own checks) decide."""


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse permanently with `code` (5xx) `enhanced` `text`: "550 5.7.1 Rejected by policy"."""

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        _check_reply(self.code, self.enhanced, self.text, "reject", 500)


@dataclass(frozen=True, slots=True)
class Tempfail:
    """Refuse for now with `code` (4xx) `enhanced` `text`; the client retries later."""

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        _check_reply(self.code, self.enhanced, self.text, "tempfail", 400)


@dataclass(frozen=True, slots=True)
class AddHeader:
    """Append the field `name: value` to the message's header (only from `on_message`)."""

    name: str
    value: str

    def __post_init__(self) -> None:
        name, value = self.name, self.value
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError("add_header: name and value must be str")
        # RFC 5322 §3.6.8: field-name = 1*ftext, printable ASCII except ":"
        if not name or len(name) > MAX_HEADER_NAME or any(not 33 <= ord(c) <= 126 or c == ":" for c in name):
            raise ValueError(f"add_header: bad field name {name[:MAX_HEADER_NAME]!r} (1 to {MAX_HEADER_NAME} "
                             "printable ASCII characters, no colon)")  # fmt: skip
        # No CR or LF: a value cannot end the field and start a new one (header injection), nor any
        # other control character; a value is one unfolded line.
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            raise ValueError(f"add_header: control character (CR, LF, ...) in the value of {name}")
        if len(name) + 2 + len(value.encode("utf-8", "strict")) > MAX_HEADER_LINE:
            raise ValueError(f"add_header: {name} longer than {MAX_HEADER_LINE} octets (RFC 5322 2.1.1)")


Result = Accept | Reject | Tempfail | AddHeader
Answer = Result | list[Result] | tuple[Result, ...] | None  # what a hook returns


def accept() -> Accept:
    """Let the session, recipient or message go on."""
    return Accept()


def reject(code: int = replies.HOOK_REJECTED.code, text: str = "", enhanced: str | None = None) -> Reject:
    """A permanent refusal: `code` 500-599; `text` printable ASCII on one line. The enhanced status
    code (RFC 3463) is `enhanced`, or one that starts `text` ("5.7.1 No thanks"), else 5.7.1.
    Raises ValueError for anything else."""
    return Reject(*_reply_parts(code, text, enhanced, replies.HOOK_REJECTED))


def tempfail(code: int = replies.HOOK_TEMPFAILED.code, text: str = "", enhanced: str | None = None) -> Tempfail:
    """A temporary refusal: `code` 400-499, otherwise as `reject` (4.7.1 unless given)."""
    return Tempfail(*_reply_parts(code, text, enhanced, replies.HOOK_TEMPFAILED))


def add_header(name: str, value: str) -> AddHeader:
    """Append the header field `name: value` (from `on_message` only). The name is printable ASCII
    without a colon (at most 100 characters); the value one line without CR, LF or other control
    characters (non-ASCII text goes as UTF-8, RFC 6532); the field at most 998 octets.
    Raises ValueError otherwise."""
    return AddHeader(name, value)


def _reply_parts(code: int, text: str, enhanced: str | None, default: Reply) -> tuple[int, str, str]:
    if not isinstance(text, str):
        raise ValueError(f"reply text must be str, not {type(text).__name__}")
    if enhanced is None:
        first, _, rest = text.partition(" ")
        if first[:1] == str(code)[:1] and _is_enhanced(first):
            enhanced, text = first, rest
        else:
            enhanced = default.enhanced
    return code, enhanced or "", text or default.text


def _is_enhanced(token: str) -> bool:
    """RFC 3463 §2: class.subject.detail, the subject and detail 1-3 digits each."""
    parts = token.split(".")
    return (len(parts) == 3 and parts[0] in ("2", "4", "5")
            and all(1 <= len(p) <= 3 and p.isascii() and p.isdigit() for p in parts[1:]))  # fmt: skip


def _check_reply(code: int, enhanced: str, text: str, what: str, low: int) -> None:
    if not isinstance(code, int) or isinstance(code, bool) or not low <= code <= low + 99:
        raise ValueError(f"{what}: code must be {low}-{low + 99}, not {code!r}")
    if not isinstance(enhanced, str) or not _is_enhanced(enhanced) or enhanced[0] != str(code)[0]:
        raise ValueError(f"{what}: bad enhanced status code {enhanced!r} for {code}")
    if not isinstance(text, str) or not text or len(text) > MAX_REPLY_TEXT:
        raise ValueError(f"{what}: text must be 1 to {MAX_REPLY_TEXT} characters")
    if any(not 32 <= ord(c) < 127 for c in text):
        # A reply is printable ASCII on one line: no CR or LF that would start a reply of our own.
        raise ValueError(f"{what}: text must be printable ASCII on one line: {text[:80]!r}")

"""What a Sieve script is run on and what running it decides (RFC 5228 and its extensions).

The interpreter (`kartero.sieve.run`) is sans-I/O and pure apart from the `Context` callbacks, which the
caller provides (they may block: the caller runs scripts in a worker thread). It never stores, sends or
replies itself: it returns an `Outcome`, and the delivery side (`kartero.rules`) carries it out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime


class SieveError(Exception):
    """A script that does not compile: where, and why. `str()` is `line:column: message` (1-based), the
    form `kartero sieve put/check` prints and ManageSieve returns."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"{line}:{column}: {message}")
        self.line = line
        self.column = column
        self.message = message


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one run (a script is hostile input too: its author may be any user)."""

    max_actions: int = 100  # fileinto/keep/redirect/vacation/addflag... actions queued by one run
    max_redirects: int = 5  # MAXREDIRECTS in ManageSieve's CAPABILITY
    max_includes: int = 10  # include depth (RFC 6609 §3.2 asks for a limit) and count
    max_string: int = 64 * 1024  # a variable's value, an expanded string
    max_variables: int = 256
    max_header_edits: int = 100  # addheader/deleteheader
    max_body: int = 1024 * 1024  # octets of the body the `body` test looks at
    max_steps: int = 100_000  # commands and tests evaluated (with include, a script may be run many times)
    # the matching and copying work of one run (kartero.sieve.match.Budget: regex instructions visited,
    # characters compared, C-level scans and string copies by the 16 characters); a unit is about 0.5 us
    max_match_steps: int = 1_000_000


@dataclass(frozen=True, slots=True)
class Context:
    """One message for one recipient account at final delivery."""

    header: bytes  # the raw header block, up to and including the empty line (or the whole message)
    body: bytes  # the body, at most Limits.max_body octets of it
    envelope_from: str  # "" for the null sender
    envelope_to: str  # the recipient address as given at RCPT (before alias resolution)
    now: datetime  # timezone-aware: `currentdate`, and the default zone of `date`
    environment: Mapping[str, str] = field(default_factory=dict)  # RFC 5183 items: "domain", "host", ...
    auth: str | None = None  # the authenticated sender, if any (envelope "auth")
    # mailbox (RFC 5490): does the account have this mailbox?
    mailbox_exists: Callable[[str], bool] = lambda _name: False
    # duplicate (RFC 7352): was this key (DuplicateMark.key) tracked within its period?
    duplicate_seen: Callable[[str], bool] = lambda _key: False
    # include (RFC 6609): a script's text by (is_global, name), or None when there is none
    load_script: Callable[[bool, str], str | None] = lambda _is_global, _name: None
    size: int | None = None  # the message size in octets for `size`; None: len(header) + len(body)


@dataclass(frozen=True, slots=True)
class FileInto:
    """Store a copy: `keep` (explicit or implicit) is FileInto("INBOX", keep=True)."""

    mailbox: str  # the name as the script wrote it (UTF-8, "/"-free rules are the store's)
    flags: frozenset[str] = frozenset()  # imap4flags: the flags to set on the stored message
    create: bool = False  # :create (RFC 5490): make the mailbox when it is missing
    header: bytes | None = None  # the header block as edited by editheader before this action; None: unchanged
    # `keep` (explicit or implicit, or the keep of a runtime error) rather than `fileinto "INBOX"`: the
    # delivery side stores a keep where the message would have gone without a script (Junk for spam).
    # (Not compared: a keep and a fileinto "INBOX" are the same action to RFC 5228.)
    keep: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Redirect:
    address: str  # a valid RFC 5321 mailbox (checked when the script ran)
    header: bytes | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str
    extended: bool = False  # ereject: refuse in the SMTP reply where possible


@dataclass(frozen=True, slots=True)
class Vacation:
    """RFC 5230/6131: a reply, if the delivery side's rules (§4.5, the once-per-period tracking) allow."""

    reason: str  # the body text (or a MIME entity when `mime`)
    handle: str  # :handle, or one made from the arguments (§4.2)
    seconds: int  # :days/:seconds made into seconds, clamped to the server's bounds
    subject: str | None = None
    from_address: str | None = None  # :from
    addresses: tuple[str, ...] = ()  # :addresses
    mime: bool = False


@dataclass(frozen=True, slots=True)
class DuplicateMark:
    """RFC 7352: remember `key` for `seconds` once the message was delivered."""

    key: str
    seconds: int


Action = FileInto | Redirect | Reject | Vacation


@dataclass(frozen=True, slots=True)
class Outcome:
    """The actions to carry out, in the order the script gave them, with implicit keep already resolved
    (a FileInto("INBOX", keep=True) at the end when it applies); discard leaves no FileInto. On a runtime
    error the actions are `(FileInto("INBOX", keep=True),)` and `error` says why (RFC 5228 §2.10.6)."""

    actions: tuple[Action, ...]
    duplicates: tuple[DuplicateMark, ...] = ()
    error: str | None = None

"""What the SMTP server core tells its adapter, and the envelope it builds.

Events marked "needs a decision" stop the core until the adapter calls `ServerConnection.answer()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kartero.mail.address import Path


class Body(StrEnum):
    """The BODY parameter of MAIL (RFC 6152)."""

    SEVEN_BIT = "7BIT"
    EIGHT_BIT_MIME = "8BITMIME"


class Ret(StrEnum):
    """DSN RET parameter (RFC 3461 §4.3)."""

    FULL = "FULL"
    HDRS = "HDRS"


class Notify(StrEnum):
    """DSN NOTIFY values (RFC 3461 §4.1)."""

    NEVER = "NEVER"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


@dataclass(frozen=True, slots=True)
class MailParams:
    size: int | None = None
    body: Body | None = None
    smtputf8: bool = False
    ret: Ret | None = None
    envid: str | None = None  # decoded from xtext


@dataclass(frozen=True, slots=True)
class RcptParams:
    notify: frozenset[Notify] = frozenset()
    orcpt: tuple[str, str] | None = None  # (addr-type, decoded address), RFC 3461 §4.2

    def __post_init__(self) -> None:
        if Notify.NEVER in self.notify and len(self.notify) > 1:
            raise ValueError("NOTIFY=NEVER cannot be combined")


@dataclass(frozen=True, slots=True)
class Recipient:
    path: Path
    params: RcptParams


@dataclass(frozen=True, slots=True)
class Envelope:
    """One accepted transaction: what MAIL and the accepted RCPTs said, and how the session looked."""

    helo: str
    is_esmtp: bool
    is_tls: bool
    mail_from: Path
    mail_params: MailParams
    recipients: tuple[Recipient, ...]
    used_bdat: bool = False
    authenticated_as: str | None = None


@dataclass(frozen=True, slots=True)
class Hello:
    is_esmtp: bool
    name: str


@dataclass(frozen=True, slots=True)
class MailFrom:
    """Needs a decision: a reply for MAIL."""

    path: Path
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo:
    """Needs a decision: a reply for RCPT."""

    path: Path
    params: RcptParams


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """Needs a decision: the final reply for the message (250 only once it is durably stored).

    The message as the client meant it (dot-stuffing undone, nothing else changed) is the `spilled`
    octets handed out before in MessageData events, followed by `data`.
    """

    envelope: Envelope
    data: bytes
    spilled: int = 0
    is_8bit: bool = False  # the message (spilled pieces included) has an octet above 127


@dataclass(frozen=True, slots=True)
class MessageData:
    """The next piece of a message too large to hold in memory (past the spool threshold): the adapter
    writes it to a spool file. No answer is due; a MessageReceived or MessageRefused ends the message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageRefused:
    """A message ended but the core refused it itself (too big, bare LF, long line); for logging."""

    envelope: Envelope
    size: int
    reason: str


@dataclass(frozen=True, slots=True)
class AuthRequested:
    """Needs a decision (`auth_result`): check this user's password (PLAIN or LOGIN)."""

    mechanism: str
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class ScramRequested:
    """Needs a decision (`scram_credentials`): the SCRAM-SHA-256 keys of this user (fake ones for an
    unknown user, so that the exchange reveals nothing)."""

    user: str


@dataclass(frozen=True, slots=True)
class ScramFinished:
    """Needs a decision (`auth_result`): the client's SCRAM proof was checked (`ok`). The adapter logs it
    and applies its failure delay, as for a password, then answers with the user or None."""

    user: str
    ok: bool


@dataclass(frozen=True, slots=True)
class StartTLSRequested:
    """The core has queued `220 Ready to start TLS` and dropped any bytes pipelined behind STARTTLS.

    The adapter flushes, upgrades the transport, then calls `tls_established()`.
    """


@dataclass(frozen=True, slots=True)
class OutputReady:
    """Replies to pipelined commands filled OUTPUT_HIGH_WATER: send them before asking for more events,
    so a client that pipelines cheap commands and reads nothing fills its own buffers, not ours."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The session is over (QUIT, peer closed, error budget, ...); flush and close the transport."""

    reason: str


Event = (
    Hello | MailFrom | RcptTo | MessageData | MessageReceived | MessageRefused | AuthRequested | ScramRequested
    | ScramFinished | StartTLSRequested | OutputReady | ConnectionClosed
)  # fmt: skip

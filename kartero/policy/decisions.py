"""What a policy answers, and the interface both listener policies (MX and submission) serve.

Every check is `async def`: most answer from memory without suspending (the SMTP adapter runs them
eagerly, see kartero/concurrency.py), the rest await DNS or a directory reload. The adapter gives each
decision a deadline; a check that raises or passes it gets `451 4.3.0` for that command or message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kartero.mail.address import Path
from kartero.mail.replies import Reply
from kartero.smtp.events import Envelope
from kartero.store.interface import Content


@dataclass(frozen=True, slots=True)
class Accept:
    """Go ahead. For RCPT: the local accounts the address reaches, or (remote) the address to queue;
    `forward_to`: the remote addresses its aliases point at (forwarded with an SRS sender)."""

    reply: Reply
    account_ids: tuple[int, ...] = ()
    address: str = ""
    is_remote: bool = False
    forward_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reject:
    """No. `reason` is what the metrics count it as (kartero.metrics.REASONS: "policy" unless one of
    them names it better)."""

    reply: Reply
    reason: str = field(default="policy", compare=False)  # two refusals with one reply are the same answer


Decision = Accept | Reject


@dataclass(frozen=True, slots=True)
class RcptContext:
    """Who is asking, for decisions that depend on more than the address (greylisting, DNSBLs)."""

    client_ip: str
    mail_from: str  # without angle brackets; "" for the null sender
    size: int | None = None  # MAIL FROM's SIZE= (RFC 1870), for the quota check


@dataclass(frozen=True, slots=True)
class AcceptMessage:
    """The message may be stored, as `data` (a policy may add header fields, e.g. Date:), in the local
    recipients' `mailbox` (Junk for mail a DMARC policy quarantines). A large message stays a Content
    (its header in memory, its body in a spool file) on its way through."""

    data: bytes | Content
    mailbox: str = "INBOX"
    checks: str = ""  # what the checks found, on one line (SPF, DKIM, DMARC), for the message trace


MessageDecision = AcceptMessage | Reject


class Policy(Protocol):
    async def check_mail(self, path: Path, user: str | None) -> Decision: ...
    async def check_rcpt(self, path: Path, context: RcptContext) -> Decision: ...
    async def check_message(self, envelope: Envelope, data: bytes | Content, client_ip: str) -> MessageDecision: ...

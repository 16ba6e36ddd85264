"""The contract every content filter serves (a milter connection, the Python hooks) and the chain.

A filter sees one SMTP session: `connect` once, `helo` for each HELO/EHLO (called when the next MAIL
arrives: the SMTP core answers HELO itself, so a refusal there answers that MAIL), then per transaction
`mail_from`, `rcpt_to` for each
recipient policy accepted, and `message` at the end of DATA, or `abort` when the transaction ends
without one (RSET, a new MAIL, every recipient refused). `close` ends the session. Every phase answers
a `Verdict`; `message` also a list of `Change`s, applied in order, after the filter's, to the message
the next filter sees (Postfix does the same with several milters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kartero.mail.replies import Reply
from kartero.store.interface import Content


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is connected, for the connect phase and the macros milters ask for."""

    session_id: str  # also the milter macro `i` until a message has a queue id
    listener: str  # "smtp" or "submission" (587 and 465 alike)
    local_name: str  # our hostname (macro `j`)
    address: str  # the client's IP address
    port: int  # the client's port (0 when unknown)
    hostname: str  # the client's verified reverse name, else "unknown" (Postfix's convention)
    local_address: str = ""  # the address the client connected to ({daemon_addr})
    local_port: int = 0
    ptr_name: str = ""  # the reverse (PTR) name even when its addresses do not lead back ({client_ptr})
    resolve: str = "FAIL"  # OK (verified), FAIL (no PTR), FORGED (it does not lead back), TEMP (DNS failed)


@dataclass(frozen=True, slots=True)
class Transaction:
    """What is known when the message phase runs; also the session state at MAIL/RCPT time."""

    helo: str
    tls_version: str | None  # "TLSv1.3"
    tls_cipher: str | None
    authenticated_as: str | None
    mail_from: str  # without angle brackets; "" for the null sender
    mail_params: tuple[str, ...] = ()  # ESMTP parameters as sent ("SIZE=1000", "BODY=8BITMIME")
    recipients: tuple[str, ...] = ()  # accepted so far, without angle brackets
    queue_id: str = ""  # the message id intake will store it under (macro `i` in the message phase)


# -- verdicts ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Continue:
    """Go on (milter `continue`, a hook returning accept/None)."""


@dataclass(frozen=True, slots=True)
class AcceptRest:
    """Accept without asking this filter again for the rest of the transaction (milter `accept`);
    at `connect`, for the rest of the session."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse with this reply: 5xx (reject) or 4xx (tempfail). At `connect` the session; at
    `rcpt_to` that recipient; at `mail_from` and `message` the transaction."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Discard:
    """Accept the message and deliver it to nobody (milter `discard`; from `rcpt_to`, the whole
    message, as Postfix does)."""


Verdict = Continue | AcceptRest | Refuse | Discard


# -- changes at the end of the message ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddHeader:
    """Append a header field at the end of the header (value as given: folded with CRLF + WSP)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class InsertHeader:
    """Insert a header field before the field at `index` (0 = the top; past the end = appended)."""

    index: int
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    """Replace the `occurrence`-th (1-based) field named `name` (case-insensitive); an empty value
    deletes it; an occurrence past the last appends (sendmail's and Postfix's rule)."""

    name: str
    occurrence: int
    value: str


@dataclass(frozen=True, slots=True)
class ReplaceBody:
    """The new body (everything after the blank line), CRLF line ends."""

    body: bytes


@dataclass(frozen=True, slots=True)
class AddRecipient:
    address: str  # without angle brackets
    params: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeleteRecipient:
    address: str  # without angle brackets, compared case-insensitively


@dataclass(frozen=True, slots=True)
class ChangeSender:
    address: str  # without angle brackets; "" for the null sender
    params: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Deliver to the recipients' Junk and log the reason (Postfix holds it; we have no hold queue)."""

    reason: str


Change = (
    AddHeader | InsertHeader | ChangeHeader | ReplaceBody | AddRecipient | DeleteRecipient | ChangeSender | Quarantine
)


@dataclass(frozen=True, slots=True)
class MessageVerdict:
    verdict: Verdict
    changes: tuple[Change, ...] = field(default=())


class FilterSession(Protocol):
    """One filter's view of one SMTP session. Each call has the filter's own deadline inside: a filter
    that fails or passes it answers per its `on_error` (tempfail: `Refuse(451 4.7.1 ...)`; accept:
    `AcceptRest()` from a milter, `Continue()` from the hooks, whose other hooks still run) and logs why;
    it never raises."""

    async def connect(self, client: ClientInfo) -> Verdict: ...
    async def helo(self, name: str) -> Verdict: ...
    async def mail_from(self, transaction: Transaction) -> Verdict: ...
    async def rcpt_to(self, transaction: Transaction, recipient: str, params: tuple[str, ...]) -> Verdict: ...
    async def message(self, transaction: Transaction, data: bytes | Content) -> MessageVerdict: ...
    async def abort(self) -> None: ...
    async def close(self) -> None: ...


class Filter(Protocol):
    """A configured filter: makes a `FilterSession` per SMTP session of the listeners it applies to."""

    name: str  # for logs: "milter 127.0.0.1:11332", "hooks"

    def session(self) -> FilterSession: ...

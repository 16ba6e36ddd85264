"""The message trace's vocabulary: what happened to a message, one typed event at a time.

Every accepted message leaves a path of events in the store (kartero.store.interface.TraceStore): it was
received (from whom, over which listener, with which TLS, login and check results), stored in a mailbox,
queued, tried (each attempt with the remote host's reply), delivered, deferred or bounced, and a notice
(DSN) went to its sender. The events name addresses, hosts, ids and replies, never anything of the
message's content: no body, no subject, no header but its Message-ID.

Events are written by intake (with the message's commit), the queue runner (with each attempt's
record) and, for what belongs to no commit (messages refused or discarded at the end of DATA, notices
sent), on their own. Most of their strings come from the network: the store cuts each one to its bound in
`TRACE_BOUNDS` and replaces control characters before it keeps it (`clip`), so a hostile HELO or reply
costs a bounded row and cannot put a line break into a page or a log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum


class TraceKind(StrEnum):
    RECEIVED = "received"  # accepted at the end of DATA (or from sendmail, or written by Kartero: a DSN)
    REFUSED = "refused"  # refused at the end of DATA (checks, filters, a Sieve reject, a loop): nothing kept
    DISCARDED = "discarded"  # accepted for nobody (a filter's or the users' rules' discard)
    STORED = "stored"  # a copy in a local mailbox
    QUEUED = "queued"  # a remote recipient in the outbound queue (also forwarded and redirected copies)
    DELIVERED = "delivered"  # the remote host took it (2xx)
    DEFERRED = "deferred"  # an attempt failed for now; tried again later
    BOUNCED = "bounced"  # given up (5xx, null MX, past the queue lifetime)
    DSN = "dsn"  # a delivery status notification about it went to its sender
    DELETED = "deleted"  # removed from the queue by an admin


# The kinds that name the addresses a message was sent from and to, written once per message at intake
# (or at its refusal): the store indexes their addresses for the search by address. The later kinds
# name addresses already indexed.
ADDRESSED_KINDS = frozenset({TraceKind.RECEIVED, TraceKind.REFUSED, TraceKind.DISCARDED, TraceKind.STORED,
                             TraceKind.QUEUED})  # fmt: skip

# The most characters kept of each string field (what the network sends is cut here, never refused):
# addresses as SMTP looks at them (RFC 5321 §4.5.3.1.3: 256), host names (RFC 1035: 255), replies to
# what Kartero's own queue listing keeps of them, the rest to what a page shows on a line.
TRACE_BOUNDS = {
    "message_id": 64, "queue_id": 64, "header_id": 256, "sender": 256, "recipient": 256, "account": 256,
    "origin": 16, "listener": 32, "client": 64, "client_name": 255, "helo": 255, "tls": 128, "user": 256,
    "checks": 512, "mailbox": 256, "remote": 255, "reply": 512, "status": 16, "note": 256, "related": 64,
}  # fmt: skip
# Recipients named on one received or refused event (the rest are counted in its note).
MAX_RECIPIENTS = 100

# The detail fields (besides kind, time, ids and the Message-ID): what the store keeps as one JSON object.
DETAIL_FIELDS = ("sender", "recipients", "recipient", "account", "origin", "listener", "client", "client_name",
                 "helo", "tls", "user", "checks", "mailbox", "remote", "reply", "status", "attempt", "size",
                 "note", "related")  # fmt: skip


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One step of a message's path. Fields that do not apply to a kind stay None.

    `message_id` is Kartero's id of the message (the `id` of its Received: field, of the `250 Message
    accepted as` reply and of the log's `id=`); the queue runner leaves it "" and names the queue entry:
    the store finds the message from the entry's queued event. `header_id` is the Message-ID field without
    angle brackets; intake leaves it None and the store takes it from the message's index."""

    kind: TraceKind
    at: float  # seconds since the epoch (kept to the millisecond)
    message_id: str = ""
    queue_id: str | None = None  # the queue entry (remote recipients' copy) the event is about
    header_id: str | None = None
    sender: str | None = None  # MAIL FROM, "" for the null sender (received, refused)
    recipients: tuple[str, ...] = ()  # RCPT TO, every accepted one (received, refused)
    recipient: str | None = None  # the one recipient an event is about (as RCPT named it, or the queue)
    account: str | None = None  # the account a stored copy went to, when not the recipient itself (an alias)
    origin: str | None = None  # kartero.mail.envelope.Origin: smtp, submission, sendmail, dsn, sieve, ...
    listener: str | None = None  # the listener it came in on (smtp, submission, submissions)
    client: str | None = None  # the client's IP address
    client_name: str | None = None  # its forward-confirmed reverse name, when looked up (milters)
    helo: str | None = None
    tls: str | None = None  # `version=TLSv1.3 cipher=...`, None in clear
    user: str | None = None  # the authenticated user (submission), the sendmail login
    checks: str | None = None  # SPF, DKIM and DMARC results (`spf=pass dkim=pass:example.org dmarc=pass`)
    mailbox: str | None = None  # where a stored copy went (INBOX, Junk, a Sieve fileinto)
    remote: str | None = None  # the remote host of a delivery attempt
    reply: str | None = None  # the reply that decided it (the remote host's, or ours), one line
    status: str | None = None  # the enhanced status code it counts as (a DSN's Status)
    attempt: int | None = None  # delivery attempts so far, this one included
    size: int | None = None  # octets (received)
    note: str | None = None  # why, in words: "forwarded for alias@...", a filter's verdict, a DSN's action
    related: str | None = None  # another message's id: the DSN sent about this one

    def detail(self) -> dict[str, object]:
        """The detail fields that are set, each string cut to its bound (`clip`): what the store keeps."""
        found: dict[str, object] = {}
        for name in DETAIL_FIELDS:
            value = getattr(self, name)
            if value is None or value == ():
                continue
            if isinstance(value, str):
                value = clip(value, TRACE_BOUNDS[name])
            elif isinstance(value, tuple):
                value = [clip(v, TRACE_BOUNDS["recipient"]) for v in value[:MAX_RECIPIENTS]]
            found[name] = value
        return found

    def addresses(self) -> list[str]:
        """The addresses this event names (sender, recipients, recipient, account), as written."""
        named = [*self.recipients[:MAX_RECIPIENTS], self.recipient, self.account]
        if self.sender:  # the null sender is nobody's address
            named.insert(0, self.sender)
        return [a for a in named if a]


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with control characters (CR, LF, NUL, DEL, ...) as `?`: what a
    trace keeps of a string the network chose. Linear; a clean string is returned as it is."""
    text = text[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else "?" for c in text)


def message_id_key(value: str) -> str:
    """A Message-ID field's value as the trace keeps and searches it: without angle brackets and white
    space (a folded field's line break), cut to its bound."""
    value = "".join(value.split())
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return clip(value, TRACE_BOUNDS["header_id"])


@dataclass(frozen=True, slots=True)
class TracedMessage:
    """One message's path as a search finds it: its events in the order they happened."""

    message_id: str
    events: tuple[TraceEvent, ...]

    @property
    def first(self) -> TraceEvent:
        """The event that opened the path: received (or refused), else the oldest kept."""
        return next((e for e in self.events if e.kind in (TraceKind.RECEIVED, TraceKind.REFUSED)), self.events[0])

    @property
    def header_id(self) -> str | None:
        return next((e.header_id for e in self.events if e.header_id), None)

    @property
    def queue_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.queue_id for e in self.events if e.queue_id))

    def outcomes(self) -> dict[str, TraceKind]:
        """Each recipient's state as its latest event says (stored, queued, delivered, deferred, bounced;
        refused or discarded for them all): what a list shows in one line per message."""
        states: dict[str, TraceKind] = {}
        for event in self.events:
            if event.kind in (TraceKind.REFUSED, TraceKind.DISCARDED):
                for address in event.recipients or ((event.recipient,) if event.recipient else ()):
                    states[address] = event.kind
            elif event.recipient and event.kind not in (TraceKind.DSN, TraceKind.RECEIVED):
                states[event.recipient] = event.kind
            elif event.kind is TraceKind.RECEIVED:
                for address in event.recipients:
                    states.setdefault(address, TraceKind.RECEIVED)
        return states


def format_at(at: float) -> str:
    """A trace time as the API and the CLI show it: RFC 3339 in UTC, to the millisecond."""
    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event_summary(event: TraceEvent) -> str:
    """What an event says, in one line of words (time and kind apart): what the CLI prints and a page
    may show under its kind."""
    parts: list[str] = []
    if event.kind in (TraceKind.RECEIVED, TraceKind.REFUSED, TraceKind.DISCARDED):
        if event.sender is not None:
            parts.append(f"from <{event.sender}>")
        if event.recipients:
            parts.append("to " + ", ".join(f"<{r}>" for r in event.recipients))
        if event.client:
            parts.append(f"client {event.client_name or 'unknown'}[{event.client}]")
        if event.helo:
            parts.append(f"helo {event.helo}")
        parts.append(f"via {event.listener or event.origin or 'unknown'}")
        if event.tls:
            parts.append(f"TLS {event.tls}")
        if event.user:
            parts.append(f"user {event.user}")
        if event.checks:
            parts.append(f"checks {event.checks}")
        if event.size is not None:
            parts.append(f"{event.size} octets")
    elif event.recipient:
        parts.append(f"<{event.recipient}>")
    if event.account:
        parts.append(f"account {event.account}")
    if event.mailbox:
        parts.append(f"mailbox {event.mailbox}")
    if event.queue_id and event.kind is TraceKind.QUEUED:
        parts.append(f"queue {event.queue_id}")
    if event.attempt is not None:
        parts.append(f"attempt {event.attempt}")
    if event.remote:
        parts.append(f"host {event.remote}")
    if event.reply:
        parts.append(f"said {event.reply}")
    if event.note:
        parts.append(f"({event.note})")
    if event.related:
        parts.append(f"id {event.related}")
    return ", ".join(parts)


def event_dict(event: TraceEvent) -> dict[str, object]:
    """An event as JSON (the API, `kartero trace --json`): time, kind, ids and every detail that is set."""
    found: dict[str, object] = {"at": format_at(event.at), "kind": event.kind.value, "message_id": event.message_id}
    if event.queue_id:
        found["queue_id"] = event.queue_id
    if event.header_id:
        found["header_id"] = event.header_id
    found.update(event.detail())
    return found


def message_dict(message: TracedMessage) -> dict[str, object]:
    """A traced message as JSON: its ids, where each recipient stands, and every event in order."""
    return {"id": message.message_id, "header_id": message.header_id, "queue_ids": list(message.queue_ids),
            "received_at": format_at(message.first.at), "sender": message.first.sender,
            "outcomes": {r: k.value for r, k in message.outcomes().items()},
            "events": [event_dict(e) for e in message.events]}  # fmt: skip

"""The storage interfaces every backend serves (SQLite + files now, PostgreSQL later).

Three protocols, one per concern, and `Store`, their composition as the server builds it: `AccountStore`
(accounts, aliases, the directory), `MailStore` (mailboxes, messages, flags, MODSEQs, the change feed,
bodies) and `QueueStore` (the outbound queue). Callers ask for the narrowest one they need.

Calls are synchronous and thread-safe; the server runs them in worker threads. `deliver` returns a
Future so that a backend can batch many deliveries into one durable commit (group commit): the Future
resolves only after the message bytes and the metadata that points to them are on stable storage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Protocol

from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord
from kartero.mail.replies import Reply
from kartero.mail.trace import TracedMessage, TraceEvent
from kartero.store.criteria import Criterion, Sort, ThreadFields

INBOX = "INBOX"
# RFC 6154 special-use mailboxes every account gets at creation: (name, attribute).
SPECIAL_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    (INBOX, None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


class StoreError(Exception):
    """A store operation failed for a reason the caller should report (not a bug)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now (restart, failover, network cut): try again later. IMAP answers
    NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP], SMTP 451 4.3.0."""


class AccountExists(StoreError):
    pass


class MailboxExists(StoreError):
    pass


class NoSuchMailbox(StoreError):
    pass


class NoSuchScript(StoreError):
    """No Sieve script of that name (ManageSieve NONEXISTENT)."""


class ScriptExists(StoreError):
    """A Sieve script of that name exists already (ManageSieve ALREADYEXISTS)."""


class ScriptIsActive(StoreError):
    """The active Sieve script cannot be deleted (RFC 5804 §2.10: ManageSieve ACTIVE)."""


class TooManyScripts(StoreError):
    """The account holds as many Sieve scripts as it may (ManageSieve QUOTA/MAXSCRIPTS)."""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    address: str
    password_hash: str
    created_at: int  # unix seconds
    scram: str = ""  # SCRAM-SHA-256 keys (kartero.auth.sasl.ScramCredentials.encode()), "" when not yet known
    is_admin: bool = False  # may use the web admin and the admin API (`kartero user admin ADDR on`)


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A bearer token of the JSON API (`kartero token create`); only its SHA-256 is stored."""

    name: str
    account_id: int | None  # None: the whole admin API; else it acts as that account
    created_at: int  # unix seconds


@dataclass(frozen=True, slots=True)
class WebSession:
    """A signed-in browser (the web admin or a user's page), found by the SHA-256 of its cookie."""

    account_id: int
    csrf: str  # the token every state-changing form of this session carries
    expires_at: int  # unix seconds


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    account_id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool
    objectid: str = ""  # RFC 8474 MAILBOXID: unique, kept across RENAME


def email_id(blob_id: str) -> str:
    """RFC 8474 EMAILID of a message: its stored body's id, shared by its copies (COPY, MOVE, one delivery
    to several mailboxes), as the RFC asks; the "M" keeps it an objectid that starts with a letter."""
    return "M" + blob_id


def blob_of_email_id(objectid: str) -> str | None:
    """The stored body an EMAILID names, or None when it cannot name one."""
    return objectid[1:] if objectid.startswith("M") and objectid[1:].isalnum() else None


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    messages: int
    unseen: int
    deleted: int
    size: int
    uidnext: int
    uidvalidity: int
    # Raised by exactly one per change (a message stored, one flag update, one expunge, one copy): a
    # session that knows the MODSEQs of its own changes can tell whether anything else happened.
    highestmodseq: int
    recent: int = 0  # messages no session has seen as \\Recent yet (UID >= the mailbox's first recent UID)
    deleted_size: int = 0  # the sizes of the \\Deleted messages: what EXPUNGE frees (RFC 9208 DELETED-STORAGE)


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """An account's storage use as RFC 9208 counts STORAGE (the RFC822.SIZE of every message in all its
    mailboxes, kept exactly by the store with every change) and its own limit."""

    account_id: int
    limit_bytes: int | None  # None: [limits] default_quota applies; 0: no limit
    used_bytes: int
    messages: int
    warned: bool = False  # the 90 % warning went out and usage has not gone below 90 % since
    address: str = ""

    def effective_limit(self, default_bytes: int) -> int:
        """The limit in bytes that applies (0: none)."""
        return default_bytes if self.limit_bytes is None else self.limit_bytes


@dataclass(frozen=True, slots=True)
class SelectSummary:
    """Everything SELECT reports, read in one consistent snapshot."""

    uids: Sequence[int]
    keywords: frozenset[str]
    first_unseen: int | None  # sequence number of the first message without \\Seen
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    first_recent_uid: int = 1  # messages from this UID on are \\Recent for the next session to claim them


@dataclass(frozen=True, slots=True)
class MessageRow:
    """What IMAP needs of one message; the index fields are filled only when asked for."""

    uid: int
    flags: frozenset[str]
    modseq: int
    size: int
    internal_date: int
    blob_id: str
    envelope: bytes | None = None
    body: bytes | None = None
    bodystructure: bytes | None = None
    parts: str | None = None  # the part tree as stored: kartero.mime.parttree.decode_parts reads it
    saved_at: int | None = None  # unix seconds it came into this mailbox (RFC 8514); None: stored before
    # that was kept
    preview: str | None = None  # RFC 8970, with the index fields; None: stored before previews were kept


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in a mailbox after a MODSEQ: messages added or re-flagged, and UIDs expunged."""

    changed: tuple[MessageRow, ...]
    vanished: tuple[int, ...]
    highestmodseq: int
    first_recent_uid: int = 1


@dataclass(frozen=True, slots=True)
class Copied:
    """What `Store.copy_messages` did: (source UID, new UID) pairs, and the one MODSEQ of the copies in the
    target (0 when nothing was copied), by which a NOTIFY session tells its own change from others'."""

    pairs: tuple[tuple[int, int], ...]
    modseq: int


@dataclass(frozen=True, slots=True)
class MetadataChange:
    """METADATA entries set or removed (RFC 5464), for NOTIFY's MailboxMetadataChange and
    ServerMetadataChange (RFC 5465 §5.7, §5.8)."""

    account_id: int
    mailbox_id: int | None  # None: the server's entries (of this account)
    names: tuple[str, ...]
    origin: object  # whoever made the change (an IMAP session), so that it is not reported back to it


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    """What `Store.update_flags` did: the rows whose flags changed (with their new flags and MODSEQ), the
    UIDs UNCHANGEDSINCE refused, and the MODSEQ each changed row had before, so that a session can tell
    whether the client knew the flags its change started from (RFC 9051 §6.4.6: .SILENT spares the client
    only the echo of its own change)."""

    changed: tuple[MessageRow, ...]
    refused: tuple[int, ...]
    modseq_before: Mapping[int, int]  # UID -> MODSEQ before this change, for each changed row
    missing: tuple[int, ...] = ()  # UIDs asked for that are not in the mailbox (expunged meanwhile)


def apply_flag_op(current: frozenset[str], op: FlagOp, flags: frozenset[str]) -> frozenset[str]:
    """A message's flags after a STORE: flags and keywords compare case-insensitively (RFC 9051 §2.3.2),
    so adding `$label` to `$Label` changes nothing."""
    if op is FlagOp.REPLACE:
        return flags
    lowered = {f.lower() for f in flags}
    if op is FlagOp.ADD:
        present = {f.lower() for f in current}
        return current | {f for f in flags if f.lower() not in present}
    return frozenset(f for f in current if f.lower() not in lowered)


class QueueState(StrEnum):
    PENDING = "pending"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One queued recipient due for a delivery attempt, with what its message needs."""

    recipient_id: int
    queue_id: str
    address: str
    domain: str
    notify: tuple[str, ...]
    orcpt: str | None
    attempts: int
    sender: str
    ret: str | None
    envid: str | None
    smtputf8: bool
    body_8bit: bool
    created_at: int
    expires_at: int
    delay_notified: bool
    size: int


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    recipient_id: int
    state: QueueState
    attempts: int
    next_attempt_at: int
    reply: Reply  # stored as its one-line text (Reply.to_line), which the queue listing and a DSN show
    status: str | None = None  # the DSN status of the outcome (not always the reply's enhanced code)
    remote_mta: str | None = None
    needs_report: bool = False  # a failure the sender must be told of (the entry stays until then)


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    recipient_id: int
    address: str
    orcpt: str | None
    status: str
    reply: str
    remote_mta: str | None
    failed_at: int


@dataclass(frozen=True, slots=True)
class Unreported:
    """The failed recipients of one queued message that its sender has not been told about yet."""

    queue_id: str
    sender: str
    ret: str | None
    envid: str | None
    smtputf8: bool
    created_at: int
    recipients: tuple[FailedRecipient, ...]


@dataclass(frozen=True, slots=True)
class QueueRecipientInfo:
    address: str
    state: QueueState
    attempts: int
    next_attempt_at: int
    last_reply: str | None


@dataclass(frozen=True, slots=True)
class QueueEntry:
    id: str
    sender: str
    size: int
    created_at: int
    expires_at: int
    recipients: tuple[QueueRecipientInfo, ...]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """How much waits in the outbound queue: its entries, and when the oldest was queued (None: empty)."""

    messages: int
    oldest_created_at: int | None
    waiting: int = 0  # recipients still to be tried (pending or deferred)


class FlagOp(Enum):
    ADD = "+"
    REMOVE = "-"
    REPLACE = ""


class SpamClass(StrEnum):
    """What a user said a message is, by moving it into or out of Junk or flagging it $Junk/$NotJunk."""

    SPAM = "spam"
    HAM = "ham"


@dataclass(frozen=True, slots=True)
class SpamReport:
    """One user's word on one stored message, for the spam filter to learn from (DESIGN.md §1b `[spam]
    learn`). The message is named by its body (`blob_id`, shared by all its copies), which outlives the
    move that caused the report."""

    user: str  # the account's address (rspamd's Deliver-To, for per-user statistics)
    blob_id: str
    size: int  # the message's size in octets
    kind: SpamClass


class SpamReports(Protocol):
    """Where IMAP commands send users' spam/ham reports (kartero/filters/learn.py serves it). The IMAP
    command must never wait for the spam filter: `report` only takes note."""

    def report(self, reports: Sequence[SpamReport]) -> None:
        """Queue the reports and return at once; never raises (when the queue is full, the oldest go)."""
        ...


@dataclass(frozen=True, slots=True)
class LedgerKey:
    """A message of an import source as the import ledger knows it (store/imports_sql.py)."""

    folder: str
    digest: str  # SHA-256 of the bytes stored, hex


@dataclass(frozen=True, slots=True)
class Claim:
    """What an import does with one message: store it under `blob_id` (`is_new`), or skip it (stored by
    an earlier run)."""

    key: LedgerKey
    occurrence: int  # the n-th message of these bytes in the folder
    blob_id: str
    is_new: bool


class ImportLedger(Protocol):
    """What `kartero import` has stored, per account and source, so that nothing is stored twice."""

    def claim(self, account_id: int, source: str, run: str, keys: Sequence[LedgerKey]) -> list[Claim]:
        """One claim per key, in order; a key met twice in a run (the same bytes twice in a folder)
        claims its second occurrence."""
        ...

    def confirm(self, account_id: int, source: str, claims: Sequence[Claim]) -> None:
        """These claims' messages are stored."""
        ...

    def settled(self, account_id: int, source: str, claims: Sequence[Claim]) -> list[bool]:
        """Per claim: is its message stored (its row done, or a message under its blob id)?"""
        ...


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    account_id: int
    mailbox: str = INBOX
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Outbound:
    """The remote recipients of a message: they go into the durable queue with it (the envelope record's
    recipients, with what the queue needs besides)."""

    sender: str  # "" for the null sender
    recipients: tuple[EnvelopeRecipient, ...]
    expires_at: int  # unix seconds: give up (and bounce) after this
    ret: str | None = None
    envid: str | None = None
    smtputf8: bool = False
    body_8bit: bool = False


@dataclass(frozen=True, slots=True)
class FileSpan:
    """Octets [offset, offset + length) of a file (a spool file): message bytes not held in memory. The
    file belongs to whoever made it and must stay until the delivery's Future is done."""

    path: Path
    offset: int
    length: int

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length < 0:
            raise ValueError(f"bad file span {self.offset}+{self.length}")


@dataclass(frozen=True, slots=True)
class Content:
    """A message as `head` (bytes: trace fields and the header, as changed by policy) followed by `tail`
    (the rest as received, in memory or in a spool file): how a large message reaches the store without
    ever being held whole in memory."""

    head: bytes
    tail: bytes | FileSpan

    def __len__(self) -> int:
        return len(self.head) + (self.tail.length if isinstance(self.tail, FileSpan) else len(self.tail))


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message for local mailboxes and/or the outbound queue; its bytes are stored once."""

    blob_id: str
    data: bytes | Content
    targets: tuple[DeliveryTarget, ...]
    internal_date: int
    envelope: EnvelopeRecord | None = None  # how it arrived (kartero.mail.envelope); None: nothing known
    outbound: Outbound | None = None

    def __post_init__(self) -> None:
        if not self.targets and (self.outbound is None or not self.outbound.recipients):
            raise ValueError("a delivery needs at least one target or outbound recipient")
        if not self.blob_id.isalnum():
            raise ValueError(f"bad blob id {self.blob_id!r}")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    account_id: int
    mailbox_id: int
    uid: int
    modseq: int


class ExpungeHold(Protocol):
    """A session's claim on the bytes of messages expunged after the MODSEQ it has reported up to
    (RFC 2180 §4.1.1: a session not yet told of an expunge may still FETCH the message)."""

    def advance(self, modseq: int) -> None:
        """The session has now reported every change, expunges included, up to `modseq`."""
        ...

    def release(self) -> None:
        """The session no longer shows the mailbox (deselected, logged out, gone)."""
        ...


class MessageReader(Protocol):
    size: int

    def read(self, start: int, length: int) -> bytes:
        """Octets [start, start + length) clipped to the message; raises OSError."""
        ...

    def close(self) -> None: ...


class AccountStore(Protocol):
    """Accounts, aliases, the directory snapshot the policy resolves recipients from, and credentials."""

    def add_account(self, address: str, password_hash: str, scram: str = "") -> Account: ...
    def get_account(self, address: str) -> Account | None: ...
    def list_accounts(self) -> list[Account]: ...
    def set_password(self, address: str, password_hash: str, scram: str = "") -> bool: ...
    def set_scram(self, address: str, scram: str) -> None: ...
    def delete_account(self, address: str) -> bool: ...
    def add_alias(self, source: str, destination: str) -> bool: ...
    def delete_alias(self, source: str) -> int: ...
    def list_aliases(self) -> list[tuple[str, str]]: ...
    def set_quota(self, address: str, limit_bytes: int | None) -> bool:
        """Set the account's storage limit (None: the default, 0: none); False when there is no such
        account. Raises the directory version, so a running server sees the new limit."""
        ...

    def load_directory(self) -> tuple[dict[str, int], dict[str, tuple[str, ...]], int | None]:
        """Every account (address -> id), every alias (source -> destinations), the first account."""
        ...

    def directory_version(self) -> int:
        """A counter the store raises with every account or alias change, by any process (cheap: called
        per RCPT)."""
        ...

    def set_admin(self, address: str, is_admin: bool) -> bool:
        """Whether the account may use the web admin and the admin API; False: no such account."""
        ...

    def get_account_by_id(self, account_id: int) -> Account | None: ...

    # The HTTP side's credentials: API tokens and browser sessions, by the SHA-256 of the secret.
    def add_token(self, name: str, token_hash: str, account_id: int | None) -> bool:
        """False: a token of that name exists."""
        ...

    def list_tokens(self) -> list[ApiToken]: ...
    def delete_token(self, name: str) -> bool: ...
    def find_token(self, token_hash: str) -> ApiToken | None: ...
    def add_web_session(self, session_hash: str, session: WebSession) -> None:
        """Store a new session (and drop the expired ones: sessions need no other cleaning)."""
        ...

    def get_web_session(self, session_hash: str, now: int) -> WebSession | None: ...
    def delete_web_session(self, session_hash: str) -> None: ...
    def delete_web_sessions(self, account_id: int) -> None:
        """Sign out every browser of the account (its password changed, or it lost admin rights)."""
        ...

    def server_secret(self, name: str, candidate: str) -> str:
        """The secret kept under `name` (a row of `meta`), storing `candidate` first when there is none:
        the first process to ask wins, so every node of a cluster gets the same one (SRS)."""
        ...


class MailStore(Protocol):
    """Mailboxes, messages, flags, MODSEQs, METADATA, the change feed and the stored bodies: what IMAP and
    POP3 see. `deliver`/`deliver_group` store messages (a delivery's outbound recipients are queued in
    the same commit)."""

    def deliver(self, delivery: Delivery) -> Future[list[StoredMessage]]:
        """Store durably; the Future fails with StoreError when no target could take the message."""
        ...

    def deliver_group(
        self, deliveries: Sequence[Delivery], trace: Sequence[TraceEvent] = ()
    ) -> Future[list[list[StoredMessage]]]:
        """Store several deliveries (e.g. a message's local copy and its queue entry) in one commit: all
        of them or none. The Future fails with StoreError when any of them could not be stored; other
        callers' deliveries committed in the same batch are never affected. `trace`: the message's
        trace events (received, stored, queued), kept in the same commit (see TraceStore)."""
        ...

    def list_mailboxes(self, account_id: int) -> list[Mailbox]: ...
    def get_mailbox(self, account_id: int, name: str) -> Mailbox | None: ...
    def create_mailbox(self, account_id: int, name: str, special_use: str | None = None) -> Mailbox:
        """Raises MailboxExists."""
        ...

    def delete_mailbox(self, account_id: int, name: str) -> int:
        """Removes the mailbox and its messages and returns its id; raises NoSuchMailbox."""
        ...

    def rename_mailbox(self, account_id: int, old: str, new: str, separator: str) -> dict[int, str]:
        """Renames `old` and every `old<separator>...` below it (and their subscriptions); returns each
        renamed mailbox's new name by id (for INBOX, the mailbox created to take its messages). Raises
        NoSuchMailbox/MailboxExists."""
        ...

    def subscriptions(self, account_id: int) -> set[str]: ...
    def quota_usage(
        self, account_ids: Sequence[int] | None = None, *, of_mailboxes: Sequence[int] = ()
    ) -> dict[int, QuotaUsage]:
        """Usage and limit of each of `account_ids` that exists, and of the accounts owning the
        mailboxes `of_mailboxes` (both left out: every account). Cheap: it adds up the per-mailbox
        counters each change keeps, never the messages."""
        ...

    def mark_quota_warned(self, account_id: int, warned: bool) -> bool:
        """Set the account's "90 % warning sent" mark; True only for the caller that changed it (so of
        several processes exactly one sends the warning)."""
        ...

    def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None: ...
    def mailbox_status(self, mailbox_id: int) -> MailboxStatus: ...
    def select_summary(self, mailbox_id: int) -> SelectSummary: ...
    def claim_recent(self, mailbox_id: int, uid_end: int) -> int:
        """Move the mailbox's first recent UID up to `uid_end` (never down) and return where it was: the
        caller, a read-write IMAP4rev1 session, alone sees UIDs from there below `uid_end` as \\Recent
        (RFC 3501 §2.3.2). Raises NoSuchMailbox."""
        ...

    def message_rows(
        self, mailbox_id: int, uids: Sequence[int] | None = None, *, with_index: bool = False,
        expunged: bool = False,
    ) -> list[MessageRow]:
        """Rows of the given UIDs (all when None), in UID order. With `expunged`, messages of `uids`
        expunged meanwhile whose bytes a hold still keeps are included, as they were when expunged."""
        ...

    def hold_expunged(self, mailbox_id: int, modseq: int) -> ExpungeHold:
        """Keep the bytes (and the rows, for message_rows) of messages expunged after `modseq` readable
        until the hold advances past their expunge or is released. A session holds its selected
        mailbox from before it reads the message list (take the hold at MODSEQ 0, then advance)."""
        ...

    def changes_since(self, mailbox_id: int, modseq: int) -> Changes: ...
    def vanished_since(self, mailbox_id: int, modseq: int, uids: Sequence[int] | None = None) -> list[int]: ...
    def update_flags(
        self, mailbox_id: int, uids: Sequence[int], op: FlagOp, flags: frozenset[str], unchanged_since: int | None
    ) -> FlagUpdate:
        """Apply a flag change to the messages of `uids` still in the mailbox, in one transaction."""
        ...

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Remove the \\Deleted messages (of `uids` when given); returns the UIDs removed."""
        ...

    def copy_messages(
        self, source_id: int, uids: Sequence[int], target_id: int, *, move: bool, all_or_none: bool = False
    ) -> Copied:
        """Copy (or move) messages; returns (source UID, new UID) pairs and the copies' MODSEQ in the
        target. Bodies are shared, not copied.
        UIDs no longer in the source are skipped; with `all_or_none`, if any is missing nothing is copied
        and the result is empty."""
        ...

    def search(self, mailbox_id: int, criterion: Criterion) -> list[MessageRow]:
        """Messages matching, in UID order."""
        ...

    def sort(self, mailbox_id: int, keys: Sequence[Sort], criterion: Criterion) -> list[int]:
        """UIDs of matching messages in the order of `keys` (ties: ascending UID)."""
        ...

    def thread_fields(self, mailbox_id: int, criterion: Criterion) -> list[ThreadFields]:
        """What THREAD needs of the matching messages, in UID order (each header read in bounded windows)."""
        ...

    def keep_previews(self, previews: Mapping[str, str]) -> None:
        """Keep the previews (by blob id) made for messages stored before previews were kept (see
        MessageRow.preview); a blob gone meanwhile is skipped."""
        ...

    def sieve_recalls(self, account_id: int, key: str, now: int) -> bool:
        """Whether Sieve remembers `key` for this account (set by `sieve_remember`, not expired by `now`)."""
        ...

    def sieve_remember(self, account_id: int, key: str, expires_at: int, now: int, *, only_if_new: bool) -> bool:
        """Remember `key` until `expires_at`; with `only_if_new`, only when not remembered at `now` (one
        atomic step, so two deliveries at once cannot both send a vacation reply). True when remembered
        now. Expired keys of the account are dropped on the way."""
        ...

    def metadata(self, account_id: int, mailbox_id: int | None) -> dict[str, bytes]:
        """The METADATA entries (RFC 5464) of a mailbox, or of the server for this account (None), by
        name in ascending order."""
        ...

    def set_metadata(
        self, account_id: int, mailbox_id: int | None, changes: Sequence[tuple[str, bytes | None]], max_entries: int,
        origin: object = None,
    ) -> bool:
        """Sets (a value) or removes (None) METADATA entries, all or none: False, and nothing changed, when
        the mailbox (or the server for this account) would hold more than `max_entries`. Entries go with
        their mailbox when it is deleted and follow it through RENAME. Raises NoSuchMailbox. After a
        change, the metadata listeners hear of it with `origin` (who made it)."""
        ...

    def read_message(self, blob_id: str) -> bytes: ...
    def open_message(self, blob_id: str) -> MessageReader:
        """A handle on a message's bytes for reading it in pieces (FETCH, RETR): it stays readable until
        closed, even when the message is expunged or its segment compacted meanwhile, so a response
        whose size was announced can always be finished. Raises StoreError for an unknown message."""
        ...
    def read_envelope(self, blob_id: str) -> EnvelopeRecord:
        """How the message arrived (also read from the shapes stored before EnvelopeRecord existed)."""
        ...

    def add_listener(self, listener: Callable[[frozenset[int]], None]) -> None:
        """Call `listener` with the ids of changed mailboxes after every commit (from any thread)."""
        ...

    def add_metadata_listener(self, listener: Callable[[MetadataChange], None]) -> None:
        """Call `listener` after METADATA entries were set or removed (from any thread)."""
        ...

    def add_account_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener` with an account's id after its mailboxes were created, deleted or renamed, or
        its subscriptions changed (from any thread)."""
        ...


@dataclass(frozen=True, slots=True)
class SieveScriptInfo:
    """A Sieve script as LISTSCRIPTS shows it."""

    name: str
    active: bool


class SieveStore(Protocol):
    """Sieve scripts (RFC 5228) of each account, at most one of them active, and the global scripts
    (`account_id` None: what `include :global` reads, RFC 6609 §3.2; none of them is ever active).
    Names are checked by the caller (kartero.managesieve.names); the store keeps what it is given."""

    def list_scripts(self, account_id: int | None) -> list[SieveScriptInfo]:
        """By name (code point order)."""
        ...

    def get_script(self, account_id: int | None, name: str) -> str | None: ...
    def put_script(self, account_id: int | None, name: str, text: str, max_scripts: int = 0) -> None:
        """Create or replace (an active script stays active). Raises TooManyScripts when creating it would
        make more than `max_scripts` (0: no limit)."""
        ...

    def delete_script(self, account_id: int | None, name: str) -> None:
        """Raises NoSuchScript, or ScriptIsActive for the active script."""
        ...

    def rename_script(self, account_id: int | None, old: str, new: str) -> None:
        """Renames, keeping it active if it was. Raises NoSuchScript or ScriptExists."""
        ...

    def set_active(self, account_id: int, name: str | None) -> None:
        """Make `name` the account's one active script, or none (None). Raises NoSuchScript."""
        ...

    def active_script(self, account_id: int) -> tuple[str, str] | None:
        """The account's active script as (name, text), or None."""
        ...

    def active_accounts(self) -> set[int]:
        """The accounts that have an active script."""
        ...

    def sieve_version(self) -> int:
        """A counter raised by every script change of any account or the globals, by any process (one
        read of one row): a cache of compiled scripts that remembers it knows when to read again."""
        ...


class QueueStore(Protocol):
    """The outbound queue: what is due, attempts and their outcomes, failure reports."""

    def due_recipients(self, now: int, limit: int, exclude: frozenset[int] = frozenset()) -> list[QueueItem]:
        """Pending or deferred recipients whose next attempt is due, oldest first."""
        ...

    def renew_leases(self, recipient_ids: Sequence[int]) -> None:
        """Keep delivering these (a shared queue leases what a node delivers; see store/postgres.py)."""
        ...

    def update_recipients(self, updates: Sequence[RecipientUpdate], trace: Sequence[TraceEvent] = ()) -> None:
        """Record attempts (durably); queue entries with no recipient left to try are removed. `trace`:
        the attempts' trace events, kept in the same transaction (see TraceStore)."""
        ...

    def unreported_failures(self, queue_id: str) -> Unreported | None: ...
    def mark_reported(self, recipient_ids: Sequence[int]) -> None:
        """The failure notice for these recipients is stored; their entry may go when nothing else is left."""
        ...

    def entries_with_unreported_failures(self) -> list[str]: ...
    def mark_delay_notified(self, queue_id: str) -> bool:
        """True only for the first call per entry (so one delay notice is sent)."""
        ...

    def next_due(self) -> int | None: ...
    def queue_entries(self) -> list[QueueEntry]: ...
    def queue_stats(self) -> QueueStats:
        """One aggregate over the entries (no recipient rows read): cheap enough for every scrape."""
        ...

    def queue_delete(self, queue_id: str) -> bool:
        """Remove an entry with its message; each recipient still to try gets a `deleted` trace event
        when the message has a trace."""
        ...

    def queue_flush(self, queue_id: str | None = None) -> int:
        """Make the open recipients (of one message, or all) due now; how many."""
        ...
    def add_queue_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` after a commit that put something into the queue (from any thread)."""
        ...


@dataclass(frozen=True, slots=True)
class TraceQuery:
    """What a trace search asks for: messages matching every criterion given (none: the latest ones).

    `address` matches a message's sender, its recipients, the accounts they reached and the addresses it
    was forwarded to, exactly but for the domain's case and form (U-labels match their A-label).
    `message_id` is the Message-ID field (angle brackets or not); `id` is one of Kartero's ids: a
    message's (`250 Message accepted as ...`, the log's `id=`) or a queue entry's (`queued=`, `kartero
    queue list`). `since`/`until`: seconds since the epoch, when the message arrived (its id's time) in [since,
    until).
    """

    address: str | None = None
    message_id: str | None = None
    id: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 50

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_TRACE_RESULTS:
            raise ValueError(f"limit must be 1 to {MAX_TRACE_RESULTS}")


# Messages one trace search returns at most, and events over all of them (a message deferred for days
# to many recipients has many): a search costs a bounded amount whatever the table holds.
MAX_TRACE_RESULTS = 200
MAX_TRACE_EVENTS = 20_000


@dataclass(frozen=True, slots=True)
class TraceResult:
    """The messages found, newest first, each with its events in time order; `more`: the limit cut the
    list (narrow the search)."""

    messages: tuple[TracedMessage, ...]
    more: bool = False


class TraceStore(Protocol):
    """The message trace (kartero.mail.trace): every message's path as events, kept for `[trace] keep`.

    The events of an accepted message and of its delivery attempts are written with the commits that
    make them true (`MailStore.deliver_group`, `QueueStore.update_recipients`): they cost no commit of
    their own. `record` is for the rest (a message refused or discarded at the end of DATA, a notice
    sent): one transaction that is not synced to disk (a power cut may lose it; it never loses mail)."""

    def record(self, events: Sequence[TraceEvent]) -> None: ...

    def search(self, query: TraceQuery) -> TraceResult:
        """The messages matching `query` (TraceQuery), newest first. Every search runs on an index (by
        address, Message-ID, id or time) and reads a bounded number of rows."""
        ...

    def activity(self, since: float, until: float) -> dict[tuple[int, str], int]:
        """Events per (hour start in seconds since the epoch, kind) in [since, until), counted over the
        messages received from a day before `since` on (on the ids' index, newest first, a bounded number
        of rows): the dashboard's chart."""
        ...

    def expire(self, before: float, max_rows: int) -> int:
        """Delete at most `max_rows` events (and as many address index rows) older than `before` (seconds
        since the epoch), oldest first; returns how many went. Idempotent: every node may run it."""
        ...


class Store(Protocol):
    """The whole store as the server builds it: each caller takes the narrowest part it needs (auth the
    accounts, IMAP and POP3 the mail, the queue runner the queue)."""

    @property
    def accounts(self) -> AccountStore: ...
    @property
    def mail(self) -> MailStore: ...
    @property
    def queue(self) -> QueueStore: ...
    @property
    def sieve(self) -> SieveStore: ...
    @property
    def trace(self) -> TraceStore: ...
    def close(self) -> None:
        """Finish every delivery already accepted, then release everything."""
        ...


class AbuseKind(StrEnum):
    """What a shared abuse event says (the `kind` column of `abuse_events`)."""

    LOGIN_FAILED = "login_failed"  # key: (client network, account)
    LOGIN_OK = "login_ok"  # key: (client network, account): takes back that pair's failures
    SENT = "sent"  # key: (user,): one submitted message
    GREY_SEEN = "grey_seen"  # key: (client network, sender, recipient): a greylisted first attempt
    GREY_PASSED = "grey_passed"  # key: the same triplet: it passes from now on


KEY_PARTS = {AbuseKind.LOGIN_FAILED: 2, AbuseKind.LOGIN_OK: 2, AbuseKind.SENT: 1, AbuseKind.GREY_SEEN: 3,
             AbuseKind.GREY_PASSED: 3}  # fmt: skip

@dataclass(frozen=True, slots=True)
class AbuseEvent:
    """One event of the abuse state a cluster shares (policy/shared.py), stamped with wall-clock time."""

    kind: AbuseKind
    key: tuple[str, ...]  # KEY_PARTS[kind] parts
    at: float  # seconds since the epoch

    def __post_init__(self) -> None:
        if len(self.key) != KEY_PARTS[self.kind]:
            raise ValueError(f"a {self.kind} event's key has {KEY_PARTS[self.kind]} parts")


class AbuseStore(Protocol):
    """Where the processes of a cluster share the counts behind the failed-login throttle, the sending
    limit and greylisting (PostgreSQL; the embedded store has none: one process counts in memory).
    Called from a worker thread, never from the event loop; raises StoreUnavailable while the database
    is away."""

    def exchange(self, outgoing: Sequence[AbuseEvent], since: float) -> list[AbuseEvent]:
        """Record this process's `outgoing` events, and return those the other processes recorded since
        the last call (the first call: those at or after `since`), oldest first, at most a batch."""
        ...

    @property
    def is_behind(self) -> bool:
        """Whether the last `exchange` returned a full batch (more are waiting)."""
        ...

    def expire(self, before: Mapping[AbuseKind, float], max_rows: int) -> int:
        """Delete the events of each kind older than its time, and the oldest beyond `max_rows` in all;
        returns how many went."""
        ...


def as_targets(account_ids: Sequence[int], mailbox: str = INBOX) -> tuple[DeliveryTarget, ...]:
    """Targets (INBOX unless told) for these accounts, each once, in first-seen order."""
    return tuple(DeliveryTarget(a, mailbox) for a in dict.fromkeys(account_ids))

"""The storage interface every backend serves (SQLite + files now, PostgreSQL later).

Calls are synchronous and thread-safe; the server runs them in worker threads. `deliver` returns a
Future so that a backend can batch many deliveries into one durable commit (group commit): the Future
resolves only after the message bytes and the metadata that points to them are on stable storage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

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


class AccountExists(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    address: str
    password_hash: str
    created_at: int  # unix seconds


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


@dataclass(frozen=True, slots=True)
class MessageInfo:
    mailbox_id: int
    uid: int
    blob_id: str
    size: int
    internal_date: int  # unix seconds
    flags: frozenset[str]
    modseq: int


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    account_id: int
    mailbox: str = INBOX


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message for one or more mailboxes; its bytes are stored once however many targets."""

    blob_id: str
    data: bytes
    targets: tuple[DeliveryTarget, ...]
    internal_date: int
    envelope: Mapping[str, Any] = field(default_factory=dict)  # JSON-ready: sender, recipients, DSN

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("a delivery needs at least one target")
        if not self.blob_id.isalnum():
            raise ValueError(f"bad blob id {self.blob_id!r}")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    account_id: int
    mailbox_id: int
    uid: int
    modseq: int


class Store(Protocol):
    def deliver(self, delivery: Delivery) -> Future[list[StoredMessage]]:
        """Store durably; the Future fails with StoreError when no target could take the message."""
        ...

    # Accounts and aliases
    def add_account(self, address: str, password_hash: str) -> Account: ...
    def get_account(self, address: str) -> Account | None: ...
    def get_account_by_id(self, account_id: int) -> Account | None: ...
    def first_account(self) -> Account | None: ...
    def list_accounts(self) -> list[Account]: ...
    def set_password(self, address: str, password_hash: str) -> bool: ...
    def delete_account(self, address: str) -> bool: ...
    def add_alias(self, source: str, destination: str) -> bool: ...
    def delete_alias(self, source: str) -> int: ...
    def list_aliases(self) -> list[tuple[str, str]]: ...
    def alias_destinations(self, source: str) -> list[str]: ...
    def load_directory(self) -> tuple[dict[str, int], dict[str, tuple[str, ...]], int | None]:
        """Every account (address -> id), every alias (source -> destinations), the first account."""
        ...

    def directory_version(self) -> object:
        """A token that changes whenever accounts or aliases change (cheap: called per RCPT)."""
        ...

    # Mailboxes and messages
    def list_mailboxes(self, account_id: int) -> list[Mailbox]: ...
    def get_mailbox(self, account_id: int, name: str) -> Mailbox | None: ...
    def list_messages(self, mailbox_id: int) -> list[MessageInfo]: ...
    def read_message(self, blob_id: str) -> bytes: ...
    def read_envelope(self, blob_id: str) -> Mapping[str, Any]: ...

    def close(self) -> None: ...


def as_targets(account_ids: Sequence[int]) -> tuple[DeliveryTarget, ...]:
    """INBOX targets for these accounts, each once, in first-seen order (one copy per recipient)."""
    return tuple(DeliveryTarget(a) for a in dict.fromkeys(account_ids))

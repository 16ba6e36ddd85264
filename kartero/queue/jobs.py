"""What the queue hands the delivery agent and what comes back: messages with their recipients, and an
outcome per recipient. Plain data, shared by kartero/queue and kartero/delivery."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kartero.mail.replies import Reply
from kartero.store.interface import MessageReader

# RFC 3463 §3.1: the status a reply without an enhanced code implies, by its class.
_TRANSIENT_STATUS = "4.0.0"
_PERMANENT_STATUS = "5.0.0"


@dataclass(frozen=True, slots=True)
class Delivered:
    reply: Reply  # the remote server's answer to the message (2xx)
    remote_mta: str | None = None
    remote_dsn: bool = False  # the next MTA took over DSN duties (it offered DSN)

    def __post_init__(self) -> None:
        if not self.reply.is_positive:
            raise ValueError(f"delivered with a negative reply: {self.reply}")


@dataclass(frozen=True, slots=True)
class Deferred:
    """Tried again later. `reply` says why: the remote server's reply, or one of ours (the outbound
    group of kartero/mail/replies.py). The DSN status is the reply's enhanced code (4.0.0 without one),
    unless `status_override` classifies the attempt otherwise: a domain not found yet retried (4.4.4),
    no host reachable whatever the last host said (4.4.1)."""

    reply: Reply
    remote_mta: str | None = None
    status_override: str | None = None

    def __post_init__(self) -> None:
        if not self.status.startswith("4."):  # a delay notice's Status is 4.x.x (RFC 3464 §2.3.4)
            raise ValueError(f"deferred with status {self.status}: {self.reply}")

    @property
    def status(self) -> str:
        return self.status_override or self.reply.enhanced or _TRANSIENT_STATUS


@dataclass(frozen=True, slots=True)
class Failed:
    """Given up. `reply` says why; the DSN status is its enhanced code (5.0.0 without one), unless
    `status_override` classifies the failure otherwise: a message past its queue lifetime (5.4.7)."""

    reply: Reply
    remote_mta: str | None = None
    is_nxdomain: bool = False
    status_override: str | None = None

    def __post_init__(self) -> None:
        if not self.status.startswith("5."):
            raise ValueError(f"failed with status {self.status}: {self.reply}")

    @property
    def status(self) -> str:
        return self.status_override or self.reply.enhanced or _PERMANENT_STATUS


Outcome = Delivered | Deferred | Failed


@dataclass(frozen=True, slots=True)
class JobRecipient:
    recipient_id: int
    address: str
    notify: tuple[str, ...]
    orcpt: str | None


@dataclass(frozen=True, slots=True)
class JobMessage:
    queue_id: str
    sender: str
    data: bytes  # the message; empty for a large one, which is read a piece at a time through `open_body`
    recipients: tuple[JobRecipient, ...]
    smtputf8: bool
    body_8bit: bool
    ret: str | None
    envid: str | None
    size: int = 0  # of a large message (data empty)
    open_body: Callable[[], MessageReader] | None = None


OnOutcomes = Callable[[dict[int, Outcome]], None]


class Deliverer(Protocol):
    async def deliver(
        self, domain: str, messages: Sequence[JobMessage], on_outcomes: OnOutcomes | None = None
    ) -> dict[int, Outcome]:
        """An outcome for every recipient of every message (all to `domain`). `on_outcomes` hears each
        message's outcomes as soon as the peer has answered (so they are recorded before the next)."""
        ...

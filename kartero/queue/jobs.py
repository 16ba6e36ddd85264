"""What the queue hands the delivery agent and what comes back: messages with their recipients, and an
outcome per recipient. Plain data, shared by kartero/queue and kartero/delivery."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kartero.store.interface import MessageReader


@dataclass(frozen=True, slots=True)
class Delivered:
    reply: str
    remote_mta: str | None = None
    remote_dsn: bool = False  # the next MTA took over DSN duties (it offered DSN)


@dataclass(frozen=True, slots=True)
class Deferred:
    reply: str
    status: str = "4.0.0"
    remote_mta: str | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    reply: str
    status: str = "5.0.0"
    remote_mta: str | None = None
    is_nxdomain: bool = False


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

"""The import run: a source's folders created, its messages stored in batches under the ledger
(store/imports_sql.py), so that a rerun or a run after a crash stores nothing twice.

A batch (BATCH messages, or BATCH_BYTES of them in memory) is claimed in one ledger transaction, its new
messages handed to the store as one delivery group (one commit, UIDs in the source's order; should it
fail, each message alone, so one bad message fails alone), and the ledger told which ones landed. Messages
are stored with their flags and internal date, the envelope record saying `import` (and, from mbox, the
envelope sender); the bytes are never parsed to decide anything, so a message the MIME parser cannot
read is stored as it came (the store indexes it as best it can).

Quotas are not applied: an import is the admin's act, and stopping halfway would leave a half-moved
account. The CLI warns when the account ends up over its limit.

While a server runs on the embedded store only its committer may store, so the run hands each batch's
new messages over (`Handover`: importdrop.py writes them into the server's import drop) instead of
storing them; the server stores them with `store_deliveries` over `import_delivery`, as this run does.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from kartero.mail.envelope import EnvelopeRecord, Origin
from kartero.migrate.model import SEPARATOR, FolderFound, Item, MessageFound, Unreadable, check_folder_name
from kartero.store.interface import (
    INBOX,
    Claim,
    Content,
    Delivery,
    DeliveryTarget,
    ImportLedger,
    LedgerKey,
    MailboxExists,
    MailStore,
    StoreError,
)

BATCH = 100  # messages per ledger transaction and store hand-over
BATCH_BYTES = 4 * 1024 * 1024  # message octets held in memory by one batch at most (bench/import_memory.py: 16 MiB
# raised the peak RSS from 68 to 103 MB for no gain in speed)
MAX_PROBLEMS = 20  # problems kept for the report (all are counted)


@dataclass
class Outcome:
    imported: int = 0
    skipped: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    folders_created: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"imported {self.imported}, skipped {self.skipped} already present, failed {self.failed}"

    def note(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


def import_delivery(account_id: int, folder: str, flags: frozenset[str], internal_date: int, sender: str,
                    blob_id: str, data: bytes | Content, now: int) -> Delivery:  # fmt: skip
    """The delivery of one imported message: into `folder` with its flags and internal date, under the id
    the ledger's claim names, its envelope record saying `import`."""
    return Delivery(
        blob_id=blob_id,
        data=data,
        targets=(DeliveryTarget(account_id, folder, flags),),
        internal_date=internal_date,
        envelope=EnvelopeRecord(Origin.IMPORT, sender, received_at=now, user="kartero import"),
    )


def store_deliveries(mail: MailStore, deliveries: list[Delivery],
                     timeout_s: float | None = None) -> list[Exception | None]:  # fmt: skip
    """Store a batch as one delivery group, so that its messages get their UIDs in the source's order
    (deliveries handed over one by one are indexed in parallel and may land in any order); when the group
    fails, each alone, so that one bad message fails alone. Per delivery: None (stored) or why not.

    `timeout_s` (the server's pickup: a worker-pool thread must not wait on the committer for ever) is
    each wait's. A commit that outlasts it may still happen, so nothing is handed over again here: the
    rest count as failed, and the next pass finds what was stored (the ledger's `settled`)."""
    if not deliveries:
        return []
    try:
        mail.deliver_group(deliveries).result(timeout_s)
    except TimeoutError as exc:  # before OSError, its base class
        return [exc] * len(deliveries)
    except (StoreError, OSError):
        pass
    else:
        return [None] * len(deliveries)
    results: list[Exception | None] = []
    for delivery in deliveries:
        try:
            mail.deliver(delivery).result(timeout_s)
        except TimeoutError as exc:
            return results + [exc] * (len(deliveries) - len(results))
        except (StoreError, OSError) as exc:
            results.append(exc)
        else:
            results.append(None)
    return results


class Handover(Protocol):
    """Where a batch's new messages go when this process may not store them (importdrop.py): the outcome
    is told what was imported and what failed once that is known."""

    def hand_over(self, new: list[tuple[MessageFound, Claim]], outcome: Outcome) -> None: ...

    def drain(self, outcome: Outcome) -> None:
        """Wait until everything handed over is stored or failed."""
        ...


class Importer:
    """Imports into one account. `progress` is called with the units (the source's) each batch covered.
    `handover`: where new messages go instead of this process's store (None: stored here)."""

    def __init__(self, mail: MailStore, ledger: ImportLedger, account_id: int, source: str,
                 progress: Callable[[int], None] = lambda _: None,
                 handover: Handover | None = None) -> None:  # fmt: skip
        self._mail = mail
        self._ledger = ledger
        self._account_id = account_id
        self._source = source
        self.progress = progress
        self._handover = handover
        self._run = secrets.token_hex(8)
        self._batch: list[MessageFound] = []
        self._batch_bytes = 0
        self._usable: set[str] = set()  # folders that exist here now
        self.outcome = Outcome()

    def run(self, items: Iterable[Item]) -> Outcome:
        """Import everything `items` yields. When the source fails midway (its exception is raised), the
        messages read before it are stored first; an interrupt (Ctrl-C) stores no more."""
        try:
            for item in items:
                match item:
                    case FolderFound(name=name):
                        self._flush()
                        self._ensure_folder(name)
                    case MessageFound():
                        self._add(item)
                    case Unreadable(folder=folder, problem=problem, units=units):
                        self.outcome.failed += 1
                        self.outcome.note(f"{folder}: {problem}")
                        self.progress(units)
        except Exception:
            self._flush()
            self._drain()
            raise
        self._flush()
        self._drain()
        return self.outcome

    def _drain(self) -> None:
        if self._handover is not None:
            self._handover.drain(self.outcome)

    def _ensure_folder(self, name: str) -> None:
        if (problem := check_folder_name(name)) is not None:
            self.outcome.note(problem)
            return
        levels = name.split(SEPARATOR)
        for depth in range(1, len(levels) + 1):  # RFC 9051 §6.3.4: the superiors too
            path = SEPARATOR.join(levels[:depth])
            if path == INBOX or self._mail.get_mailbox(self._account_id, path) is not None:
                continue
            with contextlib.suppress(MailboxExists):  # made meanwhile by a client
                self._mail.create_mailbox(self._account_id, path)
                self.outcome.folders_created.append(path)
        self._usable.add(name)

    def _add(self, message: MessageFound) -> None:
        if message.folder not in self._usable:
            self.outcome.failed += 1
            self.progress(message.units)
            message.body.discard()
            return
        self._batch.append(message)
        if message.body.path is None:
            self._batch_bytes += message.body.size
        if len(self._batch) >= BATCH or self._batch_bytes >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if not batch:
            return
        try:
            claims = self._ledger.claim(self._account_id, self._source, self._run,
                                        [LedgerKey(m.folder, m.body.digest) for m in batch])  # fmt: skip
            if self._handover is None:
                self._ledger.confirm(self._account_id, self._source, self._store(batch, claims))
            else:
                new = [(m, c) for m, c in zip(batch, claims, strict=True) if c.is_new]
                self.outcome.skipped += len(batch) - len(new)
                if new:
                    self._handover.hand_over(new, self.outcome)
        finally:
            for message in batch:
                message.body.discard()
            self.progress(sum(m.units for m in batch))

    def _store(self, batch: list[MessageFound], claims: list[Claim]) -> list[Claim]:
        """Store the batch's new messages (store_deliveries); the claims of those stored."""
        now = int(time.time())
        new = [(message, claim) for message, claim in zip(batch, claims, strict=True) if claim.is_new]
        self.outcome.skipped += len(batch) - len(new)
        deliveries = [import_delivery(self._account_id, m.folder, m.flags, m.internal_date, m.sender, c.blob_id,
                                      m.body.data, now) for m, c in new]  # fmt: skip
        stored: list[Claim] = []
        for (message, claim), problem in zip(new, store_deliveries(self._mail, deliveries), strict=True):
            if problem is None:
                stored.append(claim)
                self.outcome.imported += 1
            else:
                self._failed(message, problem)
        return stored

    def _failed(self, message: MessageFound, exc: Exception) -> None:
        self.outcome.failed += 1
        self.outcome.note(f"{message.folder}: a message of {message.body.size} octets was not stored: {exc}")

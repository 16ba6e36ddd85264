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
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kartero.mail.envelope import EnvelopeRecord, Origin
from kartero.migrate.model import SEPARATOR, FolderFound, Item, MessageFound, Unreadable, check_folder_name
from kartero.store.interface import (
    INBOX,
    Claim,
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


class Importer:
    """Imports into one account. `progress` is called with the units (the source's) each batch covered."""

    def __init__(self, mail: MailStore, ledger: ImportLedger, account_id: int, source: str,
                 progress: Callable[[int], None] = lambda _: None) -> None:  # fmt: skip
        self._mail = mail
        self._ledger = ledger
        self._account_id = account_id
        self._source = source
        self.progress = progress
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
            raise
        self._flush()
        return self.outcome

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
            stored = self._store(batch, claims)
            self._ledger.confirm(self._account_id, self._source, stored)
        finally:
            for message in batch:
                message.body.discard()
            self.progress(sum(m.units for m in batch))

    def _store(self, batch: list[MessageFound], claims: list[Claim]) -> list[Claim]:
        """Store the batch's new messages as one delivery group, so that they get their UIDs in the
        source's order (deliveries handed over one by one are indexed in parallel and may land in any
        order); when the group fails, each is stored alone, and one that fails fails alone."""
        now = int(time.time())
        new: list[tuple[MessageFound, Claim, Delivery]] = []
        for message, claim in zip(batch, claims, strict=True):
            if not claim.is_new:
                self.outcome.skipped += 1
                continue
            new.append((message, claim, Delivery(
                blob_id=claim.blob_id,
                data=message.body.data,
                targets=(DeliveryTarget(self._account_id, message.folder, message.flags),),
                internal_date=message.internal_date,
                envelope=EnvelopeRecord(Origin.IMPORT, message.sender, received_at=now, user="kartero import"),
            )))  # fmt: skip
        if not new:
            return []
        try:
            self._mail.deliver_group([delivery for _, _, delivery in new]).result()
        except (StoreError, OSError):
            pass
        else:
            self.outcome.imported += len(new)
            return [claim for _, claim, _ in new]
        stored: list[Claim] = []
        for message, claim, delivery in new:
            try:
                self._mail.deliver(delivery).result()
            except (StoreError, OSError) as exc:
                self._failed(message, exc)
                continue
            stored.append(claim)
            self.outcome.imported += 1
        return stored

    def _failed(self, message: MessageFound, exc: Exception) -> None:
        self.outcome.failed += 1
        self.outcome.note(f"{message.folder}: a message of {message.body.size} octets was not stored: {exc}")

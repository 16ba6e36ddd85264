"""The import drop: how `kartero import` stores mail while a server runs on the embedded store.

Only the server's committer appends to the segment files, so the command does not store: after the
ledger claimed a batch (importer.py), it writes the batch's new messages as one file into
`<data_dir>/importdrop/` (temporary name, fsync, rename, folder fsync), nudges the server (SIGUSR1) and
goes on reading; it waits for a file to be taken in before it writes more than AHEAD of them, so memory
and disk stay bounded by a few batches whatever the mailbox's size. The server takes the folder in at
start, every second and on SIGUSR1 (`ImportPickup`), stores each batch with the same calls an import
without a server uses (importer.store_deliveries over import_delivery, one delivery group), marks the
ledger rows done and removes the file.

Nothing is lost or stored twice across crashes: a file is removed only after its messages are stored,
and before storing the server skips every message whose ledger row is done or whose blob id (named by
the claim, so the same in every copy of the batch) is stored already, so a file taken in again after a
crash, or the same batch written again by a rerun, stores nothing twice. The command counts a message as
imported once its row is settled (ledger `settled`), so it reports what the server did. A file that
cannot be read, or whose messages all failed to be stored MAX_ATTEMPTS times, goes to
`importdrop/corrupt/`, never crashing the server.

File format: the line `KARTERO-IMPORTDROP 1`, one JSON line (the account, the source, and per message
its folder, SHA-256, occurrence and blob id as the ledger names them, flags, internal date, envelope
sender and size), then the messages' bytes one after the other. The reader checks every field against
the limits an import has (model.py), the sizes against the file's length and each message's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kartero.log import kv
from kartero.migrate.buffer import MEMORY_LIMIT
from kartero.migrate.importer import BATCH, Outcome, import_delivery, store_deliveries
from kartero.migrate.model import (
    MAX_KEYWORDS,
    SYSTEM_FLAGS,
    MessageFound,
    canonical_folder,
    check_folder_name,
    clean_flags,
)
from kartero.store.ids import new_message_id
from kartero.store.interface import Claim, Content, FileSpan, ImportLedger, LedgerKey, MailStore

log = logging.getLogger("kartero.importdrop")

MAGIC = b"KARTERO-IMPORTDROP 1\n"
SUFFIX = ".batch"
# The JSON line: 100 messages of a 1,000-octet folder name, 69 flags of 100 octets and a 1 KiB sender
# fit in well under this; a longer line is no file the command wrote.
MAX_META = 4 * 1024 * 1024
MAX_MESSAGES = BATCH
MAX_SOURCE = 4096  # characters of the source's identity (a path or a URL)
MAX_SENDER = 1024
MAX_DATE = 1 << 40  # internal dates in unix seconds (year 36812)
MAX_SIZE = 1 << 53
AHEAD = 2  # batch files written and not yet taken in, at most
WAIT_S = 120.0  # the server takes no file in this long: the command stops with an error
STORE_WAIT_S = 120.0  # the server's wait for one commit of a batch (else its messages count as failed this pass)
POLL_S = 0.02
ALIVE_CHECK_S = 1.0  # how often the waiting command looks whether the server still runs
MAX_ATTEMPTS = 5  # passes (~1 s apart) in which every message of a file failed, before it is set aside
STALE_TMP_S = 3600.0  # a temporary file this old was left by a command that died while writing it
_HEX = frozenset("0123456789abcdef")
_CHUNK = 1 << 20


class DropError(Exception):
    """A drop file that is no batch of `kartero import`, or the server not taking batches in."""


@dataclass(frozen=True, slots=True)
class DropMessage:
    folder: str
    digest: str  # SHA-256 of the bytes, hex: the ledger's key with folder and occurrence
    occurrence: int
    blob_id: str  # the id the ledger's claim stores it under
    flags: frozenset[str]
    internal_date: int
    sender: str
    size: int

    @property
    def claim(self) -> Claim:
        return Claim(LedgerKey(self.folder, self.digest), self.occurrence, self.blob_id, True)


@dataclass(frozen=True, slots=True)
class DropBatch:
    account_id: int
    source: str
    messages: tuple[DropMessage, ...]


@dataclass(frozen=True, slots=True)
class ReadBatch:
    """A batch read from its file: the messages' bytes in memory (the first MEMORY_LIMIT octets of them
    together) or as spans of the file, which must stay until they are stored."""

    batch: DropBatch
    data: tuple[bytes | Content, ...]


def drop_dir(data_dir: Path) -> Path:
    return data_dir / "importdrop"


def encode_meta(batch: DropBatch) -> bytes:
    meta = {
        "account": batch.account_id,
        "source": batch.source,
        "messages": [
            {"folder": m.folder, "digest": m.digest, "occurrence": m.occurrence, "blob": m.blob_id,
             "flags": sorted(m.flags), "date": m.internal_date, "sender": m.sender, "size": m.size}
            for m in batch.messages
        ],
    }  # fmt: skip
    line = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode()
    if len(line) > MAX_META:
        raise DropError(f"a batch description of {len(line)} octets")
    return line


def write_batch(folder: Path, batch: DropBatch, bodies: list[bytes | Content]) -> Path:
    """Write one batch durably (the messages' bytes in the order of `batch.messages`); returns its file.
    Time-ordered names: the server takes files in the order they were written (UIDs in the source's order)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f"{new_message_id()}{secrets.token_hex(2)}"
    tmp = folder / f".{name}.tmp"
    final = folder / f"{name}{SUFFIX}"
    try:
        with open(tmp, "xb", buffering=0) as f:  # unbuffered: every write goes to the descriptor, in order
            _write_all(f.fileno(), MAGIC + encode_meta(batch) + b"\n")
            for body in bodies:
                _write_body(f.fileno(), body)
            os.fsync(f.fileno())
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return final


def _write_body(fd: int, body: bytes | Content) -> None:
    parts = [body] if isinstance(body, bytes) else [body.head, body.tail]
    for part in parts:
        if isinstance(part, bytes):
            _write_all(fd, part)
            continue
        with open(part.path, "rb") as src:
            src.seek(part.offset)
            left = part.length
            while left:
                chunk = src.read(min(left, _CHUNK))
                if not chunk:
                    raise OSError(f"{part.path} ends before its message")
                _write_all(fd, chunk)
                left -= len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def decode_meta(line: bytes) -> DropBatch:
    """The JSON line, every field checked; raises DropError."""
    try:
        meta = json.loads(line)
    except (ValueError, RecursionError) as exc:  # RecursionError: `[[[[...` nested past the interpreter's limit
        raise DropError(f"bad description line: {str(exc)[:100]}") from None
    if not isinstance(meta, dict) or set(meta) != {"account", "source", "messages"}:
        raise DropError("the description is not {account, source, messages}")
    account, source, messages = meta["account"], meta["source"], meta["messages"]
    if not _is_int(account, 1, 1 << 62):
        raise DropError("bad account")
    if not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE:
        raise DropError("bad source")
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_MESSAGES:
        raise DropError(f"not 1 to {MAX_MESSAGES} messages")
    return DropBatch(account, source, tuple(_message(m, n) for n, m in enumerate(messages)))


_FIELDS = {"folder", "digest", "occurrence", "blob", "flags", "date", "sender", "size"}


def _message(m: Any, n: int) -> DropMessage:
    if not isinstance(m, dict) or set(m) != _FIELDS:
        raise DropError(f"message {n}: not the fields {sorted(_FIELDS)}")
    folder, flags = m["folder"], m["flags"]
    if not isinstance(folder, str) or check_folder_name(folder) is not None or canonical_folder(folder) != folder:
        raise DropError(f"message {n}: bad folder")
    if not _is_hex(m["digest"], 64) or not _is_hex(m["blob"], 24):
        raise DropError(f"message {n}: bad digest or blob id")
    if not isinstance(flags, list) or len(flags) > MAX_KEYWORDS + len(SYSTEM_FLAGS):
        raise DropError(f"message {n}: bad flags")
    if not all(isinstance(f, str) for f in flags):
        raise DropError(f"message {n}: bad flags")
    kept, dropped = clean_flags(flags)
    if dropped or len(kept) != len(flags):
        raise DropError(f"message {n}: bad flags")
    sender = m["sender"]
    if not isinstance(sender, str) or len(sender) > MAX_SENDER or not sender.isprintable():
        raise DropError(f"message {n}: bad sender")
    numbers = (_is_int(m["occurrence"], 1, 1 << 62), _is_int(m["date"], 0, MAX_DATE), _is_int(m["size"], 0, MAX_SIZE))
    if not all(numbers):
        raise DropError(f"message {n}: bad occurrence, date or size")
    return DropMessage(folder, m["digest"], m["occurrence"], m["blob"], kept, m["date"], sender, m["size"])


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX


def read_batch(path: Path) -> ReadBatch:
    """Read and check a drop file: its description, its length against the sizes, each message's SHA-256.
    Reads at most MAX_META octets of description and _CHUNK of a message at a time; keeps MEMORY_LIMIT
    octets of messages in memory, the rest as spans of the file. Raises DropError or OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)  # no link, no FIFO's wait
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DropError("not a regular file")
        if f.read(len(MAGIC)) != MAGIC:
            raise DropError("not an import drop file")
        line = f.readline(MAX_META + 1)
        if not line.endswith(b"\n"):
            raise DropError("no description line (or a longer one than a batch has)")
        batch = decode_meta(line[:-1])
        offset = len(MAGIC) + len(line)
        length = os.fstat(f.fileno()).st_size
        if offset + sum(m.size for m in batch.messages) != length:
            raise DropError(f"the sizes add up to {sum(m.size for m in batch.messages)}, the file has "
                            f"{length - offset} octets of messages")  # fmt: skip
        kept = 0
        data: list[bytes | Content] = []
        for n, message in enumerate(batch.messages):
            digest = hashlib.sha256()
            pieces: list[bytes] = []
            keep = kept + message.size <= MEMORY_LIMIT
            left = message.size
            while left:
                chunk = f.read(min(left, _CHUNK))
                if not chunk:
                    raise DropError(f"message {n}: the file ends early")
                digest.update(chunk)
                if keep:
                    pieces.append(chunk)
                left -= len(chunk)
            if digest.hexdigest() != message.digest:
                raise DropError(f"message {n}: its bytes are not the ones named")
            if keep:
                kept += message.size
                data.append(b"".join(pieces))
            else:
                data.append(Content(b"", FileSpan(path, offset, message.size)))
            offset += message.size
    return ReadBatch(batch, tuple(data))


class DropWriter:
    """The command's side (a Handover for the Importer): batches into the drop, at most AHEAD waiting.
    `nudge` tells the server to look; `is_alive` says whether it still runs."""

    def __init__(self, data_dir: Path, account_id: int, source: str, ledger: ImportLedger,
                 nudge: Callable[[], object], is_alive: Callable[[], bool]) -> None:  # fmt: skip
        self.folder = drop_dir(data_dir)
        self._account_id = account_id
        self._source = source
        self._ledger = ledger
        self._nudge = nudge
        self._is_alive = is_alive
        self._waiting: deque[tuple[Path, list[tuple[str, Claim]]]] = deque()  # (file, [(folder, claim)])

    def hand_over(self, new: list[tuple[MessageFound, Claim]], outcome: Outcome) -> None:
        try:
            while len(self._waiting) >= AHEAD:
                self._settle(self._waiting[0], outcome)
                self._waiting.popleft()
        except DropError:
            outcome.failed += len(new)  # claimed, never written: the rerun stores them
            raise
        messages = tuple(DropMessage(m.folder, c.key.digest, c.occurrence, c.blob_id, m.flags, m.internal_date,
                                     m.sender, m.body.size) for m, c in new)  # fmt: skip
        batch = DropBatch(self._account_id, self._source, messages)
        path = write_batch(self.folder, batch, [m.body.data for m, _ in new])
        self._waiting.append((path, [(m.folder, c) for m, c in new]))
        self._nudge()

    def drain(self, outcome: Outcome) -> None:
        while self._waiting:
            self._settle(self._waiting[0], outcome)
            self._waiting.popleft()

    def _settle(self, waiting: tuple[Path, list[tuple[str, Claim]]], outcome: Outcome) -> None:
        """Wait until the server took the file in, then count what it stored."""
        path, claims = waiting
        deadline = time.monotonic() + WAIT_S
        next_check = time.monotonic() + ALIVE_CHECK_S
        while path.exists():
            now = time.monotonic()
            stopped = False
            if now >= next_check:
                next_check = now + ALIVE_CHECK_S
                stopped = not self._is_alive()
            if stopped or now > deadline:
                self._give_up(outcome, "stopped" if stopped else f"took no batch in for {WAIT_S:.0f} s")
            time.sleep(POLL_S)
        stored = self._ledger.settled(self._account_id, self._source, [c for _, c in claims])
        for (folder, _), is_stored in zip(claims, stored, strict=True):
            if is_stored:
                outcome.imported += 1
            else:
                outcome.failed += 1
                outcome.note(f"{folder}: a message was not stored by the server (its log says why: "
                             "event=importdrop.failed or importdrop.corrupt)")  # fmt: skip

    def _give_up(self, outcome: Outcome, state: str) -> None:
        lost = sum(len(claims) for _, claims in self._waiting)
        outcome.failed += lost
        self._waiting.clear()
        raise DropError(f"the server {state}: {lost} messages wait in {self.folder} (the server stores them when "
                        "it runs; run the import again then to see that all is there)")  # fmt: skip


class ImportPickup:
    """The server's side: stores the batches waiting in the drop. `run_once` blocks (file reads, store
    commits): the server runs it in its worker pool; two calls never overlap."""

    def __init__(self, data_dir: Path, mail: MailStore, ledger: ImportLedger) -> None:
        self.folder = drop_dir(data_dir)
        self._mail = mail
        self._ledger = ledger
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}  # file name -> passes in which its every message failed

    def run_once(self) -> int:
        """Store every waiting batch; returns how many messages were stored."""
        if not self._lock.acquire(blocking=False):
            return 0  # an earlier pass still runs (past its deadline)
        try:
            stored = 0
            for path in self._waiting():
                stored += self._take(path)
            return stored
        finally:
            self._lock.release()

    def _waiting(self) -> list[Path]:
        try:
            entries = sorted(self.folder.iterdir())
        except FileNotFoundError:
            return []
        for p in entries:  # left by a command killed while writing
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                try:
                    if time.time() - p.stat().st_mtime > STALE_TMP_S:
                        p.unlink()
                except OSError:
                    pass
        return [p for p in entries if p.name.endswith(SUFFIX) and not p.name.startswith(".")]

    def _take(self, path: Path) -> int:
        try:
            read = read_batch(path)
        except (OSError, DropError) as exc:
            self._set_aside(path, str(exc))
            return 0
        batch = read.batch
        try:
            stored, failed = self._store(read)
        except Exception as exc:
            stored, failed = 0, [str(exc)]
            log.exception("%s", kv(event="importdrop.store_error", file=path.name))
        if failed and not stored:
            attempts = self._failures.get(path.name, 0) + 1
            if attempts < MAX_ATTEMPTS:
                self._failures[path.name] = attempts  # left in place: tried again at the next pass
                return 0
            self._set_aside(path, f"not stored {attempts} times: {failed[0]}")
            self._failures.pop(path.name, None)
            return 0
        self._failures.pop(path.name, None)
        path.unlink()
        _fsync_dir(self.folder)
        log.info("%s", kv(event="importdrop.stored", file=path.name, account=batch.account_id,
                          source=batch.source[:200], stored=stored, failed=len(failed),
                          present=len(batch.messages) - stored - len(failed)))  # fmt: skip
        return stored

    def _store(self, read: ReadBatch) -> tuple[int, list[str]]:
        """Store the messages not stored yet; (how many were stored, why others failed)."""
        batch = read.batch
        claims = [m.claim for m in batch.messages]
        present = self._ledger.settled(batch.account_id, batch.source, claims)
        now = int(time.time())
        todo = [(m, c, d) for m, c, d, p in zip(batch.messages, claims, read.data, present, strict=True) if not p]
        deliveries = [import_delivery(batch.account_id, m.folder, m.flags, m.internal_date, m.sender, c.blob_id,
                                      d, now) for m, c, d in todo]  # fmt: skip
        done = [c for c, p in zip(claims, present, strict=True) if p]
        failed: list[str] = []
        for (m, c, _), problem in zip(todo, store_deliveries(self._mail, deliveries, STORE_WAIT_S),
                                    strict=True):  # fmt: skip
            if problem is None:
                done.append(c)
            else:
                failed.append(str(problem))
                log.warning("%s", kv(event="importdrop.failed", account=batch.account_id, folder=m.folder,
                                     size=m.size, detail=str(problem)))  # fmt: skip
        self._ledger.confirm(batch.account_id, batch.source, done)
        return len(todo) - len(failed), failed

    def _set_aside(self, path: Path, reason: str) -> None:
        corrupt = self.folder / "corrupt"
        try:
            corrupt.mkdir(mode=0o700, exist_ok=True)
            os.replace(path, corrupt / path.name)
        except OSError as exc:  # left in place: logged again at the next pass
            reason = f"{reason}; could not be moved aside: {exc}"
        log.error("%s", kv(event="importdrop.corrupt", file=path.name, moved_to=str(corrupt), detail=reason[:300]))

"""The maildrop: how `kartero sendmail` hands a message to the running server.

Only the server's committer writes the message store, so the command does not: it writes one file into
`<data_dir>/maildrop/` (written to a temporary name, fsynced, renamed, folder fsynced: once the command
exits 0 the message is durable) and the server picks the folder up at start and every second. A file is
removed only after its message is stored, so a crash between the two delivers it twice at worst, never
zero times. A file that cannot be read, or whose message failed to be stored MAX_ATTEMPTS times in a
row, is moved to `maildrop/corrupt/` and logged, never dropped (and never retried forever).

File format: the line `KARTERO-MAILDROP 1`, one JSON line (sender, recipients, who, when, DSN options),
then the message bytes.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

from kartero.auth.accounts import DirectoryError, parse_address
from kartero.delivery.local import DsnSender
from kartero.delivery.sendmail import normalize
from kartero.dns.names import DomainError
from kartero.intake import Incoming, Intake, LocalArrival, Refused, Target
from kartero.log import kv
from kartero.mail import replies
from kartero.mail.address import AddressError
from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.mime.headers import find_body_start
from kartero.queue.dsn import Action, RecipientReport, build_dsn
from kartero.store.ids import new_message_id

log = logging.getLogger("kartero.maildrop")

MAGIC = b"KARTERO-MAILDROP 1\n"
SUFFIX = ".msg"
# Store attempts for one file before it is set aside in maildrop/corrupt/ (one attempt per pass, ~1 s).
MAX_ATTEMPTS = 5
IO_DEADLINE_S = 60.0  # one file operation (list, read, unlink, fsync) in the worker pool
T = TypeVar("T")
P = ParamSpec("P")


class MaildropError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Dropped:
    sender: str  # "" for the null sender
    recipients: tuple[str, ...]
    data: bytes  # CRLF line endings
    user: str  # the local login that ran sendmail, for the Received: field
    submitted_at: float
    notify: tuple[str, ...] = ()
    ret: str | None = None
    envid: str | None = None


def to_crlf(data: bytes) -> bytes:
    """Unix text (LF) or mixed line endings to the CRLF mail is made of."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def maildrop_dir(data_dir: Path) -> Path:
    return data_dir / "maildrop"


def write(data_dir: Path, dropped: Dropped) -> Path:
    """Put a message into the maildrop durably; returns its file."""
    folder = maildrop_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "sender": dropped.sender,
        "recipients": list(dropped.recipients),
        "user": dropped.user,
        "time": dropped.submitted_at,
        "notify": list(dropped.notify),
        "ret": dropped.ret,
        "envid": dropped.envid,
    }
    name = f"{new_message_id()}{secrets.token_hex(2)}"
    tmp = folder / f".{name}.tmp"
    final = folder / f"{name}{SUFFIX}"
    with open(tmp, "xb") as f:
        f.write(MAGIC + json.dumps(meta).encode() + b"\n" + dropped.data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, final)
    _fsync_dir(folder)
    return final


def read(path: Path) -> Dropped:
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise MaildropError("not a maildrop file")
    meta_line, sep, data = raw[len(MAGIC) :].partition(b"\n")
    if not sep:
        raise MaildropError("no envelope line")
    try:
        meta = json.loads(meta_line)
        dropped = Dropped(
            sender=str(meta["sender"]),
            recipients=tuple(str(r) for r in meta["recipients"]),
            data=data,
            user=str(meta.get("user", "")),
            submitted_at=float(meta.get("time", time.time())),
            notify=tuple(str(n) for n in meta.get("notify", ())),
            ret=meta.get("ret"),
            envid=meta.get("envid"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise MaildropError(f"bad envelope line: {exc}") from None
    if not dropped.recipients:
        raise MaildropError("no recipients")
    return dropped


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Pickup:
    """Moves maildrop files into the system through intake (local mailboxes and the outbound queue).
    Runs on the event loop; its file work goes to the worker pool."""

    def __init__(self, data_dir: Path, intake: Intake, bouncer: DsnSender, hostname: str) -> None:
        self.folder = maildrop_dir(data_dir)
        self.intake = intake
        self.bouncer = bouncer
        self.hostname = hostname
        self._failures: dict[str, int] = {}  # file name -> store attempts that failed in a row

    async def _io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.intake.blocking(IO_DEADLINE_S, fn, *args, **kwargs)

    async def run_once(self) -> int:
        """Store every waiting file; returns how many were stored."""
        names = await self._io(self._waiting)
        stored = 0
        for path in names:
            try:
                dropped = await self._io(read, path)
            except (OSError, MaildropError) as exc:
                await self._io(self._quarantine, path, str(exc))
                continue
            try:
                await self._store(path.name.removesuffix(SUFFIX), dropped)
            except Exception as exc:
                failures = self._failures.get(path.name, 0) + 1
                log.exception("%s", kv(event="maildrop.store_failed", file=path.name, attempt=failures))
                if failures >= MAX_ATTEMPTS:
                    self._failures.pop(path.name, None)
                    await self._io(self._quarantine, path, f"store failed {failures} times: {exc}")
                else:
                    self._failures[path.name] = failures  # left in place: tried again at the next pass
                continue
            self._failures.pop(path.name, None)
            await self._io(path.unlink)
            stored += 1
        if stored:
            await self._io(_fsync_dir, self.folder)
        return stored

    def _waiting(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if p.name.endswith(SUFFIX))
        except FileNotFoundError:
            return []

    def _quarantine(self, path: Path, reason: str) -> None:
        corrupt = self.folder / "corrupt"
        corrupt.mkdir(exist_ok=True)
        os.replace(path, corrupt / path.name)
        log.error("%s", kv(event="maildrop.corrupt", file=path.name, moved_to=str(corrupt), detail=reason))

    async def _store(self, name: str, dropped: Dropped) -> None:
        targets: list[Target] = []
        unknown: list[str] = []
        for recipient in dropped.recipients:
            try:
                address = normalize(recipient)
                if address.rpartition("@")[2] in self.intake.directory.domains:
                    address = parse_address(address)
            except (AddressError, DomainError, DirectoryError):
                unknown.append(recipient)
                continue
            target = await self.intake.resolve(address)
            if target is None:
                unknown.append(recipient)
            elif target.is_remote:  # the address, or the original sender behind an SRS address of ours
                targets.append(Target(EnvelopeRecipient(target.recipient.address, dropped.notify), is_remote=True))
            else:
                targets.append(target)
        data = dropped.data
        header = data[: find_body_start(data)[0]]
        # SMTPUTF8 is for the next hop of the queued copy: a local recipient's address does not need it.
        envelope_text = dropped.sender + "".join(t.recipient.address for t in targets if t.is_remote)
        envelope = EnvelopeRecord(
            Origin.SENDMAIL, dropped.sender, tuple(t.recipient for t in targets), user=dropped.user,
            ret=dropped.ret, envid=dropped.envid, smtputf8=not envelope_text.isascii() or not header.isascii(),
        )  # fmt: skip
        message_id = None
        if targets:  # none when every recipient is unknown: then only the bounce below goes out
            outcome = await self.intake.accept(Incoming(envelope, data, tuple(targets), LocalArrival(dropped.user),
                                                        complete_header=True, sign=True,
                                                        body_8bit=not data.isascii()))  # fmt: skip
            if isinstance(outcome, Refused):
                raise MaildropError(f"not stored: {outcome.reason}")
            message_id = outcome.message_id
        remote = sum(t.is_remote for t in targets)
        log.info("%s", kv(event="maildrop.stored", file=name, id=message_id, user=dropped.user,
                          mail_from=f"<{dropped.sender}>", rcpt=",".join(dropped.recipients), size=len(data),
                          local=len(targets) - remote, remote=remote))  # fmt: skip
        if unknown:
            log.warning("%s", kv(event="maildrop.unknown_recipients", file=name, rcpt=",".join(unknown)))
            if dropped.sender and "NEVER" not in dropped.notify:
                await self._bounce(message_id or new_message_id(), dropped, unknown)

    async def _bounce(self, message_id: str, dropped: Dropped, unknown: list[str]) -> None:
        now = datetime.now(UTC)
        reports = [
            RecipientReport(r, Action.FAILED, replies.NO_SUCH_USER.enhanced or "5.1.1", replies.NO_SUCH_USER.to_line(),
                            None, None, now, None)
            for r in unknown
        ]
        data = dropped.data
        dsn = build_dsn(hostname=self.hostname, sender=dropped.sender, queue_id=message_id,
                        arrival=datetime.fromtimestamp(dropped.submitted_at, UTC), reports=reports, original=data,
                        ret=dropped.ret, envid=dropped.envid, smtputf8=not data.isascii(), now=now)  # fmt: skip
        await self.bouncer.deliver(dropped.sender, dsn, smtputf8=not dropped.sender.isascii())

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
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses
from pathlib import Path

from kartero.auth.accounts import Directory, DirectoryCache, DirectoryError, parse_address
from kartero.delivery.local import DsnSender
from kartero.delivery.sendmail import normalize
from kartero.dns.names import DomainError
from kartero.log import kv
from kartero.mail.address import AddressError
from kartero.mailauth.dkim import DKIMError, Signer
from kartero.mime.headers import find_body_start, parse_header_block
from kartero.queue.dsn import Action, RecipientReport, build_dsn
from kartero.smtp.received import format_return_path
from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, Outbound, OutboundRecipient, Store, as_targets

log = logging.getLogger("kartero.maildrop")

MAGIC = b"KARTERO-MAILDROP 1\n"
SUFFIX = ".msg"
# Store attempts for one file before it is set aside in maildrop/corrupt/ (one attempt per pass, ~1 s).
MAX_ATTEMPTS = 5


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
    """Moves maildrop files into the store (local mailboxes and the outbound queue). Blocking: run it in
    a worker thread."""

    def __init__(self, data_dir: Path, store: Store, directory: DirectoryCache, bouncer: DsnSender, hostname: str,
                 queue_lifetime_s: float, signer: Signer | None = None) -> None:  # fmt: skip
        self.signer = signer
        self.folder = maildrop_dir(data_dir)
        self.store = store
        self.directory = directory
        self.bouncer = bouncer
        self.hostname = hostname
        self.queue_lifetime_s = queue_lifetime_s
        self._failures: dict[str, int] = {}  # file name -> store attempts that failed in a row

    def run_once(self) -> int:
        """Store every waiting file; returns how many were stored."""
        try:
            names = sorted(p for p in self.folder.iterdir() if p.name.endswith(SUFFIX))
        except FileNotFoundError:
            return 0
        stored = 0
        for path in names:
            try:
                dropped = read(path)
            except (OSError, MaildropError) as exc:
                self._quarantine(path, str(exc))
                continue
            try:
                self._store(path.name.removesuffix(SUFFIX), dropped)
            except Exception as exc:
                failures = self._failures.get(path.name, 0) + 1
                log.exception("%s", kv(event="maildrop.store_failed", file=path.name, attempt=failures))
                if failures >= MAX_ATTEMPTS:
                    self._failures.pop(path.name, None)
                    self._quarantine(path, f"store failed {failures} times: {exc}")
                else:
                    self._failures[path.name] = failures  # left in place: tried again at the next pass
                continue
            self._failures.pop(path.name, None)
            path.unlink()
            stored += 1
        if stored:
            _fsync_dir(self.folder)
        return stored

    def _quarantine(self, path: Path, reason: str) -> None:
        corrupt = self.folder / "corrupt"
        corrupt.mkdir(exist_ok=True)
        os.replace(path, corrupt / path.name)
        log.error("%s", kv(event="maildrop.corrupt", file=path.name, moved_to=str(corrupt), detail=reason))

    def _store(self, name: str, dropped: Dropped) -> None:
        now = datetime.now(UTC)
        message_id = new_message_id()
        data = self._sign(self._complete_header(dropped, now))
        received = (
            f"Received: by {self.hostname} (Kartero sendmail, from userid {dropped.user or 'unknown'})\r\n"
            f"\tid {message_id}; {format_datetime(now)}\r\n"
        ).encode()
        # Read afresh (this is a worker thread, and sendmail is rare): the server's cached snapshot may be a
        # moment older than the account `kartero sendmail` just checked.
        snapshot = Directory(self.store.accounts, tuple(self.directory.domains)).snapshot()
        local: list[int] = []
        remote: list[OutboundRecipient] = []
        unknown: list[str] = []
        for recipient in dropped.recipients:
            try:
                address = normalize(recipient)
            except (AddressError, DomainError):
                unknown.append(recipient)
                continue
            if address.rpartition("@")[2] in self.directory.domains:
                try:
                    found = snapshot.resolve(parse_address(address)).account_ids
                except DirectoryError:
                    found = ()
                if found:
                    local.extend(found)
                else:
                    unknown.append(recipient)
            else:
                remote.append(OutboundRecipient(address, dropped.notify))
        timestamp = int(now.timestamp())
        record = {"mail_from": dropped.sender, "rcpt_to": list(dropped.recipients), "sendmail_user": dropped.user}
        deliveries: list[Delivery] = []
        if local:
            deliveries.append(Delivery(message_id, format_return_path(dropped.sender) + received + data,
                                       as_targets(local), timestamp, record))  # fmt: skip
        if remote:
            envelope_text = dropped.sender + "".join(r.address for r in remote)
            outbound = Outbound(
                sender=dropped.sender,
                recipients=tuple(remote),
                expires_at=timestamp + int(self.queue_lifetime_s),
                ret=dropped.ret,
                envid=dropped.envid,
                smtputf8=not envelope_text.isascii() or not data[: find_body_start(data)[0]].isascii(),
                body_8bit=not data.isascii(),
            )
            queue_id = new_message_id() if local else message_id
            deliveries.append(Delivery(queue_id, received + data, (), timestamp, record, outbound))
        if deliveries:  # none when every recipient is unknown: then only the bounce below goes out
            self.store.mail.deliver_group(deliveries).result()  # local and queued copies: both or neither
        log.info("%s", kv(event="maildrop.stored", file=name, id=message_id, user=dropped.user,
                          mail_from=f"<{dropped.sender}>", rcpt=",".join(dropped.recipients), size=len(data),
                          local=len(local), remote=len(remote)))  # fmt: skip
        if unknown:
            log.warning("%s", kv(event="maildrop.unknown_recipients", file=name, rcpt=",".join(unknown)))
            if dropped.sender and "NEVER" not in dropped.notify:
                self._bounce(message_id, dropped, data, unknown, now)

    def _bounce(self, message_id: str, dropped: Dropped, data: bytes, unknown: list[str], now: datetime) -> None:
        reports = [
            RecipientReport(r, Action.FAILED, "5.1.1", "550 5.1.1 No such user here", None, None, now, None)
            for r in unknown
        ]
        dsn = build_dsn(hostname=self.hostname, sender=dropped.sender, queue_id=message_id,
                        arrival=datetime.fromtimestamp(dropped.submitted_at, UTC), reports=reports, original=data,
                        ret=dropped.ret, envid=dropped.envid, smtputf8=not data.isascii(), now=now)  # fmt: skip
        self.bouncer.send(dropped.sender, dsn, smtputf8=not dropped.sender.isascii())

    def _sign(self, data: bytes) -> bytes:
        """DKIM-sign when the From: domain is local and has a key (as submission does)."""
        if self.signer is None:
            return data
        header = parse_header_block(data[: find_body_start(data)[0]])
        addresses = getaddresses([v.decode("utf-8", "replace") for v in header.get_all("from")])
        domain = addresses[0][1].rpartition("@")[2].lower() if addresses else ""
        if domain not in self.directory.domains:
            return data
        try:
            return self.signer.sign(domain, data) + data
        except DKIMError as exc:
            log.error("%s", kv(event="dkim.sign_failed", domain=domain, detail=str(exc)))
            return data

    def _complete_header(self, dropped: Dropped, now: datetime) -> bytes:
        """Add From:, Date: and Message-ID: when missing (what a mail user agent would have written)."""
        data = dropped.data
        header_end, _ = find_body_start(data)
        header = parse_header_block(data[:header_end])
        added = b""
        if header.get("from") is None:
            added += f"From: <{dropped.sender}>\r\n".encode() if dropped.sender else b"From: MAILER-DAEMON\r\n"
        if header.get("date") is None:
            added += f"Date: {format_datetime(now)}\r\n".encode()
        if header.get("message-id") is None:
            added += f"Message-ID: <{secrets.token_hex(12)}@{self.hostname}>\r\n".encode()
        return added + data

"""Run the active Sieve script of each recipient account and turn its outcome into a delivery plan.

The event loop asks `scripted()` which accounts of a message have an active script: an answer from
memory, refreshed (in a worker thread) when the store's directory version moved, which every script
change raises. Only for those accounts does `plan()` run, in a worker thread: it reads the scripts,
compiles them (cached by text), runs them with the store behind the Context's callbacks and checks what
they asked for against the store (mailboxes, flags). A script that fails at run time, or asks for
something impossible, costs its user the rule, never the message: the copy goes to INBOX (RFC 5228
§2.10.6) and the reason is logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parseaddr

from kartero import sieve
from kartero.log import kv
from kartero.mime.headers import HeaderBlock, parse_header_block
from kartero.rules.vacation import Reply, build_reply, skip_reason
from kartero.store.interface import INBOX, MailboxExists, MailStore, SieveStore

log = logging.getLogger("kartero.rules")

SEPARATOR = "/"
MAX_MAILBOX_NAME = 1000  # octets, as IMAP's CREATE (kartero.imap.syntax)
MAX_MAILBOX_LEVELS = 100
MAX_FLAGS = 64  # flags one stored copy may get from imap4flags
MAX_KEYWORD = 100  # octets of one keyword
SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
# RFC 9051 atom-specials and list/resp-specials: a keyword is an atom without these.
_NOT_IN_ATOM = frozenset('(){ %*"\\]')
VACATION_KEY = "vacation:"
DUPLICATE_KEY = "duplicate:"
COMPILED_CACHE = 1024  # compiled scripts kept (by text) ...
COMPILED_CACHE_TEXT = 16 * 1024 * 1024  # ... and at most this much script text behind them (a compiled
# script takes several times its text in memory)
MAX_CREATED = 10  # mailboxes `fileinto :create` may make for one message (a name may come from the message)


@dataclass(frozen=True, slots=True)
class Recipient:
    """One account a message is delivered to, and how it got there."""

    account_id: int
    address: str  # the account's own address
    envelope_to: str  # the RCPT address it came through (before aliases)
    original: str  # the ORCPT address when given, else envelope_to


@dataclass(frozen=True, slots=True)
class Message:
    """The message as the scripts see it (without Kartero's own trace fields)."""

    header: bytes  # the header block with its empty line
    body: bytes  # at most Limits.max_body octets of the body
    sender: str
    auth: str | None = None
    client_ip: str | None = None
    client_host: str | None = None
    size: int | None = None  # the whole message's size in octets (the `size` test: the body may be cut)


@dataclass(frozen=True, slots=True)
class Copy:
    mailbox: str
    flags: frozenset[str] = frozenset()
    header: bytes | None = None  # the edited header block; None: as received
    keep: bool = False  # a keep (RFC 5228 §4.3): stored where the message would have gone without a script


@dataclass(frozen=True, slots=True)
class Forward:
    address: str
    header: bytes | None = None


@dataclass(frozen=True, slots=True)
class VacationReply:
    key: str  # what `remember_vacation` records
    expires_at: int
    reply: Reply


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with the message for one account."""

    recipient: Recipient
    copies: tuple[Copy, ...]
    forwards: tuple[Forward, ...] = ()
    reject: sieve.Reject | None = None
    vacation: VacationReply | None = None
    duplicates: tuple[sieve.DuplicateMark, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)  # what went wrong, logged by plan()


class Rules:
    def __init__(self, scripts: SieveStore, mail: MailStore, directory_version: Callable[[], int], *, hostname: str,
                 limits: sieve.Limits | None = None, environment: Mapping[str, str] | None = None) -> None:  # fmt: skip
        """`directory_version`: the store's directory version, which every script change raises (read on
        the event loop: a few µs on SQLite, from the change feed on PostgreSQL)."""
        self.scripts = scripts
        self.mail = mail
        self.directory_version = directory_version
        self.hostname = hostname
        self.limits = limits or sieve.Limits()
        self.environment = dict(environment or {})
        self._version: int | None = None
        self._active: frozenset[int] = frozenset()
        self._compiled: dict[str, sieve.Script | sieve.SieveError] = {}
        self._compiled_text = 0
        self._lock = threading.Lock()
        self._addresses: tuple[Mapping[str, int] | None, dict[int, str]] = (None, {})

    # -- on the event loop ----------------------------------------------------------------------------

    def needs_refresh(self) -> bool:
        """Whether the accounts with scripts must be read again (the directory version moved)."""
        return self.directory_version() != self._version

    def refresh(self) -> None:
        """Read which accounts have an active script (blocking)."""
        version = self.directory_version()
        active = frozenset(self.scripts.active_accounts())
        self._active, self._version = active, version

    def scripted(self, account_ids: Sequence[int]) -> list[int]:
        """The accounts of these that have an active script (after `refresh` when `needs_refresh`)."""
        active = self._active
        return [a for a in dict.fromkeys(account_ids) if a in active] if active else []

    # -- in a worker thread ---------------------------------------------------------------------------

    def plan(self, message: Message, wanted: Sequence[tuple[int, str, str]], accounts: Mapping[str, int],
             now: datetime) -> list[Plan]:  # fmt: skip
        """Run the active script of each (account id, RCPT address, original address) in `wanted`
        (blocking). `accounts`: the directory's address -> id map, for each account's own address."""
        header = parse_header_block(message.header)
        plans = []
        for recipient in self._recipients(wanted, accounts):
            plan = self._plan_one(message, header, recipient, now)
            for note in plan.notes:
                log.warning("%s", kv(event="sieve.runtime_error", account=recipient.address, detail=note))
            plans.append(plan)
        return plans

    def _recipients(self, wanted: Sequence[tuple[int, str, str]], accounts: Mapping[str, int]) -> list[Recipient]:
        with self._lock:
            if self._addresses[0] is not accounts:  # a new directory snapshot: invert its map once
                self._addresses = (accounts, {i: a for a, i in accounts.items()})
            addresses = self._addresses[1]
        return [Recipient(i, addresses.get(i, rcpt), rcpt, original) for i, rcpt, original in wanted]

    def _plan_one(self, message: Message, header: HeaderBlock, recipient: Recipient, now: datetime) -> Plan:
        keep = (Copy(INBOX, keep=True),)
        active = self.scripts.active_script(recipient.account_id)
        if active is None:
            return Plan(recipient, keep)  # deactivated since `scripted`
        script = self._compile(active[1])
        if isinstance(script, sieve.SieveError):
            return Plan(recipient, keep, notes=(f"active script does not compile: {script}",))
        account_id = recipient.account_id
        stamp = int(now.timestamp())
        context = sieve.Context(
            header=message.header,
            body=message.body,
            envelope_from=message.sender,
            envelope_to=recipient.envelope_to,
            now=now if now.tzinfo is not None else now.replace(tzinfo=UTC),
            environment=self._environment(recipient, message),
            auth=message.auth,
            mailbox_exists=lambda name: self.mail.get_mailbox(account_id, name) is not None,
            duplicate_seen=lambda key: self.mail.sieve_recalls(account_id, DUPLICATE_KEY + key, stamp),
            load_script=lambda is_global, name: self.scripts.get_script(None if is_global else account_id, name),
            size=message.size,
        )
        try:
            outcome = sieve.run(script, context, self.limits)
        except Exception as exc:  # a bug in the interpreter costs the rule, never the message
            log.error("%s", kv(event="sieve.crashed", account=recipient.address, detail=repr(exc)), exc_info=exc)
            return Plan(recipient, keep, notes=(f"interpreter failed: {exc!r}",))
        notes: list[str] = [outcome.error] if outcome.error else []
        copies: list[Copy] = []
        forwards: list[Forward] = []
        reject: sieve.Reject | None = None
        vacation: VacationReply | None = None
        created: list[str] = []
        for action in outcome.actions:
            if isinstance(action, sieve.FileInto):
                copies.append(self._copy(account_id, action, notes, created))
            elif isinstance(action, sieve.Redirect):
                forwards.append(Forward(action.address, action.header))
            elif isinstance(action, sieve.Reject):
                reject = action
            elif isinstance(action, sieve.Vacation):
                vacation = self._vacation(message, header, recipient, action, now, notes)
        unique = tuple(dict.fromkeys(copies))
        return Plan(recipient, unique, tuple(forwards), reject, vacation, outcome.duplicates, tuple(notes))

    def _compile(self, text: str) -> sieve.Script | sieve.SieveError:
        key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            found = self._compiled.get(key)
        if found is None:
            try:
                found = sieve.compile_script(text)
            except sieve.SieveError as exc:
                found = exc
            with self._lock:
                if len(self._compiled) >= COMPILED_CACHE or self._compiled_text + len(text) > COMPILED_CACHE_TEXT:
                    self._compiled.clear()
                    self._compiled_text = 0
                self._compiled[key] = found
                self._compiled_text += len(text)
        return found

    def _environment(self, recipient: Recipient, message: Message) -> dict[str, str]:
        """RFC 5183 items (the interpreter adds name, phase and location)."""
        items = {"domain": recipient.address.rpartition("@")[2], "host": self.hostname, **self.environment}
        if message.client_ip:
            items["remote-ip"] = message.client_ip
        if message.client_host:
            items["remote-host"] = message.client_host
        return items

    def _copy(self, account_id: int, action: sieve.FileInto, notes: list[str], created: list[str]) -> Copy:
        """The stored copy a fileinto/keep asks for, as the store can take it (else a keep, noted)."""
        flags = _valid_flags(action.flags, notes)
        name = mailbox_name(action.mailbox)
        if name is None:
            notes.append(f"fileinto {action.mailbox[:200]!r}: not a valid mailbox name; kept in INBOX")
            return Copy(INBOX, flags, action.header, keep=True)
        if name == INBOX or self.mail.get_mailbox(account_id, name) is not None:
            return Copy(name, flags, action.header, keep=action.keep)
        if not action.create:
            notes.append(f"fileinto {name[:200]!r}: no such mailbox; kept in INBOX")
            return Copy(INBOX, flags, action.header, keep=True)
        parts = name.split(SEPARATOR)
        missing = [SEPARATOR.join(parts[:depth]) for depth in range(1, len(parts) + 1)]
        missing = [level for level in missing if level != INBOX and self.mail.get_mailbox(account_id, level) is None]
        if len(created) + len(missing) > MAX_CREATED:
            notes.append(f"fileinto :create {name[:200]!r}: more than {MAX_CREATED} new mailboxes for one message;"
                         " kept in INBOX")  # fmt: skip
            return Copy(INBOX, flags, action.header, keep=True)
        for level in missing:  # the superiors too, as IMAP CREATE makes them
            with contextlib.suppress(MailboxExists):  # made meanwhile by another delivery or session
                self.mail.create_mailbox(account_id, level)
            created.append(level)
        return Copy(name, flags, action.header)

    def _vacation(self, message: Message, header: HeaderBlock, recipient: Recipient, action: sieve.Vacation,
                  now: datetime, notes: list[str]) -> VacationReply | None:  # fmt: skip
        own = frozenset(
            a.lower() for a in (recipient.address, recipient.envelope_to, recipient.original, *action.addresses)
        )
        why = skip_reason(header, message.sender, own)
        if why is not None:
            log.info("%s", kv(event="sieve.vacation_skipped", account=recipient.address, reason=why))
            return None
        # The reply is DKIM-signed as mail of our domain: its From: must be an address that reaches this
        # account (a script must not speak for someone else: not `:addresses`, the script's own claim, nor
        # ORCPT, the sending client's).
        reaching = {recipient.address.lower(), recipient.envelope_to.lower()}
        name, from_address = parseaddr(action.from_address or "")
        if not action.from_address:
            from_address = recipient.envelope_to
        elif not _plain_address(from_address) or from_address.lower() not in reaching:
            notes.append("vacation :from is not an address of this account; the recipient address is used")
            name, from_address = "", recipient.envelope_to
        name = " ".join("".join(c if c.isprintable() else " " for c in name).split())[:200]
        reply = build_reply(header=header, sender=message.sender, from_address=from_address, from_name=name,
                            reason=action.reason, subject=action.subject, mime=action.mime, now=now,
                            hostname=self.hostname)  # fmt: skip
        key = VACATION_KEY + hashlib.sha256(f"{action.handle}\0{message.sender.lower()}".encode()).hexdigest()
        return VacationReply(key, int(now.timestamp()) + action.seconds, reply)

    def remember_vacation(self, recipient: Recipient, vacation: VacationReply, now: int) -> bool:
        """Record that this reply goes out; False when one went to this sender within the period (§4.2):
        then it must not. Blocking; call once the message is stored."""
        return self.mail.sieve_remember(recipient.account_id, vacation.key, vacation.expires_at, now, only_if_new=True)

    def remember_duplicates(self, recipient: Recipient, marks: Sequence[sieve.DuplicateMark], now: int) -> None:
        """RFC 7352 §3: ids are tracked once the message was delivered. Blocking."""
        for mark in marks:
            self.mail.sieve_remember(recipient.account_id, DUPLICATE_KEY + mark.key, now + mark.seconds, now,
                                     only_if_new=False)  # fmt: skip


def mailbox_name(name: str) -> str | None:
    """The store's form of a Sieve mailbox name (INBOX in any case is INBOX, trailing separators dropped),
    or None for one IMAP could not create."""
    name = name.rstrip(SEPARATOR)
    if name.upper() == INBOX:
        return INBOX
    if name.upper().startswith(INBOX + SEPARATOR):
        name = INBOX + name[len(INBOX) :]
    if (
        not name
        or name.startswith(SEPARATOR)
        or SEPARATOR * 2 in name
        or "*" in name
        or "%" in name
        or any(ord(ch) < 0x20 or ch == "\x7f" for ch in name)
        or len(name.encode("utf-8", "surrogatepass")) > MAX_MAILBOX_NAME
        or name.count(SEPARATOR) >= MAX_MAILBOX_LEVELS
    ):
        return None
    return name


def _valid_flags(flags: frozenset[str], notes: list[str]) -> frozenset[str]:
    """The flags a stored message may carry (RFC 5232 §3: invalid ones are ignored): system flags but
    \\Recent, and keywords that are IMAP atoms."""
    kept: set[str] = set()
    for flag in sorted(flags):
        if flag.startswith("\\"):
            canonical = SYSTEM_FLAGS.get(flag.lower())
            if canonical is not None:
                kept.add(canonical)
        elif (
            0 < len(flag) <= MAX_KEYWORD and flag.isascii() and flag.isprintable() and not _NOT_IN_ATOM & set(flag)
        ):
            kept.add(flag)
        if len(kept) >= MAX_FLAGS:
            notes.append(f"more than {MAX_FLAGS} flags; the rest ignored")
            break
    return frozenset(kept)


def _plain_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain) and address.isprintable() and not any(c in address for c in ' <>\r\n"')


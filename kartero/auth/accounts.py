"""Accounts and aliases: validation, canonical addresses, and where an address delivers to.

Canonical address: local part lower-cased (Kartero treats local parts case-insensitively, as nearly
every mail system does), domain in lower-case A-label form.

Resolution order for a local address (first match wins):
1. an alias for the exact address (its destinations are resolved in turn, loops cut; a destination in
   another domain is a remote address, forwarded through the queue);
2. an account with that address;
3. for `user+tag@domain`, the same steps for `user@domain` (plus-addressing);
4. a catch-all alias `@domain`;
5. `postmaster@domain`: the first account created (RFC 5321 §4.5.1 says postmaster must exist).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from kartero.auth.passwords import hash_password, verify_password
from kartero.auth.sasl import SCRAM_ITERATIONS, ScramCredentials, scram_credentials
from kartero.concurrency import Blocking
from kartero.dns.names import DomainError, canonical_domain
from kartero.mail.address import Address, AddressError, parse_mailbox
from kartero.store.interface import Account, AccountStore

log = logging.getLogger("kartero.auth")

# Alias chains deeper than this are configuration loops or abuse.
MAX_ALIAS_DEPTH = 10


class DirectoryError(ValueError):
    """A request the admin must correct (bad address, foreign domain, unknown account)."""


def new_scram(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """Fresh SCRAM-SHA-256 keys for a password (random salt), as stored with the account."""
    return scram_credentials(password, os.urandom(16), iterations).encode()


def needs_new_scram(stored: str, iterations: int) -> bool:
    """Whether stored SCRAM keys are missing, unreadable or made with fewer PBKDF2 rounds than
    `iterations` (keys from before `[auth] scram_iterations` was raised): replaced at the next login."""
    if not stored:
        return True
    try:
        return ScramCredentials.decode(stored).iterations < iterations
    except (ValueError, binascii.Error):
        return True


def canonical_address(address: Address) -> str:
    """`local@domain` with the case and IDNA rules above; raises DirectoryError."""
    try:
        domain = canonical_domain(address.domain)
    except DomainError as exc:
        raise DirectoryError(str(exc)) from None
    return f"{address.local_part.lower()}@{domain}"


def parse_address(text: str) -> str:
    """Parse and canonicalize an address typed by an admin; raises DirectoryError.

    A canonical address parses again to itself: `"a b"@x` is kept as `a b@x` (the local part
    unquoted), and the web admin's forms send that form back, so a local part that only parses
    quoted is tried quoted."""
    text = text.strip()
    try:
        return canonical_address(parse_mailbox(text))
    except AddressError as exc:
        local, at, domain = text.rpartition("@")
        if at and local and not local.startswith('"'):
            with contextlib.suppress(AddressError):
                return canonical_address(parse_mailbox(f"{Address(local, domain).quoted_local_part()}@{domain}"))
        raise DirectoryError(f"not a valid address: {text!r} ({exc})") from None


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where a local address delivers: account ids and remote addresses its aliases point at (each
    once, in the order found). Both empty means nobody."""

    account_ids: tuple[int, ...]
    is_postmaster_fallback: bool = False
    forward_to: tuple[str, ...] = ()

    @property
    def has_destinations(self) -> bool:
        return bool(self.account_ids or self.forward_to)


class Directory:
    """Accounts and aliases of the local domains, over an AccountStore."""

    def __init__(self, store: AccountStore, domains: tuple[str, ...], scram_iterations: int = SCRAM_ITERATIONS) -> None:
        self.store = store
        self.domains = frozenset(domains)
        self.scram_iterations = scram_iterations

    def is_local_domain(self, domain: str) -> bool:
        return domain in self.domains

    def _require_local(self, address: str) -> str:
        domain = address.rpartition("@")[2]
        if domain not in self.domains:
            raise DirectoryError(f"{address}: domain {domain} is not one of the local domains")
        return address

    # -- admin ---------------------------------------------------------------------------------------

    def add_user(self, text: str, password: str, *, is_admin: bool = False) -> Account:
        address = self._require_local(parse_address(text))
        if not password:
            raise DirectoryError("the password is empty")
        account = self.store.add_account(address, hash_password(password), new_scram(password, self.scram_iterations))
        if is_admin:
            self.store.set_admin(address, True)
            account = replace(account, is_admin=True)
        return account

    def set_password(self, text: str, password: str) -> None:
        """A new password also signs the account out of every browser (the old one may be what leaked)."""
        address = parse_address(text)
        if not password:
            raise DirectoryError("the password is empty")
        if not self.store.set_password(address, hash_password(password), new_scram(password, self.scram_iterations)):
            raise DirectoryError(f"no account {address}")
        account = self.store.get_account(address)
        if account is not None:
            self.store.delete_web_sessions(account.id)

    def set_admin(self, text: str, is_admin: bool) -> str:
        """Grant or take the web admin; taking it signs the account's browsers out. Its address."""
        address = parse_address(text)
        if not self.store.set_admin(address, is_admin):
            raise DirectoryError(f"no account {address}")
        account = self.store.get_account(address)
        if account is not None and not is_admin:
            self.store.delete_web_sessions(account.id)
        return address

    def set_quota(self, text: str, limit_bytes: int | None) -> str:
        """Set the account's storage limit (None: `[limits] default_quota`, 0: none); its address."""
        address = parse_address(text)
        if limit_bytes is not None and limit_bytes < 0:
            raise DirectoryError("a quota cannot be negative")
        if not self.store.set_quota(address, limit_bytes):
            raise DirectoryError(f"no account {address}")
        return address

    def delete_user(self, text: str) -> None:
        address = parse_address(text)
        if not self.store.delete_account(address):
            raise DirectoryError(f"no account {address}")

    def add_alias(self, source_text: str, destination_text: str) -> tuple[str, str]:
        """Add `source` → `destination`; a source of `@domain` is a catch-all for that domain."""
        source_text = source_text.strip()
        if source_text.startswith("@"):
            try:
                domain = canonical_domain(source_text[1:])
            except DomainError as exc:
                raise DirectoryError(str(exc)) from None
            source = "@" + domain
            if domain not in self.domains:
                raise DirectoryError(f"{source}: domain {domain} is not one of the local domains")
        else:
            source = self._require_local(parse_address(source_text))
        # A destination in another domain is forwarded through the queue (with an SRS sender); its local
        # part is kept as written, the remote domain's business (RFC 5321 §2.4).
        destination = parse_address(destination_text)
        domain = destination.rpartition("@")[2]
        if domain not in self.domains:
            destination = f"{parse_mailbox(destination_text.strip()).quoted_local_part()}@{domain}"
        if source == destination:
            raise DirectoryError("an alias cannot point to itself")
        self.store.add_alias(source, destination)
        return source, destination

    def delete_alias(self, source_text: str) -> int:
        source_text = source_text.strip()
        if source_text.startswith("@"):
            try:
                source = "@" + canonical_domain(source_text[1:])
            except DomainError as exc:
                raise DirectoryError(str(exc)) from None
        else:
            source = parse_address(source_text)
        count = self.store.delete_alias(source)
        if not count:
            raise DirectoryError(f"no alias {source}")
        return count

    # -- delivery ------------------------------------------------------------------------------------

    def resolve(self, address: str) -> Resolution:
        """Where mail for the canonical local `address` goes (see the module docstring)."""
        return self.snapshot().resolve(address)

    def snapshot(self) -> DirectorySnapshot:
        accounts, aliases, first = self.store.load_directory()
        return DirectorySnapshot(self.domains, accounts, aliases, first)


@dataclass(frozen=True, slots=True)
class DirectorySnapshot:
    """Every account and alias at one moment, for lookups without I/O (one per change, not per RCPT)."""

    domains: frozenset[str]
    accounts: Mapping[str, int]  # address -> account id
    aliases: Mapping[str, tuple[str, ...]]  # source -> destinations
    first_account: int | None

    def resolve(self, address: str) -> Resolution:
        """Where mail for the canonical local `address` goes (see the module docstring)."""
        found: dict[int, None] = {}
        remote: dict[str, None] = {}
        self._expand(address, found, remote, set(), 0)
        if found or remote:
            return Resolution(tuple(found), forward_to=tuple(remote))
        local, _, domain = address.rpartition("@")
        if local == "postmaster" and domain in self.domains:
            first = self.first_account
            return Resolution((first,) if first is not None else (), is_postmaster_fallback=True)
        return Resolution(())

    def _expand(self, address: str, found: dict[int, None], remote: dict[str, None], seen: set[str],
                depth: int) -> None:  # fmt: skip
        if address in seen or depth > MAX_ALIAS_DEPTH:
            return
        seen.add(address)
        local, _, domain = address.rpartition("@")
        if domain not in self.domains:
            if depth:  # an alias destination elsewhere: forwarded
                remote[address] = None
            return
        destinations = self.aliases.get(address)
        if destinations:
            for destination in destinations:
                self._expand(destination, found, remote, seen, depth + 1)
            return
        account = self.accounts.get(address)
        if account is not None:
            found[account] = None
            return
        base, plus, _ = local.partition("+")
        if plus and base:
            before = len(found) + len(remote)
            self._expand(f"{base}@{domain}", found, remote, seen, depth + 1)
            if len(found) + len(remote) > before:
                return
        for destination in self.aliases.get("@" + domain, ()):
            self._expand(destination, found, remote, seen, depth + 1)


class DirectoryCache:
    """The current DirectorySnapshot for a running server; sees admin changes at the next lookup.

    `resolve` answers from memory. It compares the store's directory version (one read of a counter the
    store raises with every account or alias change, in any process) at most every RECHECK_S seconds
    for a positive answer — so a deleted account or changed alias takes effect within that time — and
    always before a negative one, so a user added a moment ago is never refused. After a change it
    reloads in a thread of its own (one reload shared by every caller meanwhile) and answers then. Used on
    the event loop only.
    """

    RECHECK_S = 1.0
    RELOAD_DEADLINE_S = 60.0

    def __init__(self, store: AccountStore, domains: tuple[str, ...],
                 confirm: Callable[[], int] | None = None) -> None:  # fmt: skip
        """`confirm`: for a store whose `directory_version` is what a change feed last heard
        (PostgreSQL), the version read from the database itself, called in this cache's thread before a
        negative answer: a user added at another node a moment ago is never refused (550 is final)."""
        self.store = store
        self.domains = frozenset(domains)
        self.confirm = confirm
        # Reloads have a thread of their own, not the shared pool: a pool thread may be waiting on the loop
        # for a message it stores (the queue runner's DSNs), and so for this reload (issue 10 review: eight
        # DSNs after an admin change held every pool thread and the reload for its whole deadline).
        self.blocking = Blocking(ThreadPoolExecutor(1, thread_name_prefix="kartero-directory"))
        self._snapshot: DirectorySnapshot | None = None
        self._version: int | None = None
        self._checked_at = -1e9
        self._reload: asyncio.Future[DirectorySnapshot] | None = None
        # Called (in the reloading thread) after each reload, e.g. policy.quota.QuotaBook's.
        self.reloaded: list[Callable[[], None]] = []

    def prime(self) -> None:
        """Load the first snapshot (blocking; the server calls it in a worker thread at start-up)."""
        self._load(self.store.directory_version())

    def current(self) -> DirectorySnapshot:
        """The latest snapshot, without waiting: when the directory changed, a reload starts and this
        answer is at most one reload old. Needs `prime()` first."""
        snapshot = self._snapshot
        if snapshot is None:
            raise RuntimeError("DirectoryCache.current() before prime()")
        if time.monotonic() - self._checked_at >= self.RECHECK_S:
            version = self.store.directory_version()
            if version == self._version:
                self._checked_at = time.monotonic()
            else:
                self._reloading(version)
        return snapshot

    async def resolve(self, address: str) -> Resolution:
        """Where mail for the canonical local `address` goes (see Directory)."""
        snapshot = self._snapshot
        if snapshot is not None and time.monotonic() - self._checked_at < self.RECHECK_S:
            resolution = snapshot.resolve(address)
            if resolution.has_destinations:
                return resolution
        version = self.store.directory_version()
        if snapshot is not None and version == self._version:
            resolution = snapshot.resolve(address)
            if resolution.has_destinations or self.confirm is None:
                self._checked_at = time.monotonic()
                return resolution
            # Not known here: the feed may not have brought a change yet; ask the database itself.
            version = await self.blocking(self.RELOAD_DEADLINE_S, self.confirm)
            if version == self._version:
                self._checked_at = time.monotonic()
                return resolution
        return (await asyncio.shield(self._reloading(version))).resolve(address)

    def _reloading(self, version: int) -> asyncio.Future[DirectorySnapshot]:
        if self._reload is None or self._reload.done():
            self._reload = asyncio.ensure_future(self.blocking(self.RELOAD_DEADLINE_S, self._load, version))
            self._reload.add_done_callback(_log_failure)
        return self._reload

    def _load(self, version: int) -> DirectorySnapshot:
        accounts, aliases, first = self.store.load_directory()
        snapshot = DirectorySnapshot(self.domains, accounts, aliases, first)
        self._snapshot, self._version, self._checked_at = snapshot, version, time.monotonic()
        for listener in self.reloaded:
            listener()
        return snapshot


def _log_failure(reload: asyncio.Future[DirectorySnapshot]) -> None:
    if not reload.cancelled() and (exc := reload.exception()) is not None:
        log.error("event=directory.reload_failed detail=%s", exc)


class Authenticator:
    """Checks a user name and password against the accounts (blocking: run it in a worker thread).

    Successful checks are remembered for a while (like Dovecot's auth cache) as an HMAC of the password
    under a per-process random key, together with the account's password hash at that time: a client
    that reconnects often (phones open several connections) costs one argon2 check, not one per login,
    and a password change or account deletion is honoured at once because the account is read every time.
    A successful check also replaces SCRAM keys made with fewer than `scram_iterations` PBKDF2 rounds
    (the password is known just then), so old accounts upgrade at their next login.
    """

    CACHE_TTL_S = 15 * 60.0
    CACHE_SIZE = 10_000

    def __init__(self, store: AccountStore, scram_iterations: int = SCRAM_ITERATIONS) -> None:
        self.store = store
        self.scram_iterations = scram_iterations
        # Verifying against a real hash when the account does not exist keeps the time of a failure the
        # same for known and unknown users (no account enumeration by timing).
        self._decoy = hash_password("decoy password, never matches")
        self._key = os.urandom(32)
        self._cache: dict[str, tuple[bytes, str, float]] = {}

    def verify(self, user: str, password: str) -> Account | None:
        try:
            address = parse_address(user)
        except DirectoryError:
            verify_password(self._decoy, password)
            return None
        account = self.store.get_account(address)
        if account is None:
            verify_password(self._decoy, password)
            return None
        digest = hmac.new(self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        cached = self._cache.get(address)
        now = time.monotonic()
        if (
            cached is not None
            and cached[2] > now
            and cached[1] == account.password_hash
            and hmac.compare_digest(cached[0], digest)
        ):
            return account
        if not verify_password(account.password_hash, password):
            return None
        if needs_new_scram(account.scram, self.scram_iterations):
            self.store.set_scram(address, new_scram(password, self.scram_iterations))
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[address] = (digest, account.password_hash, now + self.CACHE_TTL_S)
        return account

    def scram(self, user: str) -> tuple[ScramCredentials, Account | None]:
        """The SCRAM keys of `user`; for an unknown user (or one without keys yet) keys that cannot
        match but look the same every time, so the exchange does not tell who exists."""
        account = None
        with contextlib.suppress(DirectoryError):
            account = self.store.get_account(parse_address(user))
        if account is not None and account.scram:
            return ScramCredentials.decode(account.scram), account
        salt = hmac.new(self._key, b"salt:" + user.encode("utf-8", "replace"), hashlib.sha256).digest()[:16]
        return ScramCredentials(salt, self.scram_iterations, os.urandom(32), os.urandom(32)), None

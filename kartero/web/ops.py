"""What an administrator can do over HTTP, shared by the web admin's pages and the JSON API.

Every function here blocks (store queries, argon2 hashing, DNS lookups): the handlers run them in the
worker pool with a deadline (`Blocking`), never on the event loop. Mistakes the caller made raise
`OpError` with the HTTP status it means (400 bad input, 404 no such thing, 409 already there), phrased
for a person, as the CLI phrases the same mistakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.resolver

from kartero.auth.accounts import Directory, DirectoryError, parse_address
from kartero.autoconfig.records import client_records
from kartero.config import Config, parse_size
from kartero.dns.names import DomainError, canonical_domain
from kartero.mail.address import AddressError
from kartero.mailauth.dkim import (
    DEFAULT_SELECTOR,
    DKIMError,
    DKIMKey,
    check_selector,
    generate,
    keys_from_rows,
    load_keys,
)
from kartero.mailauth.dnscheck import Check, check_domain
from kartero.sieve_scripts import VACATION_SCRIPT, ScriptProblem, Vacation, put, read_vacation, vacation_script
from kartero.store.interface import (
    MAX_TRACE_RESULTS,
    Account,
    AccountExists,
    QueueEntry,
    Store,
    TooManyScripts,
    TraceQuery,
    TraceResult,
)
from kartero.web.chart import Bucket

MAX_PASSWORD = 1024  # argon2 hashes anything; a megabyte "password" is only a way to burn CPU
PAGE = 100  # rows per page of a list
MAX_QUOTA = 10**18


class OpError(Exception):
    """The request cannot be done as asked; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class AccountInfo:
    address: str
    is_admin: bool
    created_at: int
    quota_bytes: int  # the limit in force (0: none)
    quota_is_default: bool  # the limit is [limits] default_quota
    used_bytes: int
    messages: int


@dataclass(frozen=True, slots=True)
class AliasInfo:
    source: str
    destinations: tuple[str, ...]
    is_catch_all: bool  # `@domain`: any address of the domain without an account or alias of its own
    remote: tuple[str, ...]  # the destinations outside the local domains (forwarded with SRS)


@dataclass(frozen=True, slots=True)
class DkimKeyInfo:
    domain: str
    selector: str
    algorithm: str
    created_at: int
    record_name: str
    record: str  # the TXT record to publish


@dataclass(frozen=True, slots=True)
class StoreSize:
    mail_bytes: int  # RFC822.SIZE of every stored message, as quotas count it
    messages: int
    queue_bytes: int
    queued: int  # messages in the queue
    accounts: int


@dataclass(frozen=True, slots=True)
class VacationState:
    is_on: bool
    settings: Vacation  # the page's last saved values (defaults when never saved)
    other_active: str | None  # the name of the user's own active script, which the page leaves alone


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a longer list; `total` counts them all."""

    items: list[object]
    total: int
    offset: int


@dataclass(slots=True)
class Operations:
    """The admin's operations over one store and config (the CLI does the same on its own)."""

    config: Config
    store: Store
    directory: Directory
    resolver: Callable[[], dns.resolver.Resolver] | None = None  # a blocking resolver, for the DNS check

    # -- accounts ------------------------------------------------------------------------------------

    def accounts(self, search: str = "", offset: int = 0, limit: int = PAGE) -> tuple[list[AccountInfo], int]:
        """Accounts whose address contains `search` (case-insensitive), a page of them and how many."""
        needle = search.strip().lower()
        accounts = [a for a in self.store.accounts.list_accounts() if needle in a.address.lower()]
        page = accounts[max(0, offset) : max(0, offset) + max(1, min(limit, 1000))]
        return self._infos(page), len(accounts)

    def account(self, address: str) -> AccountInfo:
        """One account, looked up by its address (never through a search: a page of matches may not
        hold it)."""
        address = self._address(address)
        account = self.store.accounts.get_account(address)
        if account is None:
            raise OpError(404, f"no account {address}")
        return self._infos([account])[0]

    def _infos(self, accounts: list[Account]) -> list[AccountInfo]:
        usage = self.store.mail.quota_usage([a.id for a in accounts]) if accounts else {}
        default = self.config.limits.default_quota
        return [
            AccountInfo(a.address, a.is_admin, a.created_at, usage[a.id].effective_limit(default),
                        usage[a.id].limit_bytes is None, usage[a.id].used_bytes, usage[a.id].messages)
            for a in accounts
        ]  # fmt: skip

    def add_account(self, address: str, password: str, *, is_admin: bool = False, quota: str = "") -> AccountInfo:
        _check_password(password)
        if quota.strip():
            parse_quota(quota)  # a bad size is refused before the account exists, not after
        try:
            account = self.directory.add_user(address, password, is_admin=is_admin)
        except DirectoryError as exc:
            raise OpError(400, str(exc)) from None
        except AccountExists:
            raise OpError(409, f"account {parse_address(address)} already exists") from None
        if quota.strip():
            self.set_quota(account.address, quota)
        return self.account(account.address)

    def set_password(self, address: str, password: str) -> None:
        _check_password(password)
        try:
            self.directory.set_password(address, password)
        except DirectoryError as exc:
            raise OpError(404 if str(exc).startswith("no account") else 400, str(exc)) from None

    def set_quota(self, address: str, size: str) -> AccountInfo:
        """`size` like "500M" or "2G", "0" for none, "default" for [limits] default_quota."""
        limit = parse_quota(size)
        try:
            address = self.directory.set_quota(address, limit)
        except DirectoryError as exc:
            raise OpError(404 if str(exc).startswith("no account") else 400, str(exc)) from None
        return self.account(address)

    def set_admin(self, address: str, is_admin: bool) -> AccountInfo:
        try:
            address = self.directory.set_admin(address, is_admin)
        except DirectoryError as exc:
            raise OpError(404 if str(exc).startswith("no account") else 400, str(exc)) from None
        return self.account(address)

    def delete_account(self, address: str) -> None:
        try:
            self.directory.delete_user(address)
        except DirectoryError as exc:
            raise OpError(404 if str(exc).startswith("no account") else 400, str(exc)) from None

    # -- aliases -------------------------------------------------------------------------------------

    def aliases(self) -> list[AliasInfo]:
        grouped: dict[str, list[str]] = {}
        for source, destination in self.store.accounts.list_aliases():
            grouped.setdefault(source, []).append(destination)
        domains = set(self.config.domains)
        return [
            AliasInfo(source, tuple(dests), source.startswith("@"),
                      tuple(d for d in dests if d.rpartition("@")[2] not in domains))
            for source, dests in grouped.items()
        ]  # fmt: skip

    def add_alias(self, source: str, destination: str) -> AliasInfo:
        try:
            src, _ = self.directory.add_alias(source, destination)
        except (DirectoryError, AddressError) as exc:
            raise OpError(400, str(exc)) from None
        return next(a for a in self.aliases() if a.source == src)

    def delete_alias(self, source: str) -> None:
        try:
            self.directory.delete_alias(source)
        except DirectoryError as exc:
            raise OpError(404 if "no alias" in str(exc) else 400, str(exc)) from None

    # -- the queue -----------------------------------------------------------------------------------

    def queue(self) -> list[QueueEntry]:
        return self.store.queue.queue_entries()

    def queue_entry(self, queue_id: str) -> tuple[QueueEntry, str]:
        """One queued message and its header (as text; the body is not shown)."""
        entry = next((e for e in self.store.queue.queue_entries() if e.id == queue_id), None)
        if entry is None:
            raise OpError(404, f"no queued message {queue_id[:80]}")
        reader = self.store.mail.open_message(queue_id)
        try:
            head = reader.read(0, min(reader.size, 256 * 1024))
        finally:
            reader.close()
        end = head.find(b"\r\n\r\n")
        header = head[: end + 2] if end >= 0 else head
        return entry, header.decode("utf-8", "replace")

    def queue_retry(self, queue_id: str) -> int:
        """Make the message's open recipients due now; how many (the caller wakes the queue runner)."""
        self.queue_entry(queue_id)
        return self.store.queue.queue_flush(queue_id)

    def queue_delete(self, queue_id: str) -> None:
        if not self.store.queue.queue_delete(queue_id):
            raise OpError(404, f"no queued message {queue_id[:80]}")

    # -- domains, DNS and DKIM -----------------------------------------------------------------------

    def dkim_keys(self) -> dict[str, list[DKIMKey]]:
        """The keys the server signs with: files under data_dir, or rows of the PostgreSQL store."""
        dkim_keys = getattr(self.store, "dkim_keys", None)
        if self.config.store.is_postgresql and dkim_keys is not None:
            return keys_from_rows(dkim_keys())
        return load_keys(self.config.data_dir)

    def domains(self) -> list[tuple[str, list[DkimKeyInfo]]]:
        keys = self.dkim_keys()
        return [(domain, [_key_info(k) for k in keys.get(domain, [])]) for domain in self.config.domains]

    def dns_check(self, domain: str) -> list[Check]:
        domain = self._local_domain(domain)
        if self.resolver is None:
            raise OpError(503, "no resolver")
        return check_domain(domain, self.config.hostname, self.dkim_keys().get(domain, []), self.resolver(),
                            client_records(self.config, domain))

    def dkim_generate(self, domain: str, algorithm: str = "rsa", selector: str = "") -> DkimKeyInfo:
        """A new key for a selector that has none (a key is never replaced from the web: replacing
        breaks signatures until the new record is published)."""
        domain = self._local_domain(domain)
        if algorithm not in ("rsa", "ed25519"):
            raise OpError(400, 'algorithm must be "rsa" or "ed25519"')
        default = DEFAULT_SELECTOR if algorithm == "rsa" else f"{DEFAULT_SELECTOR}-ed"
        try:
            selector = check_selector(selector.strip() or default)
            if any(key.selector == selector for key in self.dkim_keys().get(domain, [])):
                raise OpError(409, f"selector {selector!r} of {domain} already has a key")
            put = getattr(self.store, "put_dkim_key", None)
            if self.config.store.is_postgresql and put is not None:
                from kartero.mailauth.dkim import new_private_key

                private, created = new_private_key(algorithm), time.time()
                if not put(domain, selector, algorithm, private, created, replace=False):
                    raise DKIMError(f"selector {selector!r} of {domain} already has a key")
                key = keys_from_rows([(domain, selector, algorithm, private, created)])[domain][0]
            else:
                key = generate(self.config.data_dir, domain, selector, algorithm)
        except DKIMError as exc:
            raise OpError(409 if "already" in str(exc) else 400, str(exc)) from None
        return _key_info(key)

    # -- a user's vacation reply ---------------------------------------------------------------------

    def vacation(self, account_id: int) -> VacationState:
        """The vacation reply the user's page shows: on when the page's script is the active one."""
        active = self.store.sieve.active_script(account_id)
        stored = self.store.sieve.get_script(account_id, VACATION_SCRIPT)
        settings = read_vacation(stored) if stored is not None else None
        is_on = active is not None and active[0] == VACATION_SCRIPT
        other = active[0] if active is not None and not is_on else None
        return VacationState(is_on, settings or Vacation(), other)

    def set_vacation(self, account_id: int, vacation: Vacation | None) -> VacationState:
        """Turn the reply on with `vacation`, or off (None). A script of the user's own that is active is
        never replaced: the user's rules come first (they can add `vacation` to it, or deactivate it)."""
        state = self.vacation(account_id)
        if state.other_active is not None:
            raise OpError(409, f"your own Sieve script {state.other_active!r} is active: add the reply to it, or "
                               "deactivate it with your Sieve client first")  # fmt: skip
        if vacation is None:
            if state.is_on:
                self.store.sieve.set_active(account_id, None)
            return self.vacation(account_id)
        problem = vacation.problem()
        if problem is not None:
            raise OpError(400, problem)
        try:
            put(self.store.sieve, account_id, VACATION_SCRIPT, vacation_script(vacation).encode())
        except ScriptProblem as exc:
            raise OpError(400, str(exc)) from None
        except TooManyScripts:
            raise OpError(409, "you have as many Sieve scripts as allowed: delete one of yours first") from None
        self.store.sieve.set_active(account_id, VACATION_SCRIPT)
        return self.vacation(account_id)

    # -- the message trace ---------------------------------------------------------------------------

    def trace(self, *, address: str = "", message_id: str = "", id: str = "", since: float | None = None,
              until: float | None = None, limit: int = 50) -> TraceResult:
        """Messages whose path matches every criterion given, newest first (see `TraceQuery`)."""
        if since is not None and until is not None and since >= until:
            raise OpError(400, "since must be before until")
        if not 1 <= limit <= MAX_TRACE_RESULTS:
            raise OpError(400, f"limit must be 1 to {MAX_TRACE_RESULTS}")
        query = TraceQuery(address.strip() or None, message_id.strip() or None, id.strip() or None, since, until,
                           limit)  # fmt: skip
        return self.store.trace.search(query)

    def activity(self, now: float | None = None, hours: int = 24) -> list[Bucket]:
        """The dashboard's chart: per hour over the last `hours` (the current one included), messages
        received, delivered (into a local mailbox or to the remote server), deferred and bounced, from the
        message trace (one aggregate over at most two days of trace rows, in the worker pool)."""
        now = time.time() if now is None else now
        first = (int(now) // 3600 - hours + 1) * 3600
        counts = self.store.trace.activity(first, now + 1)
        buckets = [
            Bucket(hour, counts.get((hour, "received"), 0),
                   counts.get((hour, "delivered"), 0) + counts.get((hour, "stored"), 0),
                   counts.get((hour, "deferred"), 0), counts.get((hour, "bounced"), 0))
            for hour in range(first, first + hours * 3600, 3600)
        ]  # fmt: skip
        return buckets

    # -- helpers -------------------------------------------------------------------------------------

    def _address(self, text: str) -> str:
        try:
            return parse_address(text)
        except DirectoryError as exc:
            raise OpError(400, str(exc)) from None

    def _local_domain(self, text: str) -> str:
        try:
            domain = canonical_domain(text)
        except DomainError as exc:
            raise OpError(400, str(exc)) from None
        if domain not in self.config.domains:
            raise OpError(404, f"{domain} is not one of the local domains")
        return domain

    # -- the web admin's dashboard (issue 14, the admin pages' branch) ------------------------------

    def store_size(self) -> StoreSize:
        """What the mailboxes and the queue hold, from the counters the store keeps with every change
        (a sum over accounts and queue entries, never a walk over the message files)."""
        usage = self.store.mail.quota_usage()
        entries = self.store.queue.queue_entries()
        return StoreSize(sum(u.used_bytes for u in usage.values()), sum(u.messages for u in usage.values()),
                         sum(e.size for e in entries), len(entries), len(usage))  # fmt: skip


def parse_quota(size: str) -> int | None:
    """A quota as `set_quota` takes it: bytes, or None for "default". Raises OpError (400)."""
    text = size.strip().lower()
    if text == "default":
        return None
    limit = parse_size(text) if len(text) <= 40 else None  # the regex sees no more than that
    if limit is None:
        raise OpError(400, f'not a size: {size[:40]!r} (like "500M", "2G", "0" for none, or "default")')
    if limit > MAX_QUOTA:
        raise OpError(400, "a quota is at most 1 EB (the store keeps 63-bit sizes)")
    return limit


def _check_password(password: str) -> None:
    if not password:
        raise OpError(400, "the password is empty")
    if len(password) > MAX_PASSWORD:
        raise OpError(400, f"the password is longer than {MAX_PASSWORD} characters")


def _key_info(key: DKIMKey) -> DkimKeyInfo:
    return DkimKeyInfo(key.domain, key.selector, key.algorithm, int(key.created), key.record_name, key.dns_record())

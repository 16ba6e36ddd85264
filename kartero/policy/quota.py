"""Quotas at the SMTP door: every account's usage and limit in memory, and the 90 % warning.

RCPT is answered from memory, never by waiting on the database on the event loop (architecture.md,
"Intake, and which thread runs what"). So `QuotaBook` keeps each account's usage and limit in a dict
that the loop only reads. The store's own change notifications keep it current: a change to a mailbox
(a delivery, APPEND, COPY, EXPUNGE, here or, with PostgreSQL, at another node) or to an account marks
it, and a thread of the book's own reads the usage of the accounts concerned (one indexed query adding
up their mailboxes' counters, which the store keeps exactly) and swaps the answer in; a directory reload
(an account or quota changed by the CLI) reloads every account. The answers are therefore a few
milliseconds behind the store at most, and a message accepted meanwhile is still delivered: nothing
acknowledged is ever dropped, so a mailbox may end a message or so past its limit (as with Postfix and
Dovecot's quota-status service). With no limit anywhere (`[limits] default_quota = 0` and no account
with its own), the book does no work at all.

The same thread sends the warning: when usage reaches 90 % of the limit, the account's "warned" mark
is set in the store (exactly one process wins it, so a cluster sends one) and a short message from
postmaster@ its domain goes to its INBOX; the mark is cleared once usage is below 90 % again, so the
next crossing warns again.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import format_datetime

from kartero.log import kv
from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.store.ids import new_message_id
from kartero.store.interface import INBOX, Delivery, DeliveryTarget, MailStore, QuotaUsage, StoredMessage

log = logging.getLogger("kartero.policy")

WARN_PERCENT = 90


class QuotaBook:
    """Usage and limit of every account, read without I/O (`is_full`), kept current by store listeners.

    `attach()` subscribes it to the store, then `prime()` loads it (blocking, at start). Thread-safe: the
    loop reads, the book's one thread replaces the whole dict."""

    def __init__(self, mail: MailStore, default_quota: int, hostname: str) -> None:
        self.mail = mail
        self.default_quota = default_quota
        self.hostname = hostname
        self._usage: dict[int, QuotaUsage] = {}
        self._active = default_quota > 0
        self._lock = threading.Lock()
        self._dirty_mailboxes: set[int] = set()
        self._dirty_accounts: set[int] = set()
        self._reload_all = False
        self._pending: Future[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="kartero-quota")

    # -- reads (the event loop) ----------------------------------------------------------------------

    def is_full(self, account_ids: Sequence[int], size: int | None = None) -> bool:
        """Whether each of `account_ids` is at its limit, or (with `size`, MAIL FROM's SIZE=) has less
        room than that. An account without a limit, or not known yet, is never full; several accounts
        (an alias) are full only when all of them are: the others take the message, and nothing
        accepted is dropped, so the full ones get their copy too."""
        if not account_ids or not self.is_active:
            return False
        return all(self._is_full(account_id, size or 0) for account_id in account_ids)

    def _is_full(self, account_id: int, size: int) -> bool:
        usage = self._usage.get(account_id)
        if usage is None:
            return False
        limit = usage.effective_limit(self.default_quota)
        return limit > 0 and (usage.used_bytes >= limit or usage.used_bytes + size > limit)

    @property
    def is_active(self) -> bool:
        """Whether any account has a limit (else no change is followed)."""
        return self._active

    # -- keeping it current (store listeners, the book's thread) -------------------------------------

    def prime(self) -> None:
        """Load every account (blocking; the server calls it in a worker thread at start-up). In the
        book's thread, like every refresh, so none overwrites another's newer answer."""
        self._thread.submit(self._refresh, None).result()

    def attach(self) -> None:
        """Hear of every committed change from the store."""
        self.mail.add_listener(self.mailboxes_changed)
        self.mail.add_account_listener(self.account_changed)

    def mailboxes_changed(self, mailbox_ids: frozenset[int]) -> None:
        if self.is_active:
            with self._lock:
                self._dirty_mailboxes |= mailbox_ids
            self._schedule()

    def account_changed(self, account_id: int) -> None:
        if not self.is_active:
            return
        with self._lock:
            self._dirty_accounts.add(account_id)
        self._schedule()

    def directory_reloaded(self) -> None:
        """Accounts or limits changed (in any process): read them all again."""
        with self._lock:
            self._reload_all = True
        self._schedule()

    def settle(self) -> None:
        """Wait until every change heard so far is in the book (tests)."""
        self._thread.submit(lambda: None).result()

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    def _schedule(self) -> None:
        with self._lock:
            if self._pending is not None and not self._pending.done():
                return  # the run queued will see what was just marked
            try:
                self._pending = self._thread.submit(self._run)
            except RuntimeError:  # shut down
                return

    def _run(self) -> None:
        with self._lock:
            self._pending = None  # what is marked from now on needs a run of its own
            mailboxes, self._dirty_mailboxes = self._dirty_mailboxes, set()
            accounts, self._dirty_accounts = self._dirty_accounts, set()
            everything, self._reload_all = self._reload_all, False
        try:
            if everything:
                self._refresh(None)
            elif mailboxes or accounts:
                self._refresh(accounts, mailboxes)
        except Exception:  # the database away: the next change reads again
            log.exception("%s", kv(event="quota.refresh_failed"))

    def _refresh(self, accounts: Iterable[int] | None, mailboxes: Iterable[int] = ()) -> None:
        if accounts is None:
            fresh = self.mail.quota_usage()
            self._usage = fresh
            # Limits change only with the directory (set_quota raises its version): read them here.
            self._active = self.default_quota > 0 or any(u.limit_bytes for u in fresh.values())
        else:
            wanted = set(accounts)
            fresh = self.mail.quota_usage(sorted(wanted), of_mailboxes=sorted(set(mailboxes)))
            usage = dict(self._usage)
            usage.update(fresh)
            for account_id in wanted - fresh.keys():  # deleted
                usage.pop(account_id, None)
            self._usage = usage  # one assignment: the loop sees the old dict or the new one
        for entry in fresh.values():
            self._check_warning(entry)

    def _check_warning(self, usage: QuotaUsage) -> None:
        limit = usage.effective_limit(self.default_quota)
        high = limit > 0 and usage.used_bytes * 100 >= limit * WARN_PERCENT
        if high and not usage.warned and self.mail.mark_quota_warned(usage.account_id, True):
            self._send_warning(usage, limit)
        elif not high and usage.warned:
            self.mail.mark_quota_warned(usage.account_id, False)

    def _send_warning(self, usage: QuotaUsage, limit: int) -> None:
        now = int(time.time())
        message = warning_message(usage.address, usage.used_bytes, limit, hostname=self.hostname, now=now)
        envelope = EnvelopeRecord(Origin.QUOTA, "", (EnvelopeRecipient(usage.address),), received_at=now)
        delivery = Delivery(new_message_id(), message, (DeliveryTarget(usage.account_id, INBOX),), now, envelope)
        log.info("%s", kv(event="quota.warning", account=usage.address, used=usage.used_bytes, limit=limit))
        self.mail.deliver(delivery).add_done_callback(_log_failure)


def _log_failure(future: Future[list[StoredMessage]]) -> None:
    if (exc := future.exception()) is not None:
        log.error("%s", kv(event="quota.warning_failed", detail=str(exc)))


def warning_message(address: str, used_bytes: int, limit_bytes: int, *, hostname: str, now: int) -> bytes:
    """The warning: from postmaster@ the account's domain, `Auto-Submitted: auto-generated` (RFC 3834
    §5: no automatic reply goes back to it), plain text."""
    domain = address.rpartition("@")[2]
    percent = used_bytes * 100 // limit_bytes
    header = (
        "Return-Path: <>\r\n"
        f"From: Mail System <postmaster@{domain}>\r\n"
        f"To: <{address}>\r\n"
        f"Subject: Your mailbox is {percent}% full\r\n"
        f"Date: {format_datetime(datetime.fromtimestamp(now, UTC))}\r\n"
        f"Message-ID: <{secrets.token_hex(12)}@{hostname}>\r\n"
        "Auto-Submitted: auto-generated\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
    )
    body = (
        f"Your mailbox {address} uses {_megabytes(used_bytes)} of its {_megabytes(limit_bytes)} ({percent}%).\r\n"
        "\r\n"
        "When it is full, new mail for you is refused (senders are told to try again later) and\r\n"
        "your mail program cannot store more messages. Delete messages you no longer need, and\r\n"
        "empty the Trash, to make room.\r\n"
    )
    return (header + body).encode()  # an SMTPUTF8 address stays UTF-8 (RFC 6532)


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"



"""Kartero's Prometheus metrics: every one defined here, and the text `/metrics` serves (`exposition`).

The metrics live in `REGISTRY`, a registry of Kartero's own (prometheus_client's default one also holds
whatever any library in the process registers there, and its process/platform collectors; ours holds
only `kartero_` metrics). They are module-level objects, as Prometheus metrics are everywhere: a
process is what Prometheus scrapes, and prometheus_client decides at import whether values live in
memory or in files shared by several processes (below). Several `Server`s in one process (tests) count
into the same metrics; tests read the change of a value, never its absolute level.

Label values come from the fixed vocabularies below only. A value outside its vocabulary is counted as
"other" (`bounded`): every child of a labelled metric costs memory for the life of the process (and a
series in Prometheus), so no string a client chooses (a command name, an address) may ever become one.
Filter names are the admin's (`[[milter]]` addresses, "hooks"), bounded by the config.

Instrumented code calls the small functions below (a `.labels()` lookup and an `inc()`: about a
microsecond); the listener-labelled children are bound once per listener (`for_listener`). The protocol
cores never import this module: they keep plain counts the adapters hand over (`kartero/net/`).

State that is not an event (the queue, the store's size) is read at scrape time from the source the
server registers (`watch_store`), with one aggregate query: `exposition()` then blocks on the store, so
the HTTP handler must run it in the event loop's default executor (`await asyncio.to_thread(exposition)`
or `loop.run_in_executor(None, exposition)`), never on the loop itself, and not in a thread made for the
scrape (a store connection is kept per thread: the pool's threads reuse theirs).

Several processes (`serve --workers N`, kartero/workers.py): the supervisor gives every worker the
environment variable PROMETHEUS_MULTIPROC_DIR (data_dir/workers/metrics, emptied at each start); there
prometheus_client keeps each process's values in files of that folder, and `exposition()` in any worker
adds up the files of all of them: a scrape that reaches any worker sees the totals of the whole group
(counters and histograms summed over workers, alive or dead since the start; `kartero_connections_open`
summed over the live ones). The queue and store gauges are the shared store's, read by the worker
scraped.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger("kartero.metrics")

# prometheus_client's switch for multi-process mode, read once at import (by prometheus_client too).
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS_DIR = os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None

# The `_created` series of every counter and histogram double the series for a timestamp Prometheus'
# text format does not use; only Kartero's metrics live in this process.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry()
# Prometheus' text format 0.0.4, which every Prometheus reads (prometheus_client now says 1.0.0, which
# differs only in how names outside [a-zA-Z0-9_:] are quoted; Kartero has none).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

OTHER = "other"

# -- vocabularies ----------------------------------------------------------------------------------------

LISTENERS = frozenset({"smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "managesieve",
                       "http", "https"})  # fmt: skip
PROTOCOLS = frozenset({"smtp", "imap", "pop3", "managesieve", "http"})
# Where a message that went through intake came from (kartero.mail.envelope.Origin's values; IMAP APPEND,
# `kartero import` and the quota warning are stored without intake).
ORIGINS = frozenset({"smtp", "submission", "sendmail", "dsn", "sieve"})
# Why a message, a sender or a recipient was refused.
REASONS = frozenset({
    "policy",  # a check of the listener's policy not named below (SPF/DKIM-based, author fields, ...)
    "dmarc",  # the sender domain's DMARC policy
    "auth",  # authentication required, or a sender the user may not use
    "unknown_recipient",  # no such local address (or an SRS address we did not sign)
    "relay",  # a recipient in a domain that is not ours (no relaying)
    "quota",  # a mailbox over its quota, or a declared SIZE that does not fit
    "greylisted",
    "blocklisted",  # the client is on a DNS blocklist
    "rate_limit",  # the user's sending limit
    "unavailable",  # a mailbox temporarily unavailable
    "filter",  # a milter or hook refused
    "size",  # over [limits] message_size, or a header too large to check
    "format",  # bare CR or LF, a line over 1000 octets, NUL (RFC 5321 §2.3.8, §4.5.3.1.6)
    "loop",  # already delivered here for every recipient (Delivered-To)
    "sieve",  # a recipient's Sieve script rejected it
    "error",  # a check, a filter, the spool or the store failed (451)
})  # fmt: skip
DELIVERY_OUTCOMES = ("delivered", "deferred", "bounced", "local")
DSN_ACTIONS = ("failed", "delayed", "delivered", "relayed")
REPLY_CLASSES = ("2xx", "3xx", "4xx", "5xx")
BACKENDS = frozenset({"sqlite", "postgresql"})
DNS_TYPES = frozenset({"A", "AAAA", "MX", "TXT", "PTR", "TLSA", "CNAME"})
DNS_RESULTS = frozenset({"answer", "nxdomain", "nodata", "temporary"})
FILTER_PHASES = frozenset({"connect", "helo", "mail", "rcpt", "message"})
VERDICTS = frozenset({"continue", "accept", "reject", "tempfail", "discard"})
# Every command the IMAP core knows (kartero.imap.state.ALLOWED), and the UID forms; the core counts the
# rest as "OTHER" already, and so does this table.
IMAP_COMMANDS = frozenset({
    "CAPABILITY", "NOOP", "LOGOUT", "ID", "STARTTLS", "LOGIN", "AUTHENTICATE", "ENABLE", "SELECT", "EXAMINE",
    "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND",
    "IDLE", "COMPRESS", "UNAUTHENTICATE", "NOTIFY", "GETMETADATA", "SETMETADATA", "GETQUOTA", "GETQUOTAROOT",
    "SETQUOTA", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID", "SORT",
    "THREAD", "CANCELUPDATE", "UID FETCH", "UID STORE", "UID COPY", "UID MOVE", "UID SEARCH", "UID SORT",
    "UID THREAD", "UID EXPUNGE",
})  # fmt: skip


def bounded(value: str, vocabulary: frozenset[str]) -> str:
    """`value` when the vocabulary has it, else "other": what a label may be."""
    return value if value in vocabulary else OTHER


# -- connections, logins, protocol traffic ----------------------------------------------------------------

CONNECTIONS_OPENED = Counter("kartero_connections_opened", "Connections accepted, refused ones included",
                             ["listener"], registry=REGISTRY)  # fmt: skip
CONNECTIONS_REFUSED = Counter("kartero_connections_refused",
                              "Connections refused by the connection limits ([limits] connections...)",
                              ["listener"], registry=REGISTRY)  # fmt: skip
CONNECTIONS_OPEN = Gauge("kartero_connections_open", "Sessions open now", ["listener"], registry=REGISTRY,
                         multiprocess_mode="livesum")  # fmt: skip
LOGINS = Counter("kartero_logins", "Successful logins (SMTP AUTH, IMAP, POP3, ManageSieve, the web admin)",
                 ["protocol"], registry=REGISTRY)  # fmt: skip
AUTH_FAILURES = Counter("kartero_auth_failures", "Logins refused for wrong credentials", ["protocol"],
                        registry=REGISTRY)  # fmt: skip
AUTH_THROTTLED = Counter("kartero_auth_throttled", "Logins refused unchecked by the failed-login throttle",
                         ["protocol"], registry=REGISTRY)  # fmt: skip
SMTP_REPLIES = Counter("kartero_smtp_replies", "SMTP replies sent, by class", ["listener", "class"],
                       registry=REGISTRY)  # fmt: skip
IMAP_COMMANDS_SEEN = Counter("kartero_imap_commands", "IMAP commands received, by name (unknown ones: other)",
                             ["command"], registry=REGISTRY)  # fmt: skip
SENDERS_REFUSED = Counter("kartero_senders_refused", "MAIL FROM refused by policy or filters", ["listener", "reason"],
                          registry=REGISTRY)  # fmt: skip
RECIPIENTS_REFUSED = Counter("kartero_recipients_refused", "RCPT TO refused by policy or filters",
                             ["listener", "reason"], registry=REGISTRY)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ListenerCounters:
    """The children of one listener, bound once (`for_listener`)."""

    listener: str
    opened: Counter
    refused: Counter
    open: Gauge
    replies: tuple[Counter, ...]  # 2xx, 3xx, 4xx, 5xx

    def count_replies(self, by_digit: Sequence[int]) -> None:
        """Add SMTP replies counted by the first digit of their code (the SMTP core's tally, indexed by
        that digit)."""
        for digit in range(2, 6):
            if n := by_digit[digit]:
                self.replies[digit - 2].inc(n)


@functools.cache
def for_listener(listener: str) -> ListenerCounters:
    """The counters of a listener, made on first use (one entry per name of LISTENERS, and "other")."""
    name = bounded(listener, LISTENERS)
    if name != listener:
        return for_listener(name)
    replies = tuple(SMTP_REPLIES.labels(name, reply_class) for reply_class in REPLY_CLASSES)
    return ListenerCounters(name, CONNECTIONS_OPENED.labels(name), CONNECTIONS_REFUSED.labels(name),
                            CONNECTIONS_OPEN.labels(name), replies)  # fmt: skip


def login(protocol: str) -> None:
    LOGINS.labels(bounded(protocol, PROTOCOLS)).inc()


def auth_failed(protocol: str) -> None:
    AUTH_FAILURES.labels(bounded(protocol, PROTOCOLS)).inc()


def auth_throttled(protocol: str) -> None:
    AUTH_THROTTLED.labels(bounded(protocol, PROTOCOLS)).inc()


def imap_commands(counts: Mapping[str, int]) -> None:
    """Add the IMAP core's tally of commands by name."""
    for name, n in counts.items():
        IMAP_COMMANDS_SEEN.labels(bounded(name, IMAP_COMMANDS)).inc(n)


def sender_refused(listener: str, reason: str) -> None:
    SENDERS_REFUSED.labels(bounded(listener, LISTENERS), bounded(reason, REASONS)).inc()


def recipient_refused(listener: str, reason: str) -> None:
    RECIPIENTS_REFUSED.labels(bounded(listener, LISTENERS), bounded(reason, REASONS)).inc()


# -- messages and deliveries --------------------------------------------------------------------------------

MESSAGES_RECEIVED = Counter("kartero_messages_received", "Messages received whole, by origin", ["origin"],
                            registry=REGISTRY)  # fmt: skip
MESSAGES_STORED = Counter("kartero_messages_stored",
                          "Messages accepted and stored durably (local copies and queue entries), by origin",
                          ["origin"], registry=REGISTRY)  # fmt: skip
MESSAGES_REFUSED = Counter("kartero_messages_refused", "Messages refused after their data, by origin and reason",
                           ["origin", "reason"], registry=REGISTRY)  # fmt: skip
MESSAGES_DISCARDED = Counter("kartero_messages_discarded",
                             "Messages accepted for nobody (a filter's discard, every recipient removed)",
                             ["origin"], registry=REGISTRY)  # fmt: skip
DELIVERIES = Counter("kartero_deliveries",
                     "Recipients delivered: remote (delivered, deferred, bounced), or local copies stored",
                     ["outcome"], registry=REGISTRY)  # fmt: skip
DSNS = Counter("kartero_dsns_sent", "Delivery status notifications sent, by action", ["action"], registry=REGISTRY)

# Bound once: a dict lookup per message instead of `.labels()` (which checks and locks: a few µs).
_DELIVERIES = {outcome: DELIVERIES.labels(outcome) for outcome in DELIVERY_OUTCOMES}
_DSNS = {action: DSNS.labels(action) for action in DSN_ACTIONS}
_RECEIVED = {origin: MESSAGES_RECEIVED.labels(origin) for origin in (*sorted(ORIGINS), OTHER)}
_STORED = {origin: MESSAGES_STORED.labels(origin) for origin in (*sorted(ORIGINS), OTHER)}


def message_received(origin: str) -> None:
    (_RECEIVED.get(origin) or _RECEIVED[OTHER]).inc()


def message_stored(origin: str) -> None:
    (_STORED.get(origin) or _STORED[OTHER]).inc()


def message_refused(origin: str, reason: str) -> None:
    MESSAGES_REFUSED.labels(bounded(origin, ORIGINS), bounded(reason, REASONS)).inc()


def message_discarded(origin: str) -> None:
    MESSAGES_DISCARDED.labels(bounded(origin, ORIGINS)).inc()


def delivered(outcome: str, recipients: int = 1) -> None:
    """Count recipients by outcome: delivered, deferred, bounced (remote) or local (copies stored)."""
    if recipients:
        _DELIVERIES[outcome].inc(recipients)


def dsn_sent(action: str) -> None:
    _DSNS[action].inc()


# -- the store, DNS, filters, the event loop ------------------------------------------------------------------

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORE_COMMIT = Histogram("kartero_store_commit_seconds",
                         "One group commit: the bodies' fsync and the transaction of a batch of deliveries",
                         ["backend"], buckets=_SECONDS, registry=REGISTRY)  # fmt: skip
STORE_BATCH = Histogram("kartero_store_commit_groups", "Delivery groups committed together in one batch",
                        ["backend"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY)  # fmt: skip
STORE_DELIVERY = Histogram("kartero_store_delivery_seconds",
                           "From handing a message to the store to its durable commit (indexing and waiting for "
                           "the committer included): what an SMTP client waits for before its 250",
                           ["backend"], buckets=_SECONDS, registry=REGISTRY)  # fmt: skip
DNS_LOOKUP = Histogram("kartero_dns_lookup_seconds", "DNS lookups, by record type", ["type"],
                       buckets=_SECONDS, registry=REGISTRY)  # fmt: skip
DNS_LOOKUPS = Counter("kartero_dns_lookups", "DNS lookups, by record type and result", ["type", "result"],
                      registry=REGISTRY)  # fmt: skip
FILTER_VERDICTS = Counter("kartero_filter_verdicts", "Content filters' (milters', hooks') verdicts, by phase",
                          ["filter", "phase", "verdict"], registry=REGISTRY)  # fmt: skip
FILTER_FAILURES = Counter("kartero_filter_failures",
                          "Content filters that failed (unreachable, too slow, broken replies): on_error applied",
                          ["filter"], registry=REGISTRY)  # fmt: skip
LOOP_LAG = Histogram("kartero_event_loop_lag_seconds",
                     "How late the event loop ran a callback due every 100 ms (everyone waits that long)",
                     buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
                     registry=REGISTRY)  # fmt: skip
LOOP_BLOCKED = Counter("kartero_event_loop_blocked", "Times something held the event loop past 250 ms "
                       "(each logged as loop.blocked with its stack)", registry=REGISTRY)  # fmt: skip


_BACKENDS = {backend: (STORE_COMMIT.labels(backend), STORE_BATCH.labels(backend), STORE_DELIVERY.labels(backend))
             for backend in (*sorted(BACKENDS), OTHER)}  # fmt: skip


def store_committed(backend: str, seconds: float, groups: int) -> None:
    commit, batch, _ = _BACKENDS.get(backend) or _BACKENDS[OTHER]
    commit.observe(seconds)
    batch.observe(groups)


def store_delivered(backend: str, seconds: float) -> None:
    (_BACKENDS.get(backend) or _BACKENDS[OTHER])[2].observe(seconds)


def dns_looked_up(rdtype: str, result: str, seconds: float) -> None:
    name = bounded(rdtype.upper(), DNS_TYPES)
    DNS_LOOKUP.labels(name).observe(seconds)
    DNS_LOOKUPS.labels(name, bounded(result, DNS_RESULTS)).inc()


def filter_verdict(filter_name: str, phase: str, verdict: str) -> None:
    FILTER_VERDICTS.labels(filter_name, bounded(phase, FILTER_PHASES), bounded(verdict, VERDICTS)).inc()


def filter_failed(filter_name: str) -> None:
    FILTER_FAILURES.labels(filter_name).inc()


# -- state read at scrape time ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreState:
    """What the server's store source answers at scrape time."""

    queue_messages: int  # entries in the outbound queue
    queue_oldest_at: float | None  # when the oldest of them was queued (Unix time); None: empty
    store_bytes: int  # what the store takes on disk (PostgreSQL: the database's size)


class _StoreCollector:
    """The queue and store gauges, read from the registered source on each scrape."""

    def __init__(self) -> None:
        self._source: Callable[[], StoreState] | None = None
        self._lock = threading.Lock()

    def watch(self, source: Callable[[], StoreState]) -> Callable[[], None]:
        with self._lock:
            self._source = source

        def unwatch() -> None:
            with self._lock:
                if self._source is source:
                    self._source = None

        return unwatch

    def describe(self) -> Iterable[Metric]:
        return ()  # known only when a source answers; nothing to check against the other names

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            source = self._source
        if source is None:
            return []
        try:
            state = source()
        except Exception as exc:  # the database away: these gauges are missing from this scrape
            log.warning("event=metrics.store_failed detail=%s", str(exc).strip().replace("\n", " ") or repr(exc))
            return []
        age = max(0.0, time.time() - state.queue_oldest_at) if state.queue_oldest_at is not None else 0.0
        return [
            GaugeMetricFamily("kartero_queue_messages", "Messages in the outbound queue", state.queue_messages),
            GaugeMetricFamily("kartero_queue_oldest_age_seconds",
                              "Age of the oldest message in the outbound queue (0: empty)", age),
            GaugeMetricFamily("kartero_store_size_bytes",
                              "What the store takes on disk (PostgreSQL: the database's size)", state.store_bytes),
        ]  # fmt: skip


_STORE = _StoreCollector()
REGISTRY.register(_STORE)


def watch_store(source: Callable[[], StoreState]) -> Callable[[], None]:
    """Read the queue and store gauges from `source` at each scrape (blocking: it queries the store);
    returns the function that stops it. A later call replaces the source."""
    return _STORE.watch(source)


# -- several processes ---------------------------------------------------------------------------------------------


def shared_environment(directory: Path) -> dict[str, str]:
    """For the supervisor of `serve --workers N`: empty `directory` (the counts of an earlier run are
    not this one's) and return the environment that makes a worker keep its values there."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    return {MULTIPROCESS_DIR_VARIABLE: str(directory)}


def process_gone(pid: int, directory: Path) -> None:
    """A worker sharing `directory` exited: its open connections no longer count (its counters still
    do: what it counted happened)."""
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def exposition() -> tuple[bytes, str]:
    """The body and content type of a `/metrics` answer (Prometheus text format 0.0.4).

    Blocking (the store gauges query the store): call it in the event loop's default executor
    (`await asyncio.to_thread(exposition)`), never on the loop. Under `serve --workers N` the values are
    the sums over every worker's files (see the module docstring)."""
    registry = REGISTRY
    if MULTIPROCESS_DIR is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
        registry.register(_STORE)
    return generate_latest(registry), CONTENT_TYPE

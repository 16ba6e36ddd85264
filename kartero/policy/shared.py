"""The abuse state of a cluster: the failed-login throttle, the sending limit and greylisting count what
every process of the cluster saw, so spreading attempts over the nodes does not multiply the allowance.

Each check stays in memory, on the event loop, as with one process: it never waits for the database.
What the processes share are events (interface.py `AbuseEvent`): a settled login attempt, a message
sent, a triplet greylisted or passed. The process's own go out and the others' come in every SYNC_S in
one exchange with the `AbuseStore`, run in a worker thread by the server; the others' are then applied
on the loop (`apply`) to the same in-memory counts. So a lockout reached with attempts at several nodes
holds at all of them within about a second, and a greylisted sender retrying at another node passes.

While the database is away the counts go on per process (each still holds its own limits), the events
not sent wait (at most MAX_PENDING, the oldest dropped first) and go out once it is back; nothing raises
into a session. The rows expire with the window of their kind, and the table holds at most MAX_ROWS.
Rows per key stay few without a cap of their own: a locked-out pair or user adds none (refused attempts
and refused messages are not events), and a triplet adds one when first seen and one when it passes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from kartero.auth.throttle import AuthThrottle
from kartero.log import kv
from kartero.policy.limits import Greylist
from kartero.policy.submission import SubmissionPolicy
from kartero.store.interface import AbuseEvent, AbuseKind, AbuseStore, StoreUnavailable

log = logging.getLogger("kartero.policy")

SYNC_S = 0.5  # how often a process exchanges events: how long a lockout takes to hold cluster-wide
EXPIRE_EVERY_S = 60.0
MAX_PENDING = 10_000  # events kept for the database while it is away
MAX_ROWS = 1_000_000  # rows of abuse_events at most, the oldest deleted first (about 200 MB)
SENT_WINDOW_S = 3600.0  # the sending limit counts per hour


class AbuseSync:
    """Connects the in-memory throttle, sending count and greylist of this process (those in use; None
    for the others) to the `AbuseStore` of the cluster."""

    def __init__(self, store: AbuseStore, throttle: AuthThrottle | None = None,
                 submission: SubmissionPolicy | None = None, greylist: Greylist | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.store = store
        self.throttle = throttle
        self.submission = submission if submission is not None and submission.messages_per_hour else None
        self.greylist = greylist
        self.clock = clock
        self._pending: deque[AbuseEvent] = deque(maxlen=MAX_PENDING)
        self._lock = threading.Lock()  # `publish` (the loop) and `exchange` (a worker thread)
        self._expired_at = -EXPIRE_EVERY_S
        self._is_down = False
        if self.throttle is not None:
            self.throttle.publish = self.publish
        if self.submission is not None:
            self.submission.publish = self.publish
        if self.greylist is not None:
            self.greylist.publish = self.publish

    @property
    def horizons(self) -> dict[AbuseKind, float]:
        """How long each kind of event counts (only the kinds this process uses: another node's config
        may use more, and its rows are not this process's to expire)."""
        found: dict[AbuseKind, float] = {}
        if self.throttle is not None:
            found[AbuseKind.LOGIN_FAILED] = found[AbuseKind.LOGIN_OK] = self.throttle.window_s
        if self.submission is not None:
            found[AbuseKind.SENT] = SENT_WINDOW_S
        if self.greylist is not None:
            found[AbuseKind.GREY_SEEN] = self.greylist.retry_window_s
            found[AbuseKind.GREY_PASSED] = self.greylist.pass_s
        return found

    @property
    def is_behind(self) -> bool:
        """More events wait to be read: exchange again at once."""
        return self.store.is_behind and not self._is_down

    def publish(self, kind: AbuseKind, key: tuple[str, ...]) -> None:
        """An event of this process (called by the throttle, the submission policy, the greylist)."""
        with self._lock:
            self._pending.append(AbuseEvent(kind, key, self.clock()))

    def exchange(self) -> list[AbuseEvent]:
        """In a worker thread: send this process's events, return the others' (none while the database is
        away: then the events wait for the next exchange), and expire old rows about once a minute."""
        with self._lock:
            outgoing = list(self._pending)
            self._pending.clear()
        now = self.clock()
        horizons = self.horizons
        try:
            incoming = self.store.exchange(outgoing, now - max(horizons.values(), default=0.0))
            if now - self._expired_at >= EXPIRE_EVERY_S:
                self._expired_at = now
                self.store.expire({kind: now - span for kind, span in horizons.items()}, MAX_ROWS)
        except StoreUnavailable as exc:
            with self._lock:  # put them back before the newer ones; past the cap the oldest go
                waiting = [*outgoing, *self._pending]
                self._pending.clear()
                self._pending.extend(waiting[-MAX_PENDING:])
            if not self._is_down:
                self._is_down = True
                log.warning("%s", kv(event="abuse.sync_failed", detail=str(exc).strip(), pending=len(waiting)))
            return []
        if self._is_down:
            self._is_down = False
            log.info("%s", kv(event="abuse.sync_resumed", sent=len(outgoing)))
        return incoming

    def apply(self, events: Iterable[AbuseEvent]) -> None:
        """On the event loop: count the other processes' events here."""
        now = self.clock()
        throttle, submission, greylist = self.throttle, self.submission, self.greylist
        for event in events:
            age, key = now - event.at, event.key
            if event.kind is AbuseKind.LOGIN_FAILED and throttle is not None:
                throttle.remote_failure(key[0], key[1], age)
            elif event.kind is AbuseKind.LOGIN_OK and throttle is not None:
                throttle.remote_success(key[0], key[1], age)
            elif event.kind is AbuseKind.SENT and submission is not None:
                submission.sent.record_earlier(key[0], age)
            elif event.kind is AbuseKind.GREY_SEEN and greylist is not None:
                greylist.remote_seen(key[0], key[1], key[2], age)
            elif event.kind is AbuseKind.GREY_PASSED and greylist is not None:
                greylist.remote_passed(key[0], key[1], key[2], age)

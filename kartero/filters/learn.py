"""Users' spam and ham reports, sent to rspamd's controller (DESIGN.md §1b `[spam] learn`).

IMAP commands hand reports over through `SpamReports.report` (kartero/imap/commands/junk.py says which
commands report what); the command goes on at once. One worker thread of the `Learner` reads each
message from the store and POSTs it to the controller's `/learnspam` or `/learnham`, one at a time
(learning is a background chore: it must not compete with the sessions for the store or the CPU).

Failure semantics: a connection error, a timeout or a 5xx is tried again after a backoff that doubles
(`first_backoff_s`, capped at `max_backoff_s`), at most `max_attempts` times in all; meanwhile the other
reports go on, so one message the controller chokes on never holds back the rest. Any other answer is
final: 2xx is learned, 208 (rspamd: "already learned", also a repeated report) is done too, 4xx is a
failure logged at once (a message rspamd cannot learn will not become learnable). Reports are best
effort: the queue holds at most `max_queue` reports and drops the oldest when full, and the reports
still queued when the server stops are dropped; both are logged (`spam.learn_dropped`).
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from kartero.log import kv
from kartero.store.interface import MailStore, MessageReader, SpamClass, SpamReport, StoreError, StoreUnavailable

log = logging.getLogger("kartero.spam")

_PATHS = {SpamClass.SPAM: "/learnspam", SpamClass.HAM: "/learnham"}
_ALREADY_LEARNED = 208  # rspamd's answer to a message it learned before as the same class
_READ_BLOCK = 64 * 1024  # the message goes to the controller in pieces this large, never whole in memory


@dataclass(frozen=True, slots=True)
class LearnSettings:
    url: str  # the controller: "http://127.0.0.1:11334"; a password as "http://:secret@host:11334"
    max_queue: int = 1000
    max_attempts: int = 8  # with the backoff below, a controller away for about two minutes loses nothing
    first_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 10.0  # connect and each read of one request

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {self.url!r}")
        if self.max_queue < 1 or self.max_attempts < 1 or self.first_backoff_s < 0 or self.timeout_s <= 0:
            raise ValueError("max_queue and max_attempts must be positive, the delays not negative")


@dataclass(order=True, slots=True)
class _Item:
    due_at: float
    seq: int  # the order reports came in: the oldest goes first when the queue is full
    report: SpamReport = field(compare=False)
    attempts: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class _Outcome:
    done: bool  # learned, or known already: nothing more to do
    retry: bool  # a failure worth another attempt
    status: int  # the HTTP status (0: none came)
    detail: str


class _Body:
    """A stored message as a file-like body for http.client: read in blocks, and exactly `size` octets."""

    def __init__(self, reader: MessageReader, size: int) -> None:
        self._reader = reader
        self._size = size
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        want = self._size - self._pos if n < 0 else min(n, self._size - self._pos)
        if want <= 0:
            return b""
        data = self._reader.read(self._pos, min(want, _READ_BLOCK))
        if not data:
            raise OSError(f"the stored message ends at {self._pos} of {self._size} octets")
        self._pos += len(data)
        return data


class Learner:
    """The queue of spam/ham reports and the thread that sends them (serves `SpamReports`)."""

    def __init__(self, store: MailStore, settings: LearnSettings) -> None:
        self._store = store
        self.settings = settings
        parts = urlsplit(settings.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._password = unquote(parts.password) if parts.password else None
        self._cond = threading.Condition()
        self._fresh: deque[_Item] = deque()  # reports not tried yet, oldest first
        self._retries: list[_Item] = []  # a heap by due time
        self._seq = 0
        self._busy = False  # the worker is sending one
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- SpamReports -------------------------------------------------------------------------------

    def report(self, reports: Sequence[SpamReport]) -> None:
        with self._cond:
            now = time.monotonic()
            for report in reports:
                self._seq += 1
                self._fresh.append(_Item(now, self._seq, report))
            dropped = len(self._fresh) + len(self._retries) - self.settings.max_queue
            if dropped > 0:
                self._drop_oldest(dropped)
            self._cond.notify()
        if dropped > 0:
            log.warning("%s", kv(event="spam.learn_dropped", reason="queue full", count=dropped,
                                 max_queue=self.settings.max_queue))  # fmt: skip

    def _drop_oldest(self, count: int) -> None:
        """Drop the `count` oldest reports. Every retry is older than every fresh report (a report
        becomes a retry only after it was the oldest fresh one), so the retries go first."""
        if count >= len(self._retries):
            count -= len(self._retries)
            self._retries.clear()
            for _ in range(count):
                self._fresh.popleft()
        else:
            self._retries = sorted(self._retries, key=lambda item: item.seq)[count:]
            heapq.heapify(self._retries)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spam-learner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker after the request under way (waits at most about `timeout_s`); what is still
        queued is dropped, and logged."""
        with self._cond:
            self._stopping = True
            left = len(self._fresh) + len(self._retries)
            self._fresh.clear()
            self._retries.clear()
            self._cond.notify_all()
        if left:
            log.warning("%s", kv(event="spam.learn_dropped", reason="shutdown", count=left))
        if self._thread is not None:
            self._thread.join(self.settings.timeout_s * 2)
            self._thread = None

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every report is learned or given up (True), or `timeout_s` passes (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._fresh or self._retries or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # -- the worker --------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                item = self._take()
                while item is None and not self._stopping:
                    wait = self._retries[0].due_at - time.monotonic() if self._retries else None
                    self._cond.wait(wait)
                    item = self._take()
                if self._stopping:
                    return
                assert item is not None
                self._busy = True
            try:
                self._attempt(item)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _take(self) -> _Item | None:
        """The next report to send now: a retry that is due, else the oldest fresh one."""
        if self._retries and self._retries[0].due_at <= time.monotonic():
            return heapq.heappop(self._retries)
        return self._fresh.popleft() if self._fresh else None

    def _attempt(self, item: _Item) -> None:
        item.attempts += 1
        report = item.report
        try:
            outcome = self._send(report)
        except Exception as exc:  # a bug must not end the worker: that report fails, the others go on
            log.exception("%s", kv(event="spam.learn_failed", user=report.user, message=report.blob_id))
            outcome = _Outcome(False, False, 0, type(exc).__name__)
        fields = {"user": report.user, "message": report.blob_id, "kind": report.kind.value,
                  "status": outcome.status or None, "attempts": item.attempts}  # fmt: skip
        if outcome.done:
            log.info("%s", kv(event="spam.learned", **fields, detail=outcome.detail or None))
            return
        if outcome.retry and item.attempts < self.settings.max_attempts:
            delay = min(self.settings.max_backoff_s, self.settings.first_backoff_s * 2 ** (item.attempts - 1))
            log.info("%s", kv(event="spam.learn_retry", **fields, retry_in_s=round(delay, 3), detail=outcome.detail))
            with self._cond:
                if not self._stopping:
                    item.due_at = time.monotonic() + delay
                    heapq.heappush(self._retries, item)
            return
        log.warning("%s", kv(event="spam.learn_failed", **fields, detail=outcome.detail))

    def _send(self, report: SpamReport) -> _Outcome:
        """One POST of the message to the controller."""
        try:
            reader = self._store.open_message(report.blob_id)
        except StoreUnavailable as exc:
            return _Outcome(False, True, 0, f"store unavailable: {exc}")
        except StoreError as exc:  # expunged and gone meanwhile: nothing left to learn from
            return _Outcome(False, False, 0, f"message not readable: {exc}")
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.settings.timeout_s,
                                               blocksize=_READ_BLOCK)  # fmt: skip
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.settings.timeout_s,
                                              blocksize=_READ_BLOCK)  # fmt: skip
        headers = {"Content-Length": str(report.size), "Deliver-To": report.user}
        if self._password is not None:
            headers["Password"] = self._password
        try:
            conn.request("POST", self._prefix + _PATHS[report.kind], body=_Body(reader, report.size), headers=headers)
            response = conn.getresponse()
            answer = response.read(4096).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException, StoreUnavailable) as exc:
            return _Outcome(False, True, 0, f"{type(exc).__name__}: {exc}")
        except StoreError as exc:  # expunged and compacted away while it was being sent
            return _Outcome(False, False, 0, f"message not readable: {exc}")
        finally:
            conn.close()
            with contextlib.suppress(Exception):
                reader.close()
        status = response.status
        if status == _ALREADY_LEARNED or (400 <= status < 500 and "already learned" in answer):
            return _Outcome(True, False, status, "already learned")
        if 200 <= status < 300:
            return _Outcome(True, False, status, "")
        return _Outcome(False, status >= 500, status, answer[:200])

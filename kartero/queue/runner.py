"""The queue runner: picks the recipients that are due, hands them to the delivery agent grouped by
destination domain, records every outcome durably, and sends the DSNs the outcomes call for.

Concurrency: at most `concurrency` deliveries at once, at most `per_domain` to one domain; each delivery
carries several messages so the agent can send them over one connection. A recipient in flight is
never picked twice. The runner wakes when something is queued, when a delivery ends, or when the next
retry is due.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from kartero import metrics
from kartero.log import kv
from kartero.mail import replies
from kartero.mail.trace import TraceEvent, TraceKind
from kartero.queue.dsn import Action, RecipientReport, build_dsn
from kartero.queue.jobs import Deferred, Delivered, Deliverer, Failed, JobMessage, JobRecipient, Outcome
from kartero.queue.schedule import next_attempt_at
from kartero.store.interface import QueueItem, QueueState, RecipientUpdate, Store

log = logging.getLogger("kartero.queue")

# A queued message larger than this is read a piece at a time while it is sent (issue 8: memory per
# delivery is a constant, not the message).
STREAM_BYTES = 1024 * 1024
# A DSN returns at most this much of the original message; past it, only the header (up to the next).
DSN_RETURN_LIMIT = 1024 * 1024
DSN_HEADER_LIMIT = 256 * 1024

# A domain that does not exist is believed only after this many attempts (a DNS hiccup is not a bounce).
NXDOMAIN_ATTEMPTS = 3
# How often failures whose notice could not be sent (or was cut off by a crash) are looked for again.
SWEEP_INTERVAL_S = 300.0
DEFAULT_NOTIFY = ("FAILURE", "DELAY")  # RFC 3461 §4.1: the MTA's choice when NOTIFY is absent
# What the metrics count each recorded state as (kartero.metrics.DELIVERY_OUTCOMES).
_OUTCOMES = {QueueState.DELIVERED: "delivered", QueueState.DEFERRED: "deferred", QueueState.FAILED: "bounced"}
_TRACED = {Delivered: TraceKind.DELIVERED, Deferred: TraceKind.DEFERRED, Failed: TraceKind.BOUNCED}


class Bouncer(Protocol):
    def send(self, recipient: str, data: bytes, *, smtputf8: bool) -> str | None:
        """Deliver a DSN (null sender) to `recipient`, locally or through the queue; its message id when
        it was stored. Blocking."""
        ...


@dataclass(frozen=True, slots=True)
class QueueSettings:
    hostname: str
    retry_first_s: float = 300.0
    retry_max_s: float = 4 * 3600.0
    delay_notice_s: float = 4 * 3600.0
    concurrency: int = 50
    per_domain: int = 5
    messages_per_delivery: int = 50
    poll_s: float = 5.0
    lease_renew_s: float = 20.0  # a shared queue's leases of what is being delivered are renewed this often
    trace: bool = False  # keep each attempt and notice in the message trace (kartero.mail.trace)


class QueueRunner:
    def __init__(
        self,
        store: Store,
        deliverer: Deliverer,
        bouncer: Bouncer,
        settings: QueueSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = store.queue
        self.mail = store.mail  # the queued messages' bytes
        self.trace = store.trace if settings.trace else None
        self.deliverer = deliverer
        self.bouncer = bouncer
        self.settings = settings
        self.clock = clock
        self._wakeup = asyncio.Event()
        self._in_flight: dict[int, str] = {}  # recipient id -> queue id, for recipients being delivered
        # Claimed by the last dispatch but waiting for a free slot (concurrency, per-domain limit): a shared
        # queue leased them to this node, so their leases are renewed too until a dispatch takes them.
        self._waiting: set[int] = set()
        self._per_domain: dict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def wake(self) -> None:
        """Something was queued or flushed (call on the loop)."""
        self._wakeup.set()

    async def run(self) -> None:
        renewer = asyncio.create_task(self._renew_leases())
        try:
            await self._run()
        finally:
            renewer.cancel()

    async def _renew_leases(self) -> None:
        """While deliveries run, keep their recipients leased (PostgreSQL: other nodes leave them alone
        until the lease runs out; see store/postgres.py PgQueue)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.lease_renew_s)
            held = [*self._in_flight, *self._waiting]
            if held:
                try:
                    await loop.run_in_executor(None, self.queue.renew_leases, held)
                except Exception as exc:  # the database away: the next round tries again
                    log.warning("%s", kv(event="queue.renew_failed", detail=str(exc)))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_sweep = -SWEEP_INTERVAL_S
        while not self._stopping:
            self._wakeup.clear()
            try:
                if time.monotonic() - last_sweep >= SWEEP_INTERVAL_S:
                    await loop.run_in_executor(None, self._sweep, frozenset(self._in_flight.values()))
                    last_sweep = time.monotonic()
                blocked = await self._dispatch()
                next_due = await loop.run_in_executor(None, self.queue.next_due)
            except Exception as exc:  # the store away (PostgreSQL restarting): deliveries wait, never stop
                log.warning("%s", kv(event="queue.store_failed", detail=str(exc)))
                blocked, next_due = False, None
            if blocked or next_due is None:
                timeout = self.settings.poll_s if not blocked else None
            else:
                timeout = min(max(next_due - self.clock(), 0.05), self.settings.poll_s)
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def run_due(self) -> None:
        """One pass without the loop: send leftover failure notices, deliver what is due now, wait."""
        await asyncio.get_running_loop().run_in_executor(None, self._sweep, frozenset(self._in_flight.values()))
        await self._dispatch()
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def stop(self, grace_s: float) -> None:
        """Stop picking work; give deliveries in progress `grace_s`, then cancel them (a cancelled
        delivery acknowledged nothing: its recipients are tried again after a restart)."""
        self._stopping = True
        self._wakeup.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for task in pending:
                task.cancel()

    async def _dispatch(self) -> bool:
        """Start deliveries for due recipients; True when some had to wait for a free slot."""
        free = self.settings.concurrency - len(self._tasks)
        if free <= 0:
            return True
        loop = asyncio.get_running_loop()
        limit = free * self.settings.messages_per_delivery
        items = await loop.run_in_executor(
            None, self.queue.due_recipients, int(self.clock()), limit, frozenset(self._in_flight)
        )
        by_domain: dict[str, list[QueueItem]] = defaultdict(list)
        for item in items:
            by_domain[item.domain].append(item)
        blocked = False
        waiting: set[int] = set()
        for domain, domain_items in by_domain.items():
            by_message: dict[str, list[QueueItem]] = defaultdict(list)
            for item in domain_items:
                by_message[item.queue_id].append(item)
            messages = list(by_message.values())
            while messages:
                if (
                    len(self._tasks) >= self.settings.concurrency
                    or self._per_domain[domain] >= self.settings.per_domain
                ):
                    blocked = True
                    waiting.update(item.recipient_id for message in messages for item in message)
                    break
                batch = messages[: self.settings.messages_per_delivery]
                messages = messages[self.settings.messages_per_delivery :]
                group = [item for message in batch for item in message]
                self._in_flight.update((i.recipient_id, i.queue_id) for i in group)
                self._per_domain[domain] += 1
                task = asyncio.get_running_loop().create_task(self._deliver(domain, group))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self._waiting = waiting
        return blocked

    async def _deliver(self, domain: str, items: list[QueueItem]) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        undecided = {item.recipient_id: item for item in items}
        writes: list[asyncio.Future[set[str]]] = []

        def record(outcomes: dict[int, Outcome]) -> None:
            """Record outcomes as they arrive, so a crash repeats at most the message in progress."""
            decided = [undecided.pop(rid) for rid in outcomes if rid in undecided]
            if decided:
                writes.append(loop.run_in_executor(None, self._apply, decided, outcomes))

        to_report: set[str] = set()
        try:
            messages = await loop.run_in_executor(None, self._load, items)
            outcomes = await self.deliverer.deliver(domain, messages, record)
            record(outcomes)
            if undecided:  # no outcome at all: the agent broke its contract; try again later
                writes.append(loop.run_in_executor(None, self._apply, list(undecided.values()), {}))
                undecided.clear()
        except Exception:
            log.exception("%s", kv(event="queue.delivery_failed", domain=domain))
            if undecided:  # deferred with backoff, not retried in a tight loop
                writes.append(loop.run_in_executor(None, self._apply, list(undecided.values()), {}))
                undecided.clear()
        finally:
            for done in await asyncio.gather(*writes, return_exceptions=True):
                if isinstance(done, BaseException):
                    log.error("%s", kv(event="queue.record_failed", domain=domain, detail=str(done)))
                else:
                    to_report |= done
            for item in items:
                self._in_flight.pop(item.recipient_id, None)
            self._per_domain[domain] -= 1
            self._wakeup.set()
            log.debug("%s", kv(event="queue.delivery_done", domain=domain, recipients=len(items),
                               ms=round((time.monotonic() - started) * 1000)))  # fmt: skip
        # One failure notice per message: the delivery that ends last (of those running for it) sends it.
        busy = set(self._in_flight.values())
        for queue_id in to_report - busy:
            try:
                await loop.run_in_executor(None, self._report_failures, queue_id)
            except Exception:
                log.exception("%s", kv(event="queue.dsn_failed", id=queue_id))

    def _load(self, items: list[QueueItem]) -> list[JobMessage]:
        by_message: dict[str, list[QueueItem]] = defaultdict(list)
        for item in items:
            by_message[item.queue_id].append(item)
        messages = []
        for queue_id, group in by_message.items():
            first = group[0]
            large = first.size > STREAM_BYTES  # read a piece at a time while it is sent, never whole
            messages.append(
                JobMessage(
                    queue_id=queue_id,
                    sender=first.sender,
                    data=b"" if large else self.mail.read_message(queue_id),
                    recipients=tuple(JobRecipient(i.recipient_id, i.address, i.notify, i.orcpt) for i in group),
                    smtputf8=first.smtputf8,
                    body_8bit=first.body_8bit,
                    ret=first.ret,
                    envid=first.envid,
                    size=first.size if large else 0,
                    open_body=partial(self.mail.open_message, queue_id) if large else None,
                )
            )
        return messages

    # -- outcomes ----------------------------------------------------------------------------------------

    def _apply(self, items: list[QueueItem], outcomes: dict[int, Outcome]) -> set[str]:
        """Record outcomes, then send delay and success notices; returns the entries with failures to
        report. A failure is recorded as unreported and its entry kept until the notice is stored, so a
        crash sends a failure notice at most twice, never zero times; nothing is delivered twice."""
        now = self.clock()
        moment = datetime.fromtimestamp(now, UTC)
        updates: list[RecipientUpdate] = []
        events: list[TraceEvent] = []  # each attempt, kept with its record
        reports: dict[tuple[str, Action], list[RecipientReport]] = defaultdict(list)
        to_report: set[str] = set()
        by_id = {item.recipient_id: item for item in items}
        for recipient_id, item in by_id.items():
            outcome = outcomes.get(recipient_id) or Deferred(replies.NO_DELIVERY_RESULT)
            attempts = item.attempts + 1
            notify = item.notify or DEFAULT_NOTIFY
            if isinstance(outcome, Failed) and outcome.is_nxdomain and attempts < NXDOMAIN_ATTEMPTS:
                # RFC 3463 4.4.4 (unable to route) until the answer is believed.
                outcome = Deferred(outcome.reply, outcome.remote_mta, status_override="4.4.4")
            if isinstance(outcome, Deferred) and now >= item.expires_at:
                # RFC 3463 5.4.7: delivery time expired.
                outcome = Failed(outcome.reply.with_note("(gave up: the message is older than the queue lifetime)"),
                                 outcome.remote_mta, status_override="5.4.7")  # fmt: skip
            log.info("%s", kv(event="queue.result", id=item.queue_id, rcpt=item.address, attempt=attempts,
                              result=type(outcome).__name__.lower(), remote=outcome.remote_mta,
                              reply=outcome.reply.to_line()))  # fmt: skip
            if self.trace is not None:
                events.append(TraceEvent(
                    _TRACED[type(outcome)], now, queue_id=item.queue_id, recipient=item.address,
                    remote=outcome.remote_mta, reply=outcome.reply.to_line(),
                    status=None if isinstance(outcome, Delivered) else outcome.status, attempt=attempts,
                ))  # fmt: skip
            match outcome:
                case Delivered():
                    updates.append(RecipientUpdate(recipient_id, QueueState.DELIVERED, attempts, 0, outcome.reply))
                    # RFC 3461 §6.2.6: handed to an MTA without DSN support, SUCCESS becomes "relayed";
                    # an MTA with DSN got NOTIFY along and reports delivery itself.
                    if "SUCCESS" in notify and not outcome.remote_dsn:
                        report = self._report(item, Action.RELAYED, "2.0.0", outcome.reply.to_line(),
                                              outcome.remote_mta, moment)  # fmt: skip
                        reports[(item.queue_id, Action.RELAYED)].append(report)
                case Failed():
                    wanted = bool(item.sender) and "NEVER" not in notify and "FAILURE" in notify
                    updates.append(
                        RecipientUpdate(recipient_id, QueueState.FAILED, attempts, 0, outcome.reply, outcome.status,
                                        outcome.remote_mta, needs_report=wanted)
                    )  # fmt: skip
                    if wanted:
                        to_report.add(item.queue_id)
                case Deferred():
                    retry_at = next_attempt_at(now, attempts, self.settings.retry_first_s, self.settings.retry_max_s,
                                               item.expires_at)  # fmt: skip
                    updates.append(RecipientUpdate(recipient_id, QueueState.DEFERRED, attempts, math.ceil(retry_at),
                                                   outcome.reply, outcome.status, outcome.remote_mta))  # fmt: skip
                    late = now - item.created_at >= self.settings.delay_notice_s
                    if late and not item.delay_notified and "DELAY" in notify and "NEVER" not in notify:
                        report = self._report(item, Action.DELAYED, outcome.status, outcome.reply.to_line(),
                                              outcome.remote_mta, moment)  # fmt: skip
                        reports[(item.queue_id, Action.DELAYED)].append(report)
        if events:
            self.queue.update_recipients(updates, events)
        else:
            self.queue.update_recipients(updates)
        for update in updates:  # counted once recorded: a crash before this repeats the attempt
            metrics.delivered(_OUTCOMES[update.state])
        first_items = {item.queue_id: item for item in items}
        for (queue_id, action), recipient_reports in reports.items():
            item = first_items[queue_id]
            if not item.sender:
                continue  # never a DSN for a message with the null sender: no bounce loops
            if action is Action.DELAYED and not self.queue.mark_delay_notified(queue_id):
                continue  # another delivery of this message already sent its delay notice
            self._send_dsn(item.queue_id, item.sender, item.created_at, item.ret, item.envid, item.smtputf8,
                           recipient_reports, moment)  # fmt: skip
        return to_report

    def _report_failures(self, queue_id: str) -> None:
        """Send one failure notice for every failed, unreported recipient of an entry; then mark them."""
        unreported = self.queue.unreported_failures(queue_id)
        if unreported is None:
            return
        reports = [
            RecipientReport(
                r.address, Action.FAILED, r.status, r.reply or None, r.remote_mta, r.orcpt,
                datetime.fromtimestamp(r.failed_at, UTC),
            )
            for r in unreported.recipients
        ]  # fmt: skip
        if self._send_dsn(queue_id, unreported.sender, unreported.created_at, unreported.ret, unreported.envid,
                          unreported.smtputf8, reports, datetime.fromtimestamp(self.clock(), UTC)):  # fmt: skip
            self.queue.mark_reported([r.recipient_id for r in unreported.recipients])

    def _sweep(self, busy: frozenset[str]) -> None:
        """Failure notices left unsent (a crash, a full disk): send them now. `busy` (entries being
        delivered) is taken on the loop: the in-flight map must not be read from this thread."""
        for queue_id in self.queue.entries_with_unreported_failures():
            if queue_id not in busy:
                try:
                    self._report_failures(queue_id)
                except Exception:
                    log.exception("%s", kv(event="queue.dsn_failed", id=queue_id))

    def _report(self, item: QueueItem, action: Action, status: str, reply: str, remote: str | None,
                moment: datetime) -> RecipientReport:  # fmt: skip
        until = datetime.fromtimestamp(item.expires_at, UTC) if action is Action.DELAYED else None
        return RecipientReport(item.address, action, status, reply or None, remote, item.orcpt, moment, until)

    def _original(self, queue_id: str, ret: str | None) -> tuple[bytes, str | None]:
        """What a DSN returns of the message, and the RET that says so: a message over DSN_RETURN_LIMIT
        comes back as its header only, whatever RET asked (RFC 3464 §2: "or portion thereof"), so a
        notice never holds a large message in memory."""
        reader = self.mail.open_message(queue_id)
        try:
            if reader.size <= DSN_RETURN_LIMIT and ret != "HDRS":
                return reader.read(0, reader.size), ret
            start = reader.read(0, DSN_HEADER_LIMIT)
            end = start.find(b"\r\n\r\n")
            return (start[: end + 4] if end >= 0 else start), "HDRS"
        finally:
            reader.close()

    def _send_dsn(self, queue_id: str, sender: str, created_at: int, ret: str | None, envid: str | None,
                  smtputf8: bool, reports: list[RecipientReport], moment: datetime) -> bool:  # fmt: skip
        """Build and store a DSN to `sender`; False (logged) when it could not be stored."""
        try:
            original, ret = self._original(queue_id, ret)
        except Exception:
            original = b""
        dsn = build_dsn(
            hostname=self.settings.hostname,
            sender=sender,
            queue_id=queue_id,
            arrival=datetime.fromtimestamp(created_at, UTC),
            reports=reports,
            original=original,
            ret=ret,
            envid=envid,
            smtputf8=smtputf8,
            now=moment,
        )
        try:
            dsn_id = self.bouncer.send(sender, dsn, smtputf8=smtputf8)
        except Exception:
            log.exception("%s", kv(event="queue.dsn_failed", id=queue_id, to=sender))
            return False
        log.info("%s", kv(event="queue.dsn", id=queue_id, to=sender, action=reports[0].action,
                          recipients=len(reports), dsn=dsn_id))  # fmt: skip
        metrics.dsn_sent(reports[0].action)
        if self.trace is not None:
            about = ", ".join(r.address for r in reports)
            try:  # a notice is rare: a write of its own (not synced), after the notice is stored
                self.trace.record([TraceEvent(TraceKind.DSN, self.clock(), queue_id=queue_id, recipient=sender,
                                              note=f"{reports[0].action} notice about {about}",
                                              related=dsn_id)])  # fmt: skip
            except Exception as exc:
                log.warning("%s", kv(event="trace.record_failed", id=queue_id, detail=str(exc)))
        return True

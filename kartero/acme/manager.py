"""The renewal task: at start and then at each due time (at least hourly) it looks at the stored
certificate and orders a new one when there is none, when it lacks a configured name, or when it is due
for renewal (schedule.py); a failure is logged and retried with backoff. A new certificate is saved
(storage.py) and handed to `install`, which puts it in front of every TLS listener.

The challenge type: http-01 when the server has an http listener (the CA connects to port 80 of each
name, which must reach it), else tls-alpn-01 on the https listener (port 443). One order runs at a time,
in a daemon thread of its own (`in_daemon_thread`); the loop only waits for it. In a cluster
(shared.py) every node looks each SYNC_S: it copies a certificate another node ordered, and orders only
while it holds the lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from kartero.acme.challenges import Challenges
from kartero.acme.order import HTTP01, TLS_ALPN01, Issued, OrderError, OrderSettings, order_certificate
from kartero.acme.schedule import Validity, backoff_s, next_order_at, sleep_s
from kartero.acme.shared import LEAD_S, SYNC_S
from kartero.acme.storage import AcmeStorage, State
from kartero.config import AcmeConfig
from kartero.log import kv

log = logging.getLogger("kartero.acme")
T = TypeVar("T")
# The shortest sleep between two looks, whatever a certificate's dates say: a CA that issues certificates
# already due for renewal must not make this a loop of orders.
MIN_SLEEP_S = 5.0


def challenge_type(listeners: set[str]) -> str:
    """http-01 when an http listener exists, else tls-alpn-01 (which needs https)."""
    return HTTP01 if "http" in listeners else TLS_ALPN01


class Renewal:
    """The background task for one `[acme]` section. `install()` is called on the loop, after the new
    certificate is on disk (AcmeFiles.cert/.key)."""

    def __init__(self, config: AcmeConfig, files: AcmeStorage, challenges: Challenges, listeners: set[str],
                 install: Callable[[], None], clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.settings = OrderSettings(config.directory, config.email, config.names, config.ca_file,
                                      challenge_type(listeners))  # fmt: skip
        self.files = files
        self.challenges = challenges
        self.install = install
        self.clock = clock
        self.wakeup = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: look, order when due, sleep until the next due time (or `wakeup`). A
        shutdown does not wait for an order in flight: its thread is left to end with the process."""
        stopping = asyncio.ensure_future(stop.wait())
        looking: asyncio.Future[float] | None = None
        try:
            while not stop.is_set():
                self.wakeup.clear()
                looking = asyncio.ensure_future(self._look())
                await asyncio.wait([looking, stopping], return_when=asyncio.FIRST_COMPLETED)
                if not looking.done():
                    return
                waking = asyncio.ensure_future(self.wakeup.wait())
                try:
                    await asyncio.wait([stopping, waking], timeout=looking.result(),
                                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                finally:
                    waking.cancel()
        finally:
            stopping.cancel()
            if looking is not None and not looking.done():
                looking.cancel()
                await asyncio.wait([looking])

    async def _look(self) -> float:
        try:
            return max(MIN_SLEEP_S, await self.step())
        except Exception:  # a bug: logged with its traceback, tried again later
            log.exception("%s", kv(event="acme.failed"))
            return 3600.0

    async def step(self) -> float:
        """One look: in a cluster, first take a certificate another node ordered and renew the lead;
        then order if due (and, in a cluster, this node leads); returns how long to sleep until the next
        look."""
        files = self.files
        if files.is_shared and await asyncio.to_thread(files.sync):
            self.install()
            log.info("%s", kv(event="acme.certificate_synced"))
        is_leader = not files.is_shared or await asyncio.to_thread(files.may_order, self.clock(), LEAD_S)
        state, validity = await asyncio.to_thread(lambda: (files.state(), files.certificate()))
        names = frozenset(self.settings.names)
        due = next_order_at(validity, names, state.failures, state.last_failure_at)
        wait = sleep_s(due, self.clock())
        if files.is_shared:
            wait = min(wait, SYNC_S)
            if wait == 0 and not is_leader:
                return SYNC_S  # another node orders; its certificate is copied at a later look
        if wait > 0:
            return wait
        reason = "none" if validity is None else "names" if not names <= validity.names else "due"
        log.info("%s", kv(event="acme.ordering", names=",".join(self.settings.names),
                          challenge=self.settings.challenge, reason=reason))  # fmt: skip
        try:
            issued = await in_daemon_thread(order_certificate, self.settings, files, self.challenges)
            validity = await asyncio.to_thread(self._save, issued)
        except Exception as exc:  # OrderError; else failed I/O (the data folder, the database): backoff too
            if not isinstance(exc, OrderError):
                log.warning("%s", kv(event="acme.order_error"), exc_info=True)
            failures = state.failures + 1
            now = self.clock()
            failed = replace(state, failures=failures, last_failure_at=now, last_error=str(exc),
                             challenge=self.settings.challenge)  # fmt: skip
            await asyncio.to_thread(files.save_state, failed)
            retry_s = backoff_s(failures)
            log.warning("%s", kv(event="acme.order_failed", failures=failures, retry_in_s=int(retry_s),
                                 detail=str(exc)))  # fmt: skip
            return sleep_s(now + retry_s, now)
        now = self.clock()
        self.install()
        log.info("%s", kv(event="acme.certificate_installed", names=",".join(sorted(validity.names)),
                          expires=int(validity.not_after)))  # fmt: skip
        if next_order_at(validity, names, 0, 0.0) <= now:
            # Due as it arrives (this machine's clock runs weeks ahead, or the CA left a name out): ordering
            # again at once would repeat until the CA's rate limit locks the names out for days. It is
            # served (newer than what was), and counted as a failure, so the next order waits the backoff.
            failures = state.failures + 1
            detail = ("the CA's new certificate is already due for renewal (a name missing, or this "
                      "machine's clock is wrong)")  # fmt: skip
            await asyncio.to_thread(files.save_state, State(failures, now, detail, now, self.settings.challenge))
            log.warning("%s", kv(event="acme.certificate_already_due", failures=failures,
                                 retry_in_s=int(backoff_s(failures)), expires=int(validity.not_after)))  # fmt: skip
            return sleep_s(now + backoff_s(failures), now)
        success = State(last_success_at=now, challenge=self.settings.challenge)
        await asyncio.to_thread(files.save_state, success)
        wait = sleep_s(next_order_at(validity, names, 0, 0.0), self.clock())
        return min(wait, SYNC_S) if files.is_shared else wait

    def _save(self, issued: Issued) -> Validity:
        """Blocking: the new pair on disk, read back as the listeners will load it."""
        self.files.save_certificate(issued.chain_pem, issued.key_pem)
        validity = self.files.certificate()
        if validity is None:
            raise OrderError("the CA's certificate does not parse or does not match its key")
        return validity


async def in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a daemon thread of its own: an order may poll the CA for ORDER_DEADLINE_S, and the
    worker pool's threads are joined at exit, so a shutdown would wait for it. Cancelled (shutdown), the
    caller goes on and the thread ends with the process."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result: T | None = fn(*args)
            error: BaseException | None = None
        except BaseException as exc:  # handed to the awaiting task, which decides
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown): nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="kartero-acme", daemon=True).start()
    return await done

"""A loop-lag watchdog: tells when something held the event loop (and so every session) too long.

One process serves everyone (STYLE.md §5b): a C call or a Python loop that runs for a second on the
event loop stalls every connection. The loop stamps the time in a callback every TICK_S; a daemon
thread looks every CHECK_S, and when the next stamp is more than `threshold_s` late it logs
`loop.blocked` with the stack of the loop's thread, taken while it is still blocked
(`sys._current_frames()`), so the line names the culprit. When the loop runs again it logs
`loop.unblocked` with the whole delay. Both cost nothing noticeable while the loop is healthy: a
callback every 100 ms and a thread that wakes every 50 ms. Each tick's lateness goes into the
histogram `kartero_event_loop_lag_seconds`, each stall reported into `kartero_event_loop_blocked_total`.

A C call that holds the GIL the whole time (a regex, a decompressor) keeps the watchdog thread out as
well: then the stack is taken at the first moment the GIL is released, just after the call returns,
and still shows the function that made it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from types import FrameType

from kartero import metrics
from kartero.log import kv

log = logging.getLogger("kartero.loop")

BLOCKED_THRESHOLD_S = 0.25
TICK_S = 0.1
CHECK_S = 0.05
MAX_FRAMES = 30


class LoopWatchdog:
    def __init__(self, loop: asyncio.AbstractEventLoop, threshold_s: float = BLOCKED_THRESHOLD_S) -> None:
        self.loop = loop
        self.threshold_s = threshold_s
        self._loop_thread = 0
        self._due = 0.0  # when the next tick should run (time.monotonic); written by the loop only
        self._reported_due = -1.0  # the `_due` of the stall last reported; written by the thread only
        self._handle: asyncio.TimerHandle | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching; call on the loop's thread."""
        self._loop_thread = threading.get_ident()
        self._tick()
        self._thread = threading.Thread(target=self._watch, name="kartero-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join(1.0)

    def _tick(self) -> None:
        now = time.monotonic()
        if self._due:
            metrics.LOOP_LAG.observe(max(0.0, now - self._due))
        if self._reported_due == self._due:
            log.warning("%s", kv(event="loop.unblocked", ms=round((now - self._due) * 1000)))
        self._due = now + TICK_S
        self._handle = self.loop.call_later(TICK_S, self._tick)

    def _watch(self) -> None:
        while not self._stopped.wait(CHECK_S):
            due = self._due
            late = time.monotonic() - due
            if late <= self.threshold_s or due == self._reported_due:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            self._reported_due = due
            metrics.LOOP_BLOCKED.inc()
            log.warning("%s", kv(event="loop.blocked", ms=round(late * 1000), stack=format_stack(frame)))


def format_stack(frame: FrameType | None) -> str:
    """The stack as one log field, innermost call first: `path:line function < caller < ...`."""
    if frame is None:
        return "?"
    frames = traceback.extract_stack(frame)[-MAX_FRAMES:]
    return " < ".join(f"{_short(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames))


def _short(path: str) -> str:
    """kartero/imap/commands/mailbox.py rather than the whole install path."""
    for marker in ("/kartero/", "/site-packages/", "/lib/python"):
        cut = path.rfind(marker)
        if cut >= 0:
            return path[cut + 1 :]
    return path

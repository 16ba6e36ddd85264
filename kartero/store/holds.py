"""Expunged messages held for sessions (RFC 2180 §4.1.1), in memory: backend-neutral.

A session that has not yet been told of an expunge may still FETCH the message, so the store keeps a
tombstone's body while any session holding the mailbox has reported changes only up to a MODSEQ below
the expunge. This module keeps, per mailbox, the MODSEQ each holding session has reported up to, and
tells the store (`on_release`) when a hold moves on a mailbox whose tombstones may keep bodies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class ExpungeHolds:
    """In memory: for each mailbox, the MODSEQ each session holding it has reported up to. A tombstone
    whose MODSEQ is above the lowest of them may still be fetched by that session; the rest may go."""

    def __init__(self, on_release: Callable[[int], None]) -> None:
        self._on_release = on_release
        self._lock = threading.Lock()
        self._holds: dict[int, dict[int, int]] = {}  # mailbox id -> hold id -> modseq
        self._next_id = 0
        self._pending: set[int] = set()  # mailboxes whose tombstones the committer should look at
        self._tombstoned: set[int] = set()  # mailboxes that may have tombstones keeping a body

    def hold(self, mailbox_id: int, modseq: int) -> Hold:
        with self._lock:
            self._next_id += 1
            self._holds.setdefault(mailbox_id, {})[self._next_id] = modseq
            return Hold(self, mailbox_id, self._next_id)

    def lowest(self, mailbox_id: int) -> int | None:
        with self._lock:
            holds = self._holds.get(mailbox_id)
            return min(holds.values()) if holds else None

    def expunged(self, mailbox_id: int) -> None:
        """Tombstones keeping bodies were written for the mailbox (inside that write transaction)."""
        with self._lock:
            self._tombstoned.add(mailbox_id)

    def none_kept(self, mailbox_id: int) -> None:
        """No tombstone of the mailbox keeps a body (found inside a write transaction)."""
        with self._lock:
            self._tombstoned.discard(mailbox_id)

    def _set(self, mailbox_id: int, hold_id: int, modseq: int | None) -> None:
        with self._lock:
            holds = self._holds.get(mailbox_id, {})
            if hold_id not in holds or holds[hold_id] == modseq:
                return
            if modseq is None:
                del holds[hold_id]
                if not holds:
                    del self._holds[mailbox_id]
            else:
                holds[hold_id] = modseq
            if mailbox_id not in self._tombstoned:
                return  # the common case: nothing to let go, no work for the committer
        self._on_release(mailbox_id)

    def want_release(self, mailbox_id: int) -> bool:
        """Mark the mailbox for the committer; True when it was not marked yet (queue one request)."""
        with self._lock:
            if mailbox_id in self._pending:
                return False
            self._pending.add(mailbox_id)
            return True

    def take_released(self) -> frozenset[int]:
        with self._lock:
            taken, self._pending = frozenset(self._pending), set()
            return taken


class Hold:
    """One session's ExpungeHold (see kartero.store.interface)."""

    def __init__(self, holds: ExpungeHolds, mailbox_id: int, hold_id: int) -> None:
        self._holds = holds
        self._mailbox_id = mailbox_id
        self._id = hold_id

    def advance(self, modseq: int) -> None:
        self._holds._set(self._mailbox_id, self._id, modseq)

    def release(self) -> None:
        self._holds._set(self._mailbox_id, self._id, None)


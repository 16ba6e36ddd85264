"""When a session has been slow for too long: the clock arithmetic of every adapter, without I/O.

Three limits, each a point in time the adapter arms one timer for (the earliest):
- idle: no input and no reply for the protocol's inactivity timeout (RFC 5321 §4.5.3.2, RFC 9051 §5.4,
  RFC 1939 §3), counted from the last input or from our last reply;
- command: a command (its line, or a message, a literal, a SASL response) must be complete within
  `command_s` of the first byte that arrived after our last reply. Every `BYTES_PER_SECOND` octets
  received meanwhile add a second, so a large upload at any real speed passes while a slowloris
  trickle (a byte now and then, which used to restart the idle timer each time) does not;
- login: a session of a service with logins (submission, IMAP, POP3) must have logged in within
  `login_s` of connecting, however busy it keeps the line.

Time the session spends waiting for us (a decision, a store write, a login delay) is not the client's:
the adapter does not act on an expiry while it is busy, and its reply afterwards starts a new command.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# The slowest upload a command deadline still accepts: 1 KiB/s, far below any real link.
BYTES_PER_SECOND = 1024.0


class Deadline(StrEnum):
    IDLE = "idle"
    COMMAND = "command"
    LOGIN = "login"


@dataclass(frozen=True, slots=True)
class DeadlineSettings:
    command_s: float = 30.0
    login_s: float | None = 60.0  # None: the service has no login (the MX)

    def __post_init__(self) -> None:
        if self.command_s <= 0 or (self.login_s is not None and self.login_s <= 0):
            raise ValueError("deadlines must be positive")


class Deadlines:
    """The deadlines of one session; every method takes the current time (the loop's clock)."""

    def __init__(self, settings: DeadlineSettings, now: float) -> None:
        self.settings = settings
        self._connected_at = now
        self._is_logged_in = settings.login_s is None
        self._active_at = now  # last input or reply: the idle timeout runs from here
        self._command_at: float | None = None  # first byte since our last reply
        self._command_bytes = 0

    def received(self, size: int, now: float) -> None:
        """`size` octets arrived from the peer."""
        self._active_at = now
        if self._command_at is None:
            self._command_at = now
            self._command_bytes = 0
        self._command_bytes += size

    def replied(self, now: float) -> None:
        """We answered (or finished a decision): whatever the peer sends next is a new command."""
        self._active_at = now
        self._command_at = None

    def logged_in(self) -> None:
        self._is_logged_in = True

    @property
    def is_command_started(self) -> bool:
        return self._command_at is not None

    def next(self, idle_s: float) -> tuple[float, Deadline]:
        """The earliest deadline and which it is; `idle_s` is the protocol's inactivity timeout now."""
        at, which = self._active_at + idle_s, Deadline.IDLE
        if self._command_at is not None:
            command_at = self._command_at + self.settings.command_s + self._command_bytes / BYTES_PER_SECOND
            if command_at < at:
                at, which = command_at, Deadline.COMMAND
        if not self._is_logged_in and self.settings.login_s is not None:
            login_at = self._connected_at + self.settings.login_s
            if login_at < at:
                at, which = login_at, Deadline.LOGIN
        return at, which

    def expired(self, idle_s: float, now: float) -> Deadline | None:
        at, which = self.next(idle_s)
        return which if now >= at else None

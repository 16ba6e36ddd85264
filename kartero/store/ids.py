"""Message ids: unique, time-ordered, safe in file names, log lines and SMTP replies."""

from __future__ import annotations

import secrets
import time


def new_mailbox_objectid() -> str:
    """RFC 8474 MAILBOXID: "F" and 96 random bits in hex, unique (the store's index checks) and never reused."""
    return "F" + secrets.token_hex(12)


def new_message_id() -> str:
    """Microseconds since the epoch (14 hex digits) + 40 random bits: 24 lower-case hex characters."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"

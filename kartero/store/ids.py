"""Message ids: unique, time-ordered, safe in file names, log lines and SMTP replies."""

from __future__ import annotations

import os
import random
import secrets
import time

# The random part of message ids, from a generator seeded once per process: `secrets` reads the kernel's
# generator per call, a system call that lets go of the GIL on every message, and taking it back from the
# index and committer threads cost the event loop up to 0.5 ms a message (issue 10 profile). The ids need
# to be unique (time + 40 bits, a seed per process), not secret: they protect nothing.
_random = random.Random(os.urandom(16))


def new_mailbox_objectid() -> str:
    """RFC 8474 MAILBOXID: "F" and 96 random bits in hex, unique (the store's index checks) and never reused."""
    return "F" + secrets.token_hex(12)


def new_message_id() -> str:
    """Microseconds since the epoch (14 hex digits) + 40 random bits: 24 lower-case hex characters."""
    return f"{time.time_ns() // 1000:014x}{_random.getrandbits(40):010x}"

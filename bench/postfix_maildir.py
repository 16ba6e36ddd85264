"""Postfix as a peer for bench/smtp_accept.py: a private instance that queues (with its fsyncs) and then
delivers into a Maildir through virtual(8).

The instance is tests/integration/postfix.py's `PostfixInstance` (own config, queue and data folders under
`root`, master.cf listening on one loopback address and port), with only the settings a final destination
needs. virtual(8) rather than local(8): it needs no Unix account or home folder (one inline map entry
with a trailing slash makes the mailbox a Maildir) and writes as a fixed uid, so the bench can run as
root without touching /etc/passwd; local(8) refuses to deliver as root and would need a real user.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.integration.postfix import PostfixInstance, is_available

NOBODY = 65534  # virtual(8) delivers as this uid/gid; the Maildir folder belongs to it

__all__ = ["PostfixMaildir", "is_available", "running_postfix"]


@dataclass
class PostfixMaildir:
    instance: PostfixInstance
    maildir: Path

    def delivered(self) -> int:
        """Messages virtual(8) has finished: it writes into tmp/ and renames into new/ when done."""
        try:
            return sum(1 for _ in os.scandir(self.maildir / "new"))
        except FileNotFoundError:
            return 0

    def wait_delivered(self, count: int, timeout_s: float) -> float | None:
        """Seconds until `count` messages are in new/ (polled every 10 ms), None on timeout."""
        started = time.perf_counter()
        while self.delivered() < count:
            if time.perf_counter() - started > timeout_s:
                return None
            time.sleep(0.01)
        return time.perf_counter() - started

    def master_pid(self) -> int:
        return int((self.instance.queue_dir / "pid" / "master.pid").read_text().split()[0])

    def newest_message(self) -> bytes:
        files = sorted((self.maildir / "new").iterdir(), key=lambda p: p.stat().st_mtime)
        return files[-1].read_bytes()


@contextmanager
def running_postfix(root: Path, host: str, port: int, rcpt: str, *, message_size: int,
                    milter: str | None = None) -> Iterator[PostfixMaildir]:  # fmt: skip
    """Start a private Postfix that accepts mail for `rcpt` only; stop it on leaving, whatever happened.
    `milter`: "host:port" of a milter every message passes through (smtpd_milters)."""
    local, _, domain = rcpt.rpartition("@")
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # Postfix's daemons (user postfix) and virtual(8) (uid 65534) must reach their folders
    vmail = root / "vmail"
    vmail.mkdir()
    os.chown(vmail, NOBODY, NOBODY)
    instance = PostfixInstance(root / "postfix", host, port, main_cf={
        "myhostname": "postfix.bench",
        "virtual_mailbox_domains": domain,
        "virtual_mailbox_base": str(vmail),
        "virtual_mailbox_maps": f"inline:{{ {rcpt}={local}/ }}",  # trailing slash: Maildir, not mbox
        "virtual_uid_maps": f"static:{NOBODY}",
        "virtual_gid_maps": f"static:{NOBODY}",
        "message_size_limit": str(max(10_240_000, 2 * message_size)),
        "virtual_mailbox_limit": "0",  # no size cap on the Maildir
        **({"smtpd_milters": f"inet:{milter}", "milter_default_action": "tempfail"} if milter else {}),
    })  # fmt: skip
    try:
        instance.start()
        yield PostfixMaildir(instance, vmail / local)
    finally:
        instance.stop()

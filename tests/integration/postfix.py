"""A private Postfix instance on a loopback address, for interoperability tests (needs root)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
virtual   unix  -       n       n       -       -       virtual
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def is_available() -> str | None:
    """None when a private Postfix can run here, else the reason it cannot."""
    if shutil.which("postfix") is None:
        return "postfix is not installed (Debian package postfix; .ci/run installs it)"
    if os.geteuid() != 0:
        return "a Postfix instance must be started as root"
    return None


class PostfixInstance:
    """Postfix with its own config, queue and log folders, listening on `host:port`."""

    def __init__(self, root: Path, host: str, port: int, *, main_cf: dict[str, str]) -> None:
        self.root = root
        self.host = host
        self.port = port
        self.config_dir = root / "etc"
        self.queue_dir = root / "spool"
        self.data_dir = root / "lib"
        self.maillog = root / "maillog"
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Postfix daemons drop to the postfix user, which must own its data folder and reach the others.
        pw = pwd.getpwnam("postfix")
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        for folder in (root, *root.parents):
            if folder == Path("/"):
                break
            if not os.stat(folder).st_mode & 0o001:
                raise AssertionError(f"{folder} is not traversable by the postfix user; use a 0755 folder")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(root),
            "inet_interfaces": "loopback-only",  # must name a real interface; master.cf binds `host`
            "inet_protocols": "ipv4",
            "myhostname": "postfix.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "smtputf8_enable": "yes",
            "biff": "no",
            "smtp_tls_security_level": "may",
            "smtp_address_preference": "ipv4",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "master_service_disable": "",
            **main_cf,
        }
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(listen=f"{host}:{port}"))

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.config_dir), *args], capture_output=True, text=True, timeout=60
        )

    def start(self) -> None:
        result = self._postfix("start")
        if result.returncode != 0:
            raise AssertionError(f"postfix start failed: {result.stdout}{result.stderr}{self.log()}")
        deadline = time.monotonic() + 20
        while not self._is_listening():
            if time.monotonic() > deadline:
                raise AssertionError(f"postfix not listening on {self.host}:{self.port}: {self.log()}")
            time.sleep(0.1)

    def _is_listening(self) -> bool:
        import socket

        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def flush(self) -> None:
        self._postfix("flush")

    def stop(self) -> None:
        self._postfix("stop")

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else "(no maillog)"

"""A private SpamAssassin for tests: Debian's spamd on its own loopback port with network tests off
(`--local`), and spamass-milter in front of it on another port. Stopped at teardown; never touches a
system instance. spamd loads its rules for several seconds: one instance per test module."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return shutil.which("spamd") is not None and shutil.which("spamass-milter") is not None


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open: {log.read_text(errors='replace')[-2000:]}")


class PrivateSpamAssassin:
    """spamd, and spamass-milters in front of it (`milter()`: the port `[[milter]] address` points at)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kartero-sa-"))
        os.chmod(self.root, 0o755)
        self.spamd_port = _free_port()
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> PrivateSpamAssassin:
        spamd_log = self.root / "spamd.log"
        user = ["--username=nobody"] if os.geteuid() == 0 else []
        spamd = subprocess.Popen(
            ["spamd", f"--listen=127.0.0.1:{self.spamd_port}", "--allowed-ips=127.0.0.1", "--local",
             "--nouser-config", f"--pidfile={self.root / 'spamd.pid'}", "--max-children=2", "--syslog=stderr",
             *user],
            stdout=spamd_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._processes.append(spamd)
        _wait_port(self.spamd_port, spamd, spamd_log)
        return self

    def milter(self, reject_score: int | None = None) -> int:
        """Start a spamass-milter in front of spamd; its port. `reject_score`: it refuses messages scoring
        at least this (its `-r`); None: it marks them only (X-Spam-Flag: YES)."""
        port = _free_port()
        log = self.root / f"milter-{port}.log"
        reject = ["-r", str(reject_score)] if reject_score is not None else []
        milter = subprocess.Popen(
            ["spamass-milter", "-p", f"inet:{port}@127.0.0.1", *reject, "--", "-d", "127.0.0.1", "-p",
             str(self.spamd_port)],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._processes.append(milter)
        _wait_port(port, milter, log)
        return port

    def stop(self) -> None:
        for process in reversed(self._processes):
            # Nothing of theirs needs keeping (a temporary folder): SIGKILL, not spamd's seconds-long
            # graceful stop; each runs in a process group of its own, children included.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

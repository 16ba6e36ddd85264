"""How admin commands nudge a running server: `data/kartero.pid` and SIGUSR1 ("look at the queue and the
maildrop now"). Only a nudge: without it the server still sees the change at its next poll."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

PID_FILE = "kartero.pid"


def write_pid(data_dir: Path) -> None:
    (data_dir / PID_FILE).write_text(f"{os.getpid()}\n")


def remove_pid(data_dir: Path) -> None:
    path = data_dir / PID_FILE
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


def server_pid(data_dir: Path) -> int | None:
    """The pid of the server running on `data_dir`, if one runs. A pid file left by a crash may name an
    unrelated process now, so the process must be a kartero one (Linux /proc)."""
    try:
        pid = int((data_dir / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"kartero" in cmdline and b"serve" in cmdline else None


def nudge_server(data_dir: Path) -> bool:
    """Send SIGUSR1 to the server of `data_dir` if one runs; True when it was sent."""
    pid = server_pid(data_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return False
    return True

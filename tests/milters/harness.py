"""Starting the test milter (tests/milters/testmilter.py) as a subprocess of Debian's system Python,
which has python3-milter (pymilter); the test suite's own Python need not have it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).with_name("testmilter.py")


def is_available() -> str | None:
    """None when the test milter can run here, else why not."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} is missing"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import Milter"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return "python3-milter is not installed (Debian package python3-milter; .ci/run installs it)"
    return None


class TestMilter:
    """The test milter listening on 127.0.0.1:`port` (or on the unix socket `unix_path`), logging what it
    saw per message to `log_path`. A context manager: stopped (and waited for) on exit."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path, port: int = 0, unix_path: Path | None = None) -> None:
        self.port = port or _free_port()
        self.unix_path = unix_path
        self.log_path = folder / "milter.jsonl"
        self.stderr_path = folder / "milter.stderr"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """As Kartero's [[milter]] address takes it."""
        return f"unix:{self.unix_path}" if self.unix_path else f"127.0.0.1:{self.port}"

    @property
    def postfix_address(self) -> str:
        """As Postfix's smtpd_milters takes it."""
        return f"unix:{self.unix_path}" if self.unix_path else f"inet:127.0.0.1:{self.port}"

    def start(self) -> TestMilter:
        spec = f"unix:{self.unix_path}" if self.unix_path else f"inet:{self.port}@127.0.0.1"
        with self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen([SYSTEM_PYTHON, str(SCRIPT), spec, str(self.log_path)],
                                            stdout=err, stderr=err)  # fmt: skip
        deadline = time.monotonic() + 20
        while not self._is_listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"test milter did not start: {self.stderr_path.read_text(errors='replace')}")
            time.sleep(0.05)
        return self

    def _is_listening(self) -> bool:
        try:
            if self.unix_path:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(1)
                    sock.connect(str(self.unix_path))
            else:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def seen(self) -> list[dict[str, object]]:
        """What the milter logged, one record per message that reached its end-of-message."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def stop(self) -> None:
        # SIGKILL: libmilter's graceful stop waits ~5 s for its threads, and the milter keeps nothing (its
        # log is written and closed per message).
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> TestMilter:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

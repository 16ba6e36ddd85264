"""Memory of `kartero import` (issue 15): its peak RSS for an mbox file of a given size, written here as
it is generated (messages of 2-200 KB, some with `>From ` lines, one of 30 MB per 500 MB), then imported
into a fresh embedded store by a real `kartero import`. Flat memory means the same peak for 100 MB and
for 1 GB:

    python bench/import_memory.py --size-mb 100 --size-mb 1000

Prints per size: messages, seconds, MB/s, the import's peak RSS (ru_maxrss of the child) and a rerun's
(which stores nothing).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.harness import KarteroServer  # noqa: E402

LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt.\n"


def write_mbox(path: Path, size_bytes: int, seed: int = 15) -> int:
    """An mbox of about `size_bytes`, written in pieces; returns the number of messages."""
    rng = random.Random(seed)
    count = written = 0
    big_every = 500 * 1024 * 1024
    next_big = big_every // 2
    with open(path, "wb") as out:
        while written < size_bytes:
            lines = 30_000_000 // len(LINE) if written >= next_big else rng.randint(20, 2000)
            if written >= next_big:
                next_big += big_every
            header = (f"From sender{count}@example.org Sun Nov 29 10:00:00 2026\nFrom: sender{count}@example.org\n"
                      f"Subject: message {count}\nMessage-ID: <{count}@bench.example>\n"
                      f"Status: {'RO' if count % 3 else 'O'}\n\n").encode()  # fmt: skip
            out.write(header)
            for start in range(0, lines, 1000):  # the large one in pieces: the bench stays small too
                out.write(LINE * min(1000, lines - start))
            out.write((b">From a quoted line\n" if count % 7 == 0 else b"") + b"\n")
            written = out.tell()
            count += 1
    return count


# Runs the CLI in a process that reports its own peak RSS (VmHWM) as it exits: the rusage of a child
# would count the parent's pages too (Linux keeps the peak across the exec of a vforked child).
_MEASURED = """
import atexit, sys
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("peak_kib " + line.split()[1] + "\\n")
atexit.register(report)
from kartero.cli import main
main(sys.argv[1:], prog_name="kartero")
"""


def run_import(config: Path, mbox: Path) -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB of the import process, its summary line)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _MEASURED, "-c", str(config), "import", "bob@example.test",
                           str(mbox)], capture_output=True, text=True, check=True)  # fmt: skip
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("peak_kib "))
    return time.monotonic() - started, peak, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, action="append", help="mbox size (repeatable); default 100 and 1000")
    args = parser.parse_args()
    for size in args.size_mb or [100, 1000]:
        measure(size)


def measure(size: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kartero-import-bench-") as tmp:
        server = KarteroServer(Path(tmp) / "server", tls=False)
        server.add_user("bob@example.test")
        mbox = Path(tmp) / "big.mbox"
        messages = write_mbox(mbox, size * 1024 * 1024)
        mb = mbox.stat().st_size / 1024 / 1024
        seconds, peak_kib, summary = run_import(server.config, mbox)
        again_s, again_kib, again = run_import(server.config, mbox)
        print(f"{mb:.0f} MB mbox, {messages} messages: import {seconds:.1f} s ({mb / seconds:.1f} MB/s), "
              f"peak RSS {peak_kib / 1024:.1f} MB ({summary}); rerun {again_s:.1f} s, peak RSS "
              f"{again_kib / 1024:.1f} MB ({again})")  # fmt: skip


if __name__ == "__main__":
    main()

"""Memory per message: how much a large message raises the server's peak RSS on its way in and out.

Runs a real `kartero serve` and raw-socket clients (they hash what they read and keep no copy), resets
the server's peak RSS (VmHWM) before each step and prints its growth:

    python bench/memory.py --size-mb 200 --parallel 8 --parallel-size-mb 45

The same steps, with fixed sizes and bounds, run in the suite as tests/integration/test_memory.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.harness import KarteroServer  # noqa: E402
from tests.integration.test_backpressure import peak_growth_kb, reset_peak  # noqa: E402
from tests.integration.test_memory import (  # noqa: E402
    LINE,
    PASSWORD,
    append_message,
    fetch_digest,
    retr_digest,
    send_message,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--parallel-size-mb", type=int, default=45)
    args = parser.parse_args()
    lines = args.size_mb * 1_000_000 // len(LINE) // 1000 * 1000
    parallel_lines = args.parallel_size_mb * 1_000_000 // len(LINE) // 1000 * 1000
    with tempfile.TemporaryDirectory() as folder:
        limit = max(args.size_mb, args.parallel_size_mb) + 50
        server = KarteroServer(Path(folder) / "mx", domains=("example.test",), limits=f'message_size = "{limit}MB"')
        server.add_user("bob@example.test", PASSWORD)
        server.start()
        try:
            assert server.process is not None
            pid = server.process.pid
            rows: list[tuple[str, float, float]] = []

            def measure(name: str, step: object) -> None:
                before = reset_peak(pid)
                started = time.monotonic()
                step()  # type: ignore[operator]
                rows.append((name, peak_growth_kb(pid, before) / 1024, time.monotonic() - started))

            measure(f"SMTP DATA, {args.size_mb} MB", lambda: send_message(server, lines, "big"))
            measure(f"IMAP FETCH BODY.PEEK[], {args.size_mb} MB", lambda: fetch_digest(server, 1))
            measure(f"POP3 RETR, {args.size_mb} MB", lambda: retr_digest(server, 1))
            measure(f"IMAP APPEND, {args.size_mb} MB", lambda: append_message(server, lines))
            send_message(server, parallel_lines, "medium")

            def parallel() -> None:
                with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
                    list(pool.map(lambda _: fetch_digest(server, 2), range(args.parallel)))

            measure(f"{args.parallel} parallel FETCHes, {args.parallel_size_mb} MB", parallel)
        finally:
            server.stop()
    print(f"{'step':<40} {'peak RSS growth':>16} {'seconds':>8}")
    for name, growth_mb, seconds in rows:
        print(f"{name:<40} {growth_mb:>13.1f} MB {seconds:>8.1f}")


if __name__ == "__main__":
    main()

"""Outbound throughput: Kartero's queue and delivery agent against Postfix relaying the same load.

Both servers get N messages for 10 destination domains while the destinations are down (every message
is tried once and deferred), then the sinks come up, the queue is flushed, and the time until the queue
is empty is measured: pure delivery throughput, queue bookkeeping included, acceptance excluded. Each
domain has its own sink (Postfix's `smtp-sink`, no storage) on its own loopback address, routed
statically on both sides (Kartero `[routes]`, Postfix `transport_maps`), so no DNS is involved and each
domain is its own destination for both servers' per-destination concurrency limits.

Run as root (a private Postfix): python bench/outbound.py [--messages 10000] [--size 2048]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import smtplib
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.harness import KarteroServer, free_port, run_cli  # noqa: E402
from tests.integration.postfix import PostfixInstance  # noqa: E402

DOMAINS = [f"d{i}.bench" for i in range(10)]
SINKS = [f"127.0.0.{20 + i}" for i in range(10)]
PASSWORD = "bench-password"


def message(n: int, size: int) -> bytes:
    head = (f"From: sender@bench.test\r\nTo: user@{DOMAINS[n % 10]}\r\nSubject: outbound {n}\r\n"
            f"Message-ID: <out-{n}@bench.test>\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\n").encode()  # fmt: skip
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def inject(host: str, port: int, count: int, size: int, *, tls_auth: bool, sessions: int = 10) -> float:
    """Send `count` messages over `sessions` connections; returns the seconds it took."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def worker(offset: int) -> None:
        with smtplib.SMTP(host, port, timeout=120) as client:
            if tls_auth:
                client.starttls(context=ctx)
                client.login("sender@bench.test", PASSWORD)
            for n in range(offset, count, sessions):
                client.sendmail("sender@bench.test", [f"user{n}@{DOMAINS[n % 10]}"], message(n, size))

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(sessions) as pool:
        list(pool.map(worker, range(sessions)))
    return time.monotonic() - started


def wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_sinks(port: int) -> list[subprocess.Popen[bytes]]:
    command = ["smtp-sink", "-u", "nobody"]
    return [
        subprocess.Popen([*command, f"{host}:{port}", "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for host in SINKS
    ]


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        p.terminate()
    for p in processes:
        p.wait(10)


def bench_kartero(root: Path, port: int, count: int, size: int, per_domain: int) -> tuple[float, float]:
    routes = "".join(f'"{d}" = "{h}:{port}"\n' for d, h in zip(DOMAINS, SINKS, strict=True))
    server = KarteroServer(
        root, host="127.0.0.2", domains=("bench.test",), hostname="mx.bench.test",
        extra_config=f'[delivery]\nretry_first = "1h"\nretry_max = "1h"\nper_domain = {per_domain}\n'
                     f'[routes]\n{routes}',
        limits='message_size = "50MB"',
    )  # fmt: skip
    server.add_user("sender@bench.test", PASSWORD)
    server.start()
    db = root / "data" / "kartero.db"

    def query(sql: str) -> int:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return int(conn.execute(sql).fetchone()[0])

    try:
        accept_s = inject(server.host, server.submission_port, count, size, tls_auth=True)
        wait(lambda: query("SELECT COUNT(*) FROM queue_recipients WHERE attempts >= 1") == count, 600,
             "Kartero's first attempts")  # fmt: skip
        sinks = start_sinks(port)
        try:
            time.sleep(0.5)
            started = time.monotonic()
            run_cli(server.config, "queue", "flush")
            wait(lambda: query("SELECT COUNT(*) FROM queue") == 0, 900, "Kartero's queue to drain")
            elapsed = time.monotonic() - started
        finally:
            stop(sinks)
    finally:
        server.stop()
    return count / accept_s, count / elapsed


def bench_postfix(root: Path, port: int, count: int, size: int) -> tuple[float, float]:
    transport = ", ".join(f"{d}=smtp:[{h}]:{port}" for d, h in zip(DOMAINS, SINKS, strict=True))
    listen = free_port("127.0.0.3")
    postfix = PostfixInstance(root, "127.0.0.3", listen, main_cf={
        "transport_maps": f"inline:{{ {transport} }}",
        "relay_domains": " ".join(DOMAINS),
        "message_size_limit": "52428800",
        "minimal_backoff_time": "1h",
        "maximal_backoff_time": "1h",
        "queue_run_delay": "1h",
        "smtp_tls_security_level": "none",
    })  # fmt: skip
    postfix.start()
    spool = root / "spool"

    def queued(*folders: str) -> int:
        return sum(len(files) for f in folders for _, _, files in os.walk(spool / f))

    try:
        accept_s = inject("127.0.0.3", listen, count, size, tls_auth=False)
        wait(lambda: queued("deferred") == count, 900, "Postfix's first attempts")
        sinks = start_sinks(port)
        try:
            time.sleep(0.5)
            started = time.monotonic()
            subprocess.run(["postqueue", "-c", str(root / "etc"), "-f"], check=True)
            wait(lambda: queued("incoming", "active", "deferred") == 0, 900, "Postfix's queue to drain")
            elapsed = time.monotonic() - started
        finally:
            stop(sinks)
    finally:
        postfix.stop()
    return count / accept_s, count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("smtp-sink") is None:
        raise SystemExit("run as root with Postfix installed (apt-get install postfix)")
    root = Path(tempfile.mkdtemp(prefix="kartero-outbound-bench-"))
    root.chmod(0o755)
    port = free_port(SINKS[0])
    rows = []
    try:
        for per_domain in (5, 20):
            accept, drain = bench_kartero(root / f"kartero-{per_domain}", port, args.messages, args.size, per_domain)
            rows.append((f"Kartero (per_domain={per_domain})", accept, drain))
            print(f"{rows[-1][0]}: delivered {drain:.0f} msgs/s", flush=True)
        accept, drain = bench_postfix(root / "postfix", port, args.messages, args.size)
        rows.append(("Postfix 3.7 (defaults, 20 per destination)", accept, drain))
        print(f"{rows[-1][0]}: delivered {drain:.0f} msgs/s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{args.messages} messages of {args.size} bytes to 10 domains, each with its own smtp-sink")
    print(f"{'server':<44} {'queue drain msgs/s':>18} {'(acceptance msgs/s)':>20}")
    for name, accept, drain in rows:
        print(f"{name:<44} {drain:>18.0f} {accept:>20.0f}")
    postfix_rate = rows[-1][2]
    for name, _, drain in rows[:-1]:
        print(f"ratio {name} / Postfix: {drain / postfix_rate:.2f}x")


if __name__ == "__main__":
    main()

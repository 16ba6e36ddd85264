"""SMTP accept throughput: Kartero side by side with aiosmtpd (fsync per message), same load, same run.

    python bench/smtp_accept.py                       # 50 sessions x 40 messages x 2 KB, both servers
    python bench/smtp_accept.py --sessions 50 --messages 100 --size 2048 --smtp-source
    python bench/smtp_accept.py --target 127.0.0.1:2525 --rcpt bob@localhost --no-peer

Without --target it starts Kartero itself (a fresh data folder in a temporary directory, one account).
The load client runs in its own process (uvloop when installed), one TCP connection per session, each
transaction MAIL, RCPT, DATA, body, waiting for every reply (no pipelining, as aiosmtpd offers none).
It prints messages/s and p50/p99 transaction latency (MAIL sent to 250 after the body) for each server,
and the ratio. --smtp-source also drives both with Postfix's C load client, `smtp-source`, as an
independent check of the throughput figures.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    name: str
    messages: int
    seconds: float
    latencies_ms: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_body(size: int) -> bytes:
    head = b"From: bench@example.org\r\nTo: bob@example.test\r\nSubject: benchmark\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = head
    while len(body) < size:
        body += line
    return body[: size - 2] + b"\r\n"


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


async def _session(host: str, port: int, count: int, body: bytes, rcpt: str, latencies: list[float]) -> int:
    errors = 0
    reader, writer = await asyncio.open_connection(host, port)
    await _read_reply(reader)
    writer.write(b"EHLO bench.example\r\n")
    await _read_reply(reader)
    mail, rcpt_line = b"MAIL FROM:<bench@example.org>\r\n", f"RCPT TO:<{rcpt}>\r\n".encode()
    for _ in range(count):
        started = time.perf_counter()
        ok = True
        for command in (mail, rcpt_line, b"DATA\r\n"):
            writer.write(command)
            reply = await _read_reply(reader)
            ok = ok and reply[:1] in (b"2", b"3")
        writer.write(body + b".\r\n")
        reply = await _read_reply(reader)
        if ok and reply.startswith(b"250"):
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            errors += 1
    writer.write(b"QUIT\r\n")
    await _read_reply(reader)
    writer.close()
    return errors


async def _load(
    host: str, port: int, sessions: int, messages: int, size: int, rcpt: str
) -> tuple[float, list[float], int]:
    body = make_body(size)
    latencies: list[float] = []
    started = time.perf_counter()
    results = await asyncio.gather(*(_session(host, port, messages, body, rcpt, latencies) for _ in range(sessions)))
    return time.perf_counter() - started, latencies, sum(results)


def _load_process(args: tuple[str, int, int, int, int, str], out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        import uvloop

        out.put(uvloop.run(_load(*args)))
    except ImportError:
        out.put(asyncio.run(_load(*args)))


def run_load(name: str, host: str, port: int, sessions: int, messages: int, size: int, rcpt: str) -> Result:
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    proc = multiprocessing.Process(target=_load_process, args=((host, port, sessions, messages, size, rcpt), queue))
    proc.start()
    seconds, latencies, errors = queue.get()
    proc.join()
    return Result(name, len(latencies), seconds, latencies, errors)


def run_smtp_source(name: str, host: str, port: int, sessions: int, total: int, size: int, rcpt: str) -> Result:
    started = time.perf_counter()
    subprocess.run(
        ["smtp-source", "-d", "-s", str(sessions), "-m", str(total), "-l", str(size),
         "-f", "bench@example.org", "-t", rcpt, f"{host}:{port}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return Result(name + " (smtp-source)", total, time.perf_counter() - started, [], 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on port {port}")


def start_kartero(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = folder / "kartero.toml"
    config.write_text(
        f'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        f'log_level = "warning"\n[listen]\nsmtp = ["127.0.0.1:{port}"]\n'
        # No DNS here: SPF/DKIM/DMARC would time the resolver's timeouts, not the server (aiosmtpd runs none).
        "[inbound]\nspf = false\ndkim = false\ndmarc = false\n"
    )
    kartero = [sys.executable, "-m", "kartero", "-c", str(config)]
    subprocess.run([*kartero, "user", "add", "bob@example.test", "--password-stdin"], input=b"pw\n", check=True,
                   capture_output=True)  # fmt: skip
    proc = subprocess.Popen([*kartero, "serve"], stdout=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def start_aiosmtpd(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "aiosmtpd_fsync.py"), "--port", str(port), "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def print_table(results: list[Result]) -> None:
    print(f"{'server':<34} {'messages':>9} {'msgs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results:
        print(f"{r.name:<34} {r.messages:>9} {r.rate:>9.0f} {r.percentile(0.5):>8.1f} {r.percentile(0.99):>8.1f} "
              f"{r.errors:>7}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--messages", type=int, default=40, help="messages per session")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--target", help="HOST:PORT of a running server instead of starting Kartero")
    parser.add_argument("--rcpt", default="bob@example.test")
    parser.add_argument("--no-peer", action="store_true", help="skip aiosmtpd")
    parser.add_argument("--smtp-source", action="store_true", help="also load both with Postfix's smtp-source")
    parser.add_argument("--rounds", type=int, default=1, help="repeat and report each round")
    args = parser.parse_args()
    if args.smtp_source and not shutil.which("smtp-source"):
        raise SystemExit("smtp-source not found (Debian package postfix)")

    print(f"load: {args.sessions} sessions x {args.messages} messages x {args.size} bytes, {os.cpu_count()} CPUs")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="kartero-bench-") as tmp:
        for round_no in range(args.rounds):
            suffix = f" #{round_no + 1}" if args.rounds > 1 else ""
            servers: list[tuple[str, object]] = [("kartero", None)]
            if not args.no_peer:
                servers.append(("aiosmtpd+fsync", None))
            for name, _ in servers:
                folder = Path(tmp) / f"{name}-{round_no}"
                folder.mkdir()
                proc = None
                if name == "kartero" and args.target:
                    host, _, port_text = args.target.rpartition(":")
                    port = int(port_text)
                else:
                    host = "127.0.0.1"
                    proc, port = (start_kartero if name == "kartero" else start_aiosmtpd)(folder)
                try:
                    results.append(run_load(name + suffix, host, port, args.sessions, args.messages, args.size,
                                            args.rcpt))  # fmt: skip
                    if args.smtp_source:
                        total = args.sessions * args.messages
                        results.append(run_smtp_source(name + suffix, host, port, args.sessions, total, args.size,
                                                       args.rcpt))  # fmt: skip
                finally:
                    if proc is not None:
                        stop(proc)
    print_table(results)
    kartero = [r for r in results if r.name.startswith("kartero") and "smtp-source" not in r.name]
    peer = [r for r in results if r.name.startswith("aiosmtpd") and "smtp-source" not in r.name]
    if kartero and peer:
        ratio = statistics.median(r.rate for r in kartero) / statistics.median(r.rate for r in peer)
        print(f"ratio kartero / aiosmtpd+fsync (python client, median): {ratio:.2f}x")
    kartero_ss = [r for r in results if r.name.startswith("kartero") and "smtp-source" in r.name]
    peer_ss = [r for r in results if r.name.startswith("aiosmtpd") and "smtp-source" in r.name]
    if kartero_ss and peer_ss:
        ratio = statistics.median(r.rate for r in kartero_ss) / statistics.median(r.rate for r in peer_ss)
        print(f"ratio kartero / aiosmtpd+fsync (smtp-source, median): {ratio:.2f}x")


if __name__ == "__main__":
    main()

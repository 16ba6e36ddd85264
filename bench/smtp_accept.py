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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from queue import Empty

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Result:
    name: str
    messages: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    delivered_s: float | None = None  # Postfix: from the load's start until every message was in the Maildir
    server_cpu_s: float | None = None  # the server's processes, user + system, over the load (and delivery)
    client_cpu_s: float | None = None  # the python load client's process

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Served:
    """A server under load: where it listens, its process (for --profile), and for the peers a way to read
    the last message stored (to check the client's bytes) and to wait for deliveries that come after the 250."""

    host: str
    port: int
    pid: int | None = None
    stored: Callable[[], bytes] | None = None
    delivered: Callable[[int, float], float | None] | None = None
    cpu: Callable[[], float] | None = None  # CPU seconds the server's processes have used so far


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of a process (all its threads); with `children`, also of the children it has
    reaped and of those still running (Postfix: master and its daemons)."""
    tick = os.sysconf("SC_CLK_TCK")

    def own(stat: list[str], reaped: bool) -> float:
        # Fields after the command name: 14 utime, 15 stime, 16 cutime, 17 cstime (proc(5)), from index 0 = field 3.
        return sum(int(x) for x in stat[11 : 15 if reaped else 13]) / tick

    def fields(path: Path) -> list[str] | None:
        try:
            return path.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None  # ended meanwhile

    first = fields(Path(f"/proc/{pid}/stat"))
    total = own(first, children) if first else 0.0
    if children:
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            stat = fields(stat_file)
            if stat and stat[1] == str(pid):
                total += own(stat, True)
    return total


def make_body(size: int) -> bytes:
    """A message of exactly `size` octets (at least ~250): CRLF lines of at most 76 octets, one of them
    starting with a dot, so the client's dot-stuffing and the server's unstuffing are part of the load."""
    head = (
        b"From: bench@example.org\r\nTo: bob@example.test\r\nSubject: benchmark\r\n"
        # Date and Message-ID present, as in real mail, so no server adds its own (Postfix would).
        b"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <bench@example.org>\r\n\r\n"
    )
    head += b".A line that starts with a dot, sent as two dots (RFC 5321 section 4.5.2).\r\n"
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = head + line * max(0, (size - len(head)) // len(line) + 1)
    return body[: size - 2] + b"\r\n"


def dot_stuff(body: bytes) -> bytes:
    """The DATA form of a CRLF-terminated body: a dot doubled at each line start, then the end marker."""
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def check_body(body: bytes) -> None:
    """Refuse a load that a strict server could reject or read differently (RFC 5321 sections 2.3.8, 4.5.3.1.6)."""
    if not body.endswith(b"\r\n"):
        raise SystemExit("the message must end with CRLF")
    lines = body[:-2].split(b"\r\n")
    if any(b"\r" in x or b"\n" in x for x in lines):
        raise SystemExit("bare CR or LF in the message")
    if max(len(x) for x in lines) > 998:
        raise SystemExit("a line longer than 998 octets")


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


async def _session(host: str, port: int, count: int, body: bytes, rcpt: str, latencies: list[float]) -> int:
    errors = 0
    data = dot_stuff(body)
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
        writer.write(data)
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
    targets: tuple[tuple[str, int], ...], sessions: int, messages: int, size: int, rcpt: str
) -> tuple[float, list[float], int, float]:
    """`sessions` sessions spread over `targets` in turn (several nodes of a cluster share one load)."""
    body = make_body(size)
    latencies: list[float] = []
    started, cpu = time.perf_counter(), time.process_time()
    results = await asyncio.gather(*(_session(*targets[n % len(targets)], messages, body, rcpt, latencies)
                                     for n in range(sessions)))  # fmt: skip
    return time.perf_counter() - started, latencies, sum(results), time.process_time() - cpu


def _load_process(args: tuple[tuple[tuple[str, int], ...], int, int, int, str], out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    # Ctrl-C is the parent's to handle (it stops the servers, then this process with SIGTERM).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        import uvloop

        out.put(uvloop.run(_load(*args)))
    except ImportError:
        out.put(asyncio.run(_load(*args)))


def run_load(name: str, host: str, port: int, sessions: int, messages: int, size: int, rcpt: str) -> Result:
    return run_split_load(name, ((host, port),), sessions, messages, size, rcpt)


def run_split_load(
    name: str, targets: tuple[tuple[str, int], ...], sessions: int, messages: int, size: int, rcpt: str
) -> Result:
    """One load client process whose sessions take the targets in turn; the rate is over all of them."""
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    proc = multiprocessing.Process(target=_load_process, args=((targets, sessions, messages, size, rcpt), queue))
    proc.start()
    try:
        while True:
            try:
                seconds, latencies, errors, client_cpu = queue.get(timeout=1)
                break
            except Empty:
                if not proc.is_alive():
                    raise SystemExit(f"the load client died ({proc.exitcode})") from None
        proc.join()
    finally:
        if proc.is_alive():
            proc.terminate()
    return Result(name, len(latencies), seconds, latencies, errors, client_cpu_s=client_cpu)


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


def wait_port(port: int, timeout_s: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on port {port}")


def kartero_config(folder: Path, port: int, imap_port: int, host: str = "127.0.0.1", tables: str = "") -> Path:
    """The bench's config; `tables`: more TOML tables (bench/cluster.py's [store])."""
    config = folder / "kartero.toml"
    config.write_text(
        f'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        f'log_level = "warning"\n[listen]\nsmtp = ["{host}:{port}"]\nimap = ["{host}:{imap_port}"]\n'
        # No DNS here: SPF/DKIM/DMARC would time the resolver's timeouts, not the server (aiosmtpd runs none).
        "[inbound]\nspf = false\ndkim = false\ndmarc = false\n" + tables
    )
    return config


def fetch_last(port: int, user: str, password: str, host: str = "127.0.0.1") -> bytes:
    """The newest message of the INBOX over IMAP (idle during the load; only read afterwards)."""
    import imaplib

    with imaplib.IMAP4(host, port) as imap:
        imap.login(user, password)
        imap.select("INBOX", readonly=True)
        _, data = imap.fetch("*", "(BODY.PEEK[])")
        part = data[0]
        return part[1] if isinstance(part, tuple) else b""


@contextmanager
def kartero(folder: Path, args: argparse.Namespace) -> Iterator[Served]:
    if args.target:
        host, _, port_text = args.target.rpartition(":")
        yield Served(host, int(port_text))
        return
    port, imap_port = free_port(), free_port()
    tables = f'[[milter]]\naddress = "{args.milter}"\n' if args.milter else ""
    tables += f'[trace]\nkeep = "{args.trace_keep}"\n' if args.trace_keep is not None else ""
    command = [sys.executable, "-m", "kartero", "-c", str(kartero_config(folder, port, imap_port, tables=tables))]
    # This checkout's Kartero, wherever the bench is started from (not an installed copy elsewhere, nor a
    # checkout in the current folder: `python -m` looks there first, so the server runs from ROOT).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run([*command, "user", "add", args.rcpt, "--password-stdin"], input=b"pw\n", check=True,
                   capture_output=True, env=env, cwd=ROOT)  # fmt: skip
    if args.sieve:  # the recipient's active Sieve script, run at every delivery (docs/rules.md)
        put = ["sieve", "put", args.rcpt, "bench", str(args.sieve.resolve())]
        for step in (put, ["sieve", "activate", args.rcpt, "bench"]):
            subprocess.run([*command, *step], check=True, capture_output=True, env=env, cwd=ROOT)
    proc = subprocess.Popen([*command, "serve"], stdout=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        wait_port(port)
        yield Served("127.0.0.1", port, pid=proc.pid, stored=lambda: fetch_last(imap_port, args.rcpt, "pw"),
                     cpu=lambda: cpu_seconds(proc.pid))  # fmt: skip
    finally:
        stop(proc)


@contextmanager
def aiosmtpd(folder: Path, args: argparse.Namespace) -> Iterator[Served]:
    port = free_port()
    spool = folder / "spool"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "aiosmtpd_fsync.py"), "--port", str(port), "--dir", str(spool)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(port)

        def newest() -> bytes:
            return max(spool.iterdir(), key=lambda f: f.stat().st_mtime).read_bytes()

        yield Served("127.0.0.1", port, stored=newest, cpu=lambda: cpu_seconds(proc.pid))
    finally:
        stop(proc)


@contextmanager
def postfix(folder: Path, args: argparse.Namespace) -> Iterator[Served]:
    from bench.postfix_maildir import is_available, running_postfix

    reason = is_available()
    if reason:
        raise SystemExit(f"--peers postfix: {reason}")
    port = free_port()
    with running_postfix(folder, "127.0.0.1", port, args.rcpt, message_size=args.size, milter=args.milter) as pf:
        # Postfix stores the message with LF line ends and its own Return-Path/Delivered-To/Received.
        yield Served("127.0.0.1", port, stored=lambda: pf.newest_message().replace(b"\n", b"\r\n"),
                     delivered=pf.wait_delivered, cpu=lambda: cpu_seconds(pf.master_pid(), children=True))  # fmt: skip


SERVERS = {"kartero": kartero, "aiosmtpd+fsync": aiosmtpd, "postfix": postfix}
PEERS = {"aiosmtpd": "aiosmtpd+fsync", "aiosmtpd+fsync": "aiosmtpd+fsync", "postfix": "postfix"}


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def check_stored(name: str, stored: bytes, body: bytes) -> None:
    """The last message the peer stored must end with the exact body the client meant to send."""
    if not stored.endswith(body):
        raise SystemExit(f"{name} stored a message that does not end with the body sent "
                         f"({len(stored)} octets stored, {len(body)} sent)")  # fmt: skip


def measured(served: Served, earlier: int, run: Callable[[], Result]) -> Result:
    """Run one load; for Postfix wait until its Maildir holds `earlier` + this load's messages; take the
    server's CPU over the load and that wait."""
    cpu = served.cpu() if served.cpu else None
    result = run()
    if served.delivered is not None:
        waited = served.delivered(earlier + result.messages, 600)
        result.delivered_s = None if waited is None else result.seconds + waited
    if served.cpu and cpu is not None:
        result.server_cpu_s = served.cpu() - cpu
    return result


def print_table(results: list[Result]) -> None:
    print(f"{'server':<30} {'messages':>8} {'msgs/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'srv cpu':>7} {'cli cpu':>7}  delivered")  # fmt: skip
    for r in results:
        delivered = ""
        if r.delivered_s is not None:
            delivered = f"all in Maildir after {r.delivered_s:.2f} s ({r.messages / r.delivered_s:.0f} msgs/s)"
        server = f"{r.server_cpu_s * 1000 / r.messages:.2f}" if r.server_cpu_s is not None and r.messages else "-"
        client = f"{r.client_cpu_s * 1000 / r.messages:.2f}" if r.client_cpu_s is not None and r.messages else "-"
        print(f"{r.name:<30} {r.messages:>8} {r.rate:>7.0f} {r.percentile(0.5):>7.1f} {r.percentile(0.99):>7.1f} "
              f"{r.errors:>6} {server:>7} {client:>7}  {delivered}")  # fmt: skip
    print("srv cpu / cli cpu: ms of CPU (user + system) per message, the server's processes and the python client")


def print_ratios(results: list[Result], peers: list[str]) -> None:
    for client in ("python client", "smtp-source"):
        ours = _rates(results, "kartero", client)
        for peer in peers:
            theirs = _rates(results, peer, client)
            if ours and theirs:
                ratio = statistics.median(ours) / statistics.median(theirs)
                print(f"ratio kartero / {peer} ({client}, median): {ratio:.2f}x")


def _rates(results: list[Result], server: str, client: str) -> list[float]:
    return [
        r.rate for r in results if r.name.startswith(server) and ("smtp-source" in r.name) == (client == "smtp-source")
    ]


def parse_peers(args: argparse.Namespace) -> list[str]:
    if args.no_peer:
        return []
    peers: list[str] = []
    for name in [*args.peers.split(","), *(["postfix"] if args.postfix else [])]:
        if not name.strip():
            continue
        if name.strip() not in PEERS:
            raise SystemExit(f"unknown peer {name!r}: one of {', '.join(sorted(PEERS))}")
        if PEERS[name.strip()] not in peers:
            peers.append(PEERS[name.strip()])
    return peers


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so SIGTERM, like Ctrl-C, leaves through the `finally` that stops the servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--messages", type=int, default=40, help="messages per session")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--target", help="HOST:PORT of a running server instead of starting Kartero")
    parser.add_argument("--rcpt", default="bob@example.test")
    parser.add_argument("--sieve", type=Path, metavar="FILE",
                        help="activate this Sieve script for the recipient (it must keep mail in INBOX)")  # fmt: skip
    parser.add_argument("--milter", metavar="HOST:PORT", help="pass every message through this milter "
                        "(Kartero's [[milter]], Postfix's smtpd_milters; aiosmtpd has none)")
    parser.add_argument("--trace-keep", metavar="DURATION",
                        help="Kartero's [trace] keep (0: no message trace, to measure what it costs)")
    parser.add_argument("--peers", default="aiosmtpd", help="comma-separated: aiosmtpd, postfix (default aiosmtpd)")
    parser.add_argument("--postfix", action="store_true", help="add Postfix to the peers (needs root)")
    parser.add_argument("--no-peer", action="store_true", help="Kartero alone")
    parser.add_argument("--smtp-source", action="store_true", help="also load every server with Postfix's smtp-source")
    parser.add_argument("--rounds", type=int, default=1, help="repeat and report each round")
    parser.add_argument("--profile", type=Path, metavar="PREFIX", help="py-spy on Kartero under load: PREFIX-N.txt")
    parser.add_argument("--profile-mode", choices=("gil", "wall"), default="gil",
                        help="gil: the thread holding the GIL; wall: every thread, waits included")  # fmt: skip
    parser.add_argument("--native", action="store_true", help="with --profile: C frames too (slower sampling)")
    args = parser.parse_args()
    peers = parse_peers(args)
    if args.smtp_source and not shutil.which("smtp-source"):
        raise SystemExit("smtp-source not found (Debian package postfix)")
    if args.profile and args.target:
        raise SystemExit("--profile needs the Kartero the bench starts (no --target)")
    body = make_body(args.size)
    check_body(body)
    signal.signal(signal.SIGTERM, _interrupted)

    print(f"load: {args.sessions} sessions x {args.messages} messages x {args.size} bytes, {os.cpu_count()} CPUs,"
          f" load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    results: list[Result] = []
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kartero-bench-") as tmp:
        Path(tmp).chmod(0o755)  # Postfix's daemons run as other users and must reach their folders
        for round_no in range(args.rounds):
            for name in ["kartero", *peers]:
                folder = Path(tmp) / f"{name}-{round_no}"
                folder.mkdir()
                results += bench_server(name, round_no, folder, args, body, profiles)
    print_table(results)
    print_ratios(results, peers)
    for text in profiles:
        print("\n" + text)


def bench_server(
    name: str, round_no: int, folder: Path, args: argparse.Namespace, body: bytes, profiles: list[str]
) -> list[Result]:
    """Start one server, load it (and with --smtp-source once more), check what it stored, stop it."""
    label = name + (f" #{round_no + 1}" if args.rounds > 1 else "")
    with SERVERS[name](folder, args) as served:
        load = partial(run_load, label, served.host, served.port, args.sessions, args.messages, args.size, args.rcpt)
        if args.profile and name == "kartero" and served.pid:
            from bench.thread_profile import profiling, summarise

            output = args.profile.with_name(f"{args.profile.name}-{round_no + 1}.txt")
            with profiling(served.pid, output, mode=args.profile_mode, native=args.native) as profile:
                result = measured(served, 0, load)
            profiles.append(f"{label}, py-spy samples in {output}:\n{summarise(profile, result.messages)}")
        else:
            result = measured(served, 0, load)
        results = [result]
        if served.stored is not None and result.messages:
            check_stored(name, served.stored(), body)
            print(f"{label}: the last message stored ends with the {len(body)} octets sent")
        if args.smtp_source:
            total = args.sessions * args.messages
            source = partial(run_smtp_source, label, served.host, served.port, args.sessions, total, args.size,
                             args.rcpt)  # fmt: skip
            results.append(measured(served, result.messages, source))
    return results


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("interrupted; the servers the bench started are stopped") from None

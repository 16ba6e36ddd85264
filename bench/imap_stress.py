"""Many sessions on one mailbox, Kartero and Dovecot side by side: errors and latency per command.

    python bench/imap_stress.py                                  # 10 and 50 sessions, 60 s each, both servers
    python bench/imap_stress.py --sessions 50 --seconds 30 --profile /tmp/kartero-50.txt
    python bench/imap_stress.py --no-dovecot --sessions 10 --seconds 20

The load is the suite's stress test (tests/integration/imap_model.py), longer: every session of one user
loops SELECT / FETCH (FLAGS, BODY.PEEK[], ENVELOPE) / STORE (system flags and keywords, silent or not, by
sequence number and UID) / EXPUNGE / UID EXPUNGE / APPEND / COPY / MOVE / IDLE / NOOP and pipelined UID
commands, keeping a model of the mailbox from the untagged responses and checking every response against it;
at the end every session's model is compared with a fresh session's view. Each server starts fresh with the
same generated messages (bench/imap_bench.py's setup: Kartero through its store API, Dovecot 2.3 as Maildir
files, as root, on a private loopback port).

Printed per server and session count: commands/s, errors by kind (with the first findings' transcripts),
races tolerated (the RFC 2180 cases, see imap_model.py), and latency per command group (STORE is STORE and
UID STORE, and so on): count, mean, p50, p99 in ms. The client is one asyncio process (uvloop when
installed) on the same machine, so its CPU counts against both servers alike.

--profile FILE records the Kartero server with py-spy (`pip install py-spy`) during the run with the most
sessions and writes the collapsed stacks to FILE; the script prints the functions with the most samples,
by their own time and including what they call.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.imap_bench import PASSWORD, USER, Server, make_messages, start_dovecot, start_kartero  # noqa: E402
from bench.thread_profile import frame_name  # noqa: E402
from tests.integration.imap_model import Run, report, stress  # noqa: E402

GROUPS = ("STORE", "EXPUNGE", "APPEND", "FETCH", "COPY", "MOVE", "SELECT", "NOOP")


def grouped(run: Run) -> dict[str, tuple[int, float, float, float]]:
    """Latency per command group (UID variants joined): count, mean, p50, p99 in ms."""
    joined: dict[str, list[float]] = collections.defaultdict(list)
    for name, values in run.latencies.items():
        joined[name.removeprefix("UID ")].extend(values)
    table = {}
    for name in GROUPS:
        values = sorted(joined.get(name, []))
        if values:
            p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
            table[name] = (len(values), sum(values) / len(values) * 1000, values[len(values) // 2] * 1000, p99 * 1000)
    return table


@contextlib.contextmanager
def profiling(pid: int, output: Path | None, seconds: float, native: bool) -> Iterator[None]:
    if output is None:
        yield
        return
    if shutil.which("py-spy") is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--threads",
                            "--duration", str(int(seconds)), "--output", str(output),
                            *(["--native"] if native else ["--nonblocking"])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        yield
    finally:
        _, errors = spy.communicate(timeout=seconds + 60)
        if spy.returncode:
            print(f"py-spy failed ({spy.returncode}): {errors.decode(errors='replace')[-2000:]}")


def summarise_profile(path: Path, top: int = 25) -> str:
    """Where the samples went: by thread, then the functions with the most samples on their own (self) and
    with what they call (inclusive)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        threads[frames[0].split(" ")[0] if frames[0].startswith("thread") else "?"] += count
        names = [frame_name(f) for f in frames if not f.startswith(("thread", "process"))]
        if names:
            own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    lines = [f"{total} samples (200/s, busy threads only)"]
    lines.append("threads: " + ", ".join(f"{t} {c / total:.0%}" for t, c in threads.most_common(6)))
    lines.append("self:")
    lines += [f"  {c / total:6.1%}  {n}" for n, c in own.most_common(top)]
    lines.append("inclusive (kartero/ and sqlite3 only):")
    shown = [(n, c) for n, c in inclusive.most_common() if "kartero/" in n or "sqlite3" in n or "select" in n]
    lines += [f"  {c / total:6.1%}  {n}" for n, c in shown[:top]]
    return "\n".join(lines)


def measure(kind: str, folder: Path, messages: list[bytes], sessions: int, seconds: float, seed: int,
            profile: Path | None, native: bool) -> tuple[Run, dict[str, Any]]:  # fmt: skip
    server: Server = (start_kartero if kind == "kartero" else start_dovecot)(folder, messages)
    try:
        run = Run("127.0.0.1", server.port, USER, PASSWORD, sessions, seed=seed)
        cpu_before = cpu_seconds(server.pids())  # type: ignore[operator]
        with profiling(server.proc.pid if server.proc else 0, profile, seconds, native):
            summary = asyncio.run(stress(run, seconds))
        time.sleep(0.5)  # lets Dovecot's master reap the session processes that just ended
        summary["cpu_s"] = cpu_seconds(server.pids()) - cpu_before  # type: ignore[operator]
    finally:
        server.stop()
    return run, summary


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and of their children that ended (Dovecot's session
    processes end when their client logs out, before the run is measured; their parent counts them)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime (fields 14-17 of proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


def dovecot_missing() -> str:
    """Why the Dovecot comparison cannot run here ("" when it can): it needs dovecot-imapd and root."""
    if shutil.which("dovecot") is None:
        return "no dovecot binary: apt-get install dovecot-imapd"
    if os.geteuid() != 0:
        return "it runs a private instance as root"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--messages", type=int, default=40, help="messages in INBOX at the start")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--findings", type=int, default=3, help="findings printed with their transcript")
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of Kartero at the most sessions")
    parser.add_argument("--native", action="store_true", help="profile C frames too (SQLite, fsync, sleeps)")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    messages = make_messages(args.messages, seed=args.seed)
    missing = dovecot_missing()
    if not args.no_dovecot and missing:
        print(f"Dovecot is not run ({missing}): Kartero alone.", flush=True)
    kinds = ["kartero"] + ([] if args.no_dovecot or missing else ["dovecot"])
    results: dict[tuple[str, int], tuple[Run, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="kartero-imap-stress-") as tmp:
        for sessions in args.sessions:
            for kind in kinds:
                folder = Path(tmp) / f"{kind}-{sessions}"
                folder.mkdir()
                profile = args.profile if kind == "kartero" and sessions == max(args.sessions) else None
                print(f"{kind}, {sessions} sessions, {args.seconds:.0f} s ...", flush=True)
                started = time.monotonic()
                run, summary = measure(kind, folder, messages, sessions, args.seconds, args.seed, profile, args.native)
                results[(kind, sessions)] = (run, summary)
                print(report(run, summary, findings=args.findings))
                print(f"  ({time.monotonic() - started:.0f} s with setup)\n", flush=True)
    print("latency in ms: count / mean / p50 / p99")
    header = f"{'':10} {'sessions':>8} {'cmds/s':>7} {'errors':>7} {'cpu ms/cmd':>10}"
    print(header + "".join(f" {g:>26}" for g in GROUPS[:4]))
    for (kind, sessions), (run, summary) in results.items():
        table = grouped(run)
        cells = "".join(
            f" {table[g][0]:6d} {table[g][1]:6.1f} {table[g][2]:6.1f} {table[g][3]:6.1f}" if g in table else " " * 27
            for g in GROUPS[:4]
        )
        cpu = summary["cpu_s"] * 1000 / max(1, summary["commands"])
        print(f"{kind:10} {sessions:8d} {summary['commands_per_s']:7.0f} {summary['errors']:7d} {cpu:10.2f}{cells}")
    if args.profile and args.profile.exists():
        print(f"\nKartero profile at {max(args.sessions)} sessions ({args.profile}):")
        print(summarise_profile(args.profile))


if __name__ == "__main__":
    main()

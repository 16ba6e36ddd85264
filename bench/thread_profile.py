"""Where a running server's time goes, thread by thread: py-spy samples plus each thread's CPU time.

Used by `bench/smtp_accept.py --profile`. Two sources, both taken over the same window (the load):

- /proc/PID/task/TID/stat: user + system CPU time of every thread, exact up to the clock tick (10 ms);
- `py-spy record --threads` at RATE Hz, in one of two modes:
  `gil` (default): only the thread holding the GIL is sampled, so the samples are the one core's worth of
  Python time the threads share -- what limits a one-process server -- split by thread and function;
  `wall` (`--idle`): every thread, waiting ones included, so a thread's samples are its wall time and
  the frames show what it waited in (`queue.get`, an fdatasync called from Python, the event loop's poll,
  getting the GIL back) as well as what it computed.

Each sample is charged to the nearest Kartero frame to the leaf (stdlib and C work counts to the Kartero
code that called it), and Kartero's modules are grouped into the steps of accepting a message (CATEGORIES).

Threads are named as the server names them (MainThread runs the event loop; kartero-commit,
kartero-index_N, kartero-io_N); py-spy reports the OS thread id with each name, which joins the two.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RATE = 250
MODES = {"gil": ["--gil"], "wall": ["--idle"]}
# (path prefix or path:function, step): the first that matches the nearest Kartero frame names the step.
CATEGORIES = (
    ("kartero/intake.py", "intake: checks, Received/Return-Path, envelope record"),
    ("kartero/concurrency.py", "intake: checks, Received/Return-Path, envelope record"),
    ("kartero/smtp/", "SMTP core: command and DATA parsing"),
    ("kartero/net/", "SMTP adapter (net/session.py, net/channel.py): replies, buffers, timers"),
    ("kartero/policy/", "policy, recipients"),
    ("kartero/auth/", "policy, recipients"),
    ("kartero/mail/", "policy, recipients"),
    ("kartero/mime/preview.py", "MIME index: PREVIEW"),
    ("kartero/mime/", "MIME index: structure, ENVELOPE, search fields"),
    ("kartero/store/segments.py", "segment pwrite + fdatasync"),
    ("kartero/store/sqlite_db.py:Transaction", "SQLite BEGIN/COMMIT (WAL fsync)"),
    ("kartero/store/commit.py:Committer._insert", "SQLite INSERTs"),
    ("kartero/store/queue_sql.py", "SQLite INSERTs"),
    ("kartero/store/ids.py", "message id"),
    ("kartero/store/", "store hand-offs (pool submit, commit queue, futures)"),
    ("kartero/", "other Kartero code"),
)
# Leaf frames where a thread waits, counted as such rather than as the nearest Kartero function's own work.
WAITS = {
    "Condition.wait (threading.py)": "waiting for work (Condition.wait)",
    "_worker (concurrent/futures/thread.py)": "waiting for work (pool queue)",
    "BaseSelector.select (selectors.py)": "waiting in select",
}
# The event loop's leaf when it runs uvloop's C code: the poll (a wait, in wall mode) and socket reads and
# writes (work, and all that gil mode sees of it).
UVLOOP = "Runner.run (asyncio/runners.py)"


@dataclass
class Profile:
    samples: Path
    cpu_s: dict[int, float] = field(default_factory=dict)  # thread id -> CPU seconds during the window
    wall_s: float = 0.0


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid` so far."""
    tick = os.sysconf("SC_CLK_TCK")
    times: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        times[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    return times


@contextmanager
def profiling(pid: int, output: Path, *, mode: str = "gil", native: bool = False) -> Iterator[Profile]:
    """Record `pid` with py-spy while the block runs; the Profile is complete after the block."""
    if shutil.which("py-spy") is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    import time

    profile = Profile(output)
    before = thread_cpu(pid)
    started = time.perf_counter()
    spy = subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", str(RATE), "--threads", *MODES[mode],
         "--full-filenames", "--output", str(output), *(["--native"] if native else ["--nonblocking"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield profile
    finally:
        after = thread_cpu(pid)
        profile.wall_s = time.perf_counter() - started
        profile.cpu_s = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
        spy.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        try:
            _, errors = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            errors = b"timed out"
        if not output.exists():
            print(f"py-spy wrote nothing ({spy.returncode}): {errors.decode(errors='replace')[-2000:]}")


def frame_name(frame: str) -> str:
    """`handler (/x/kartero/imap/commands/fetch.py:245)` -> `handler (kartero/imap/commands/fetch.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/kartero/", "/asyncio/", "/sqlite3/", "/uvloop/", "/concurrent/"):
        if marker in path:
            path = marker.strip("/") + "/" + path.split(marker, 1)[1]
            break
    else:
        path = path.rsplit("/", 1)[-1]
    return f"{name} ({path})"


def category(where: str) -> str:
    """The step of CATEGORIES for a `function (path)` frame name."""
    function, _, path = where.rpartition(" (")
    key = f"{path.rstrip(')')}:{function}"
    return next((step for prefix, step in CATEGORIES if key.startswith(prefix)), "event loop, sockets (uvloop, C)")


def summarise(profile: Profile, messages: int, top: int = 12) -> str:
    """The sampled time per message by step, then per thread group: its CPU per message (from /proc) and
    the Kartero functions (or waits) its samples fell in, in sampled ms per message."""
    names: dict[int, str] = {}
    by_group: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    threads_in_group: dict[str, set[int]] = collections.defaultdict(set)
    if profile.samples.exists():
        for line in profile.samples.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack.startswith("thread (") or not count_text.isdigit():
                continue
            count = int(count_text)
            head, *frames = stack.split(";")
            tid_text, _, name = head.removeprefix("thread (").partition(")")
            tid = int(tid_text, 16) if tid_text.startswith("0x") else int(tid_text)
            name = name.removeprefix(":").strip() or "?"
            names[tid] = name
            group = name.rstrip("0123456789").rstrip("_")
            threads_in_group[group].add(tid)
            totals[group] += count
            named = [frame_name(f) for f in frames]
            leaf = named[-1] if named else "(no Python frame)"
            if leaf in WAITS:
                by_group[group]["(" + WAITS[leaf] + ")"] += count
                continue
            own = leaf if leaf == UVLOOP else next((n for n in reversed(named) if "(kartero/" in n), leaf)
            by_group[group][own] += count
            leaves[group][leaf] += count
    cpu_by_group: collections.Counter[str] = collections.Counter()
    for tid, seconds in profile.cpu_s.items():
        name = names.get(tid, "(threads py-spy did not see)")
        cpu_by_group[name.rstrip("0123456789").rstrip("_")] += seconds
    per = 1000 / max(messages, 1)
    lines = [f"{messages} messages in {profile.wall_s:.1f} s; CPU of the whole process "
             f"{sum(profile.cpu_s.values()) * per:.2f} ms/message"]  # fmt: skip
    steps: collections.Counter[tuple[str, str]] = collections.Counter()
    for group, counter in by_group.items():
        for where, n in counter.items():
            if not where.startswith("("):
                steps[(category(where), group)] += n
    if steps:
        lines.append("by step (sampled ms per message; gil mode: of the one core the threads share):")
        lines += [f"  {n / RATE * per:8.3f}  {step} [{group}]" for (step, group), n in steps.most_common()]
    for group, cpu in cpu_by_group.most_common():
        samples = totals.get(group, 0)
        if not samples and cpu * per < 0.005:
            continue  # threads that started and ended outside the samples, doing nothing to speak of
        count = len(threads_in_group.get(group, ())) or "?"
        lines.append(f"\n[{group}] {count} thread(s): CPU {cpu * per:.2f} ms/message; "
                     f"{samples / RATE:.1f} s sampled")  # fmt: skip
        if not samples:
            continue
        lines.append("  ms/message  share  nearest Kartero function (or wait)")
        for where, n in by_group[group].most_common(top):
            lines.append(f"  {n / RATE * per:10.3f}  {n / samples:5.1%}  {where}")
        busy = leaves[group]
        if busy:
            lines.append("  leaf frames when not waiting:")
            for where, n in busy.most_common(6):
                lines.append(f"  {n / RATE * per:10.3f}  {n / samples:5.1%}  {where}")
    return "\n".join(lines)

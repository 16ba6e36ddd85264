"""Kartero on SQLite against Kartero on PostgreSQL (one process, two nodes, `serve --workers 2`), one run.

    python bench/cluster.py --sessions 50 --messages 100 --size 2048 --rounds 2
    python bench/cluster.py --sessions 10 --messages 200 --size 102400 --rounds 2
    python bench/cluster.py --setups pg,pg-2nodes --profile /tmp/pg      # py-spy, pg_stat_statements, waits
    python bench/cluster.py --smtp 0 --imap 5000                         # IMAP FETCH/SEARCH only

SMTP accept: the load of bench/smtp_accept.py (its client process, imported, not copied: N sessions x M
messages of S bytes, MAIL, RCPT, DATA, body, no pipelining) against each setup in turn, every round:

- `sqlite`: one `kartero serve` on the embedded store (the default);
- `pg`: one `kartero serve` on PostgreSQL;
- `pg-2nodes`: two `kartero serve` processes (nodes) on 127.0.0.2 and 127.0.0.3, same database, the
  sessions split between them by the one load client;
- `pg-2workers`: `kartero serve --workers 2` on PostgreSQL, where this checkout has it (else the row says
  it was not measured).

PostgreSQL is a private server (tests/pgserver.py) started for the run with fsync, full_page_writes and
synchronous_commit on, PostgreSQL's production defaults: a 250 waits for the WAL flush, as it waits for
SQLite's. Each setup gets a fresh database (`kartero db init`) or data folder. Printed per setup: msgs/s,
p50/p99 latency (MAIL to the 250 after the body), CPU per message of Kartero's processes and of
PostgreSQL's (postmaster and backends), and the ratio of each setup's median rate to SQLite's.

IMAP (`--imap N`): bench/imap_bench.py's mailbox of N generated messages and its measurements (LOGIN,
SELECT, `UID FETCH 1:* (... ENVELOPE)`, `FETCH 1:* BODY.PEEK[]`, `UID SEARCH SUBJECT`, STORE, APPEND),
one Kartero process on SQLite, then one on PostgreSQL, each round.

`--profile PREFIX`: py-spy on the (first) Kartero process as in smtp_accept.py (bench/thread_profile.py),
and from PostgreSQL: pg_stat_statements over the load (calls, mean and total time per statement; not the
WAL flush of COMMIT, which runs after the statement's hook) and what the database's sessions were doing,
sampled every 10 ms from pg_stat_activity (on CPU, waiting for the WAL flush, for the write lock, or idle
in a transaction waiting for Kartero's next statement). Take rates from runs without it.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.smtp_accept import (  # noqa: E402
    Result,
    check_body,
    check_stored,
    cpu_seconds,
    fetch_last,
    free_port,
    kartero_config,
    make_body,
    run_split_load,
    stop,
    wait_port,
)
from tests.pgserver import PrivatePostgres  # noqa: E402

SETUPS = ("sqlite", "pg", "pg-2nodes", "pg-2workers")
NODE_HOSTS = ("127.0.0.2", "127.0.0.3")
PASSWORD = "pw"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@dataclass
class Running:
    """A setup under load: the SMTP listeners to spread the sessions over, Kartero's processes."""

    targets: tuple[tuple[str, int], ...]
    imap: tuple[str, int]
    database: str  # PostgreSQL's database name; "" on SQLite
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid, children=True) for p in self.procs)


@dataclass
class Row:
    setup: str
    result: Result | None  # None: not measured (the reason in `note`)
    kartero_cpu_s: float = 0.0
    pg_cpu_s: float | None = None
    note: str = ""


def has_workers() -> bool:
    """Does this checkout's `kartero serve` take --workers?"""
    out = subprocess.run([sys.executable, "-m", "kartero", "serve", "--help"], capture_output=True, text=True,
                         env=ENV, cwd=ROOT, check=False).stdout  # fmt: skip
    return "--workers" in out


def cli(config: Path, *args: str, stdin: bytes = b"") -> None:
    done = subprocess.run([sys.executable, "-m", "kartero", "-c", str(config), *args], input=stdin,
                          capture_output=True, env=ENV, cwd=ROOT, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"kartero {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")


@contextmanager
def setup(name: str, folder: Path, postgres: PrivatePostgres | None, rcpt: str) -> Iterator[Running]:
    """Start the setup's Kartero process(es) on a fresh store; stop them at the end."""
    hosts = NODE_HOSTS if name == "pg-2nodes" else ("127.0.0.1",)
    tables, url = "", ""
    if name != "sqlite":
        assert postgres is not None
        url = postgres.new_database()
    configs = []
    for n, host in enumerate(hosts):
        node = folder / f"node{n}"
        node.mkdir(parents=True)
        if name != "sqlite":
            tables = f'[store]\nbackend = "postgresql"\nurl = "{url}"\nnode = "bench{n}"\n'
        port, imap_port = free_port(), free_port()
        configs.append((host, port, imap_port, kartero_config(node, port, imap_port, host, tables)))
    if name != "sqlite":
        cli(configs[0][3], "db", "init")
    cli(configs[0][3], "user", "add", rcpt, "--password-stdin", stdin=PASSWORD.encode() + b"\n")
    database = url.rpartition("/")[2]
    running = Running(tuple((h, p) for h, p, _, _ in configs), (configs[0][0], configs[0][2]), database)
    workers = ["--workers", "2"] if name == "pg-2workers" else []
    try:
        for host, port, _, config in configs:
            command = [sys.executable, "-m", "kartero", "-c", str(config), "serve", *workers]
            running.procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, env=ENV, cwd=ROOT))
            wait_port(port, 30, host)
        yield running
    finally:
        for proc in running.procs:
            stop(proc)


# -- what PostgreSQL was doing ------------------------------------------------------------------------------


class PgWatch:
    """pg_stat_statements over one load, and pg_stat_activity sampled every 10 ms: the state and wait event
    of each of the database's client sessions (what the committer's transaction waits in)."""

    def __init__(self, postgres: PrivatePostgres, database: str) -> None:
        import psycopg

        self.database = database
        self.conn = psycopg.connect(postgres.url("postgres"), autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.conn.execute("SELECT pg_stat_statements_reset()")
        self.samples: collections.Counter[str] = collections.Counter()
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.ticks += 1
            for state, wait in self.conn.execute(
                "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'on CPU') FROM pg_stat_activity"
                " WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND application_name LIKE 'kartero%%' AND state <> 'idle'",
                (self.database,),
            ):  # fmt: skip
                self.samples[f"{state}: {wait}"] += 1

    def report(self, messages: int) -> str:
        self._stop.set()
        self._thread.join()
        per = 1000 / max(messages, 1)
        lines = [f"PostgreSQL sessions of the database, sampled every 10 ms over {self.ticks} ticks "
                 "(ms per message: busy session-time in each state; 'idle in transaction: Client:ClientRead' "
                 "is a transaction waiting for Kartero's next statement):"]  # fmt: skip
        lines += [f"  {n * 10 / max(messages, 1):8.3f}  {where}" for where, n in self.samples.most_common(10)]
        rows = self.conn.execute(
            "SELECT calls, total_exec_time, mean_exec_time, rows, regexp_replace(query, '\\s+', ' ', 'g')"
            " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s"
            " ORDER BY total_exec_time DESC LIMIT 14",
            (self.database,),
        ).fetchall()  # fmt: skip
        calls = sum(r[0] for r in self.conn.execute(
            "SELECT calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
            (self.database,)))  # fmt: skip
        lines.append(f"pg_stat_statements: {calls} statements, {calls / max(messages, 1):.1f} per message;"
                     " by total time (calls, ms per message, mean ms, statement):")  # fmt: skip
        for count, total, mean, _, query in rows:
            lines.append(f"  {count:7d} {total * per / 1000:8.3f} {mean:8.3f}  {query[:110]}")
        self.conn.close()
        return "\n".join(lines)


# -- the SMTP rounds ------------------------------------------------------------------------------------


def bench_setup(name: str, round_no: int, folder: Path, args: argparse.Namespace, postgres: PrivatePostgres | None,
                body: bytes, profiles: list[str]) -> Row:  # fmt: skip
    label = f"{name} #{round_no + 1}"
    if name == "pg-2workers" and not has_workers():
        return Row(label, None, note="not measured: this checkout's `kartero serve` has no --workers yet")
    with setup(name, folder, postgres, args.rcpt) as running:
        pg_cpu: Callable[[], float] | None = None
        if name != "sqlite" and postgres is not None and postgres.process is not None:
            pg_pid = postgres.process.pid
            pg_cpu = lambda: cpu_seconds(pg_pid, children=True)  # noqa: E731
        watch = None
        if args.profile and name != "sqlite":
            assert postgres is not None
            watch = PgWatch(postgres, running.database)
        k0, p0 = running.cpu(), pg_cpu() if pg_cpu else None

        def load() -> Result:
            return run_split_load(label, running.targets, args.sessions, args.messages, args.size, args.rcpt)

        if args.profile:
            from bench.thread_profile import profiling, summarise

            output = args.profile.with_name(f"{args.profile.name}-{name}-{round_no + 1}.txt")
            output.parent.mkdir(parents=True, exist_ok=True)
            pid = running.procs[0].pid
            with profiling(pid, output, mode=args.profile_mode) as profile:
                result = load()
            profiles.append(f"{label}, py-spy samples of pid {pid} in {output}:\n"
                            f"{summarise(profile, result.messages // len(running.targets))}")  # fmt: skip
        else:
            result = load()
        row = Row(label, result, running.cpu() - k0, (pg_cpu() - p0) if pg_cpu and p0 is not None else None)
        if watch is not None:
            profiles.append(f"{label}, PostgreSQL:\n{watch.report(result.messages)}")
        if result.messages:
            check_stored(name, fetch_last(running.imap[1], args.rcpt, PASSWORD, running.imap[0]), body)
    return row


def print_rows(rows: list[Row]) -> None:
    print(f"\n{'setup':<16} {'messages':>8} {'msgs/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'kartero':>8} {'postgres':>8} {'client':>7}")  # fmt: skip
    for row in rows:
        r = row.result
        if r is None:
            print(f"{row.setup:<16} {row.note}")
            continue
        per = 1000 / max(r.messages, 1)
        pg = f"{row.pg_cpu_s * per:.2f}" if row.pg_cpu_s is not None else "-"
        client = f"{r.client_cpu_s * per:.2f}" if r.client_cpu_s is not None else "-"
        print(f"{row.setup:<16} {r.messages:>8} {r.rate:>7.0f} {r.percentile(0.5):>7.1f} {r.percentile(0.99):>7.1f} "
              f"{r.errors:>6} {row.kartero_cpu_s * per:>8.2f} {pg:>8} {client:>7}")  # fmt: skip
    print("kartero / postgres / client: ms of CPU (user + system) per message: Kartero's processes, PostgreSQL's"
          " (postmaster and backends), the python load client")  # fmt: skip
    rates: dict[str, list[float]] = collections.defaultdict(list)
    for row in rows:
        if row.result is not None:
            rates[row.setup.split(" #")[0]].append(row.result.rate)
    if rates.get("sqlite"):
        base = statistics.median(rates["sqlite"])
        for name, values in rates.items():
            if name != "sqlite":
                print(f"ratio {name} / sqlite (median msgs/s): {statistics.median(values) / base:.2f}x "
                      f"({', '.join(f'{v:.0f}' for v in values)} against {base:.0f})")  # fmt: skip


# -- the IMAP rounds ------------------------------------------------------------------------------------


def bench_imap(args: argparse.Namespace, postgres: PrivatePostgres | None, tmp: Path) -> None:
    from bench.imap_bench import make_messages, measure, start_kartero

    messages = make_messages(args.imap)
    extra = make_messages(args.appends, seed=11)
    print(f"\nIMAP: mailbox of {len(messages)} messages, {sum(map(len, messages)) / 1e6:.1f} MB", flush=True)
    table: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    backends = ["sqlite"] + (["pg"] if postgres is not None else [])
    for round_no in range(args.rounds):
        for backend in backends:
            folder = tmp / f"imap-{backend}-{round_no}"
            folder.mkdir()
            url = postgres.new_database() if backend == "pg" and postgres is not None else ""
            if url:
                from kartero.store.pg_db import migrate

                migrate(url)
            print(f"  {backend} #{round_no + 1} ...", flush=True)
            server = start_kartero(folder, messages, url)
            try:
                table[backend].append(measure(server, 0, args.appends, extra))
            finally:
                server.stop()
    print(f"\n{'':28} " + " ".join(f"{b + ' (each round)':>26}" for b in backends) + "  pg / sqlite (median)")
    for key in table["sqlite"][0]:
        cells = [", ".join(f"{t[key]:.1f}" for t in table[b]) for b in backends]
        line = f"{key:28} " + " ".join(f"{c:>26}" for c in cells)
        if "pg" in table:
            s, p = statistics.median(t[key] for t in table["sqlite"]), statistics.median(t[key] for t in table["pg"])
            cost = (s / p if "/s" in key else p / s) if s and p else float("nan")
            line += f"  {cost:.2f}x"
        print(line)
    print("pg / sqlite: how many times PostgreSQL's cost (time) is SQLite's, or SQLite's rate is PostgreSQL's")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--messages", type=int, default=100, help="messages per session")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--rcpt", default="bob@example.test")
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, of: {', '.join(SETUPS)}")
    parser.add_argument("--rounds", type=int, default=1, help="every setup once a round, in turn")
    parser.add_argument("--smtp", type=int, default=1, help="0: no SMTP load (IMAP only)")
    parser.add_argument("--imap", type=int, default=0, metavar="N", help="IMAP rows with a mailbox of N messages")
    parser.add_argument("--appends", type=int, default=300, help="IMAP APPENDs timed")
    parser.add_argument("--profile", type=Path, metavar="PREFIX", help="py-spy and PostgreSQL statistics")
    parser.add_argument("--profile-mode", choices=("gil", "wall"), default="gil")
    args = parser.parse_args()
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    for name in setups:
        if name not in SETUPS:
            raise SystemExit(f"unknown setup {name!r}: one of {', '.join(SETUPS)}")
    body = make_body(args.size)
    check_body(body)
    signal.signal(signal.SIGTERM, _interrupted)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; SMTP load: {args.sessions} sessions x "
          f"{args.messages} messages x {args.size} bytes" if args.smtp else "")  # fmt: skip
    postgres = None
    if any(s != "sqlite" for s in setups) or args.imap:
        settings = {"shared_preload_libraries": "pg_stat_statements"} if args.profile else {}
        postgres = PrivatePostgres(durable=True, settings=settings)
    rows: list[Row] = []
    profiles: list[str] = []
    try:
        if postgres is not None:
            postgres.start()
            print("PostgreSQL " + postgres.psql("SHOW server_version").strip() + ": fsync " +
                  postgres.psql("SHOW fsync").strip() + ", synchronous_commit " +
                  postgres.psql("SHOW synchronous_commit").strip())  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="kartero-cluster-bench-") as tmp:
            for round_no in range(args.rounds if args.smtp else 0):
                for name in setups:
                    folder = Path(tmp) / f"{name}-{round_no}"
                    row = bench_setup(name, round_no, folder, args, postgres, body, profiles)
                    if row.result is not None:
                        print(f"{row.setup}: {row.result.rate:.0f} msgs/s, load average {os.getloadavg()[0]:.1f}",
                              flush=True)  # fmt: skip
                    rows.append(row)
            if rows:
                print_rows(rows)
            for text in profiles:
                print("\n" + text)
            if args.imap:
                bench_imap(args, postgres, Path(tmp))
    finally:
        if postgres is not None:
            postgres.close()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("interrupted; the servers the bench started are stopped") from None

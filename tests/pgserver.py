"""A private PostgreSQL server for tests: initdb into a temporary folder, its own port on loopback,
stopped and removed at teardown. Never touches a system instance.

Run as root (CI), the server runs as the `postgres` user Debian's package creates (PostgreSQL refuses
to run as root). Each test gets a database of its own from `PrivatePostgres.new_database()`.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any


def bin_dir() -> Path | None:
    """The folder of initdb/postgres: Debian keeps them under /usr/lib/postgresql/VERSION/bin."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """One server for a test session; `url(db)` for libpq."""

    def __init__(
        self, host: str = "127.0.0.1", *, durable: bool = False, settings: dict[str, str] | None = None
    ) -> None:
        """`durable`: fsync and full-page writes on, as a production server runs (the benchmarks, which
        compare with SQLite's fsyncs); tests run without them. `settings`: more `-c NAME=VALUE`."""
        found = bin_dir()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.bin = found
        self.host = host
        self.port = _free_port(host)
        self.user: str | None = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="kartero-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.sockets.mkdir()
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.root, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._template = False
        self._spare_maker = ThreadPoolExecutor(1, thread_name_prefix="spare-database")
        self._spare: Future[str] | None = None  # the next database of `migrated_database`, being copied
        self._dropper = ThreadPoolExecutor(1, thread_name_prefix="drop-database")
        self._drops: list[Future[None]] = []
        self._finished: list[str] = []  # handed out to a test that has not ended yet: `drop_finished`
        # Whether a database asked for now outlives the test being run (a module-scoped fixture's):
        # tests/conftest.py sets it; such databases stay until the server is removed.
        self.is_shared: Callable[[], bool] = lambda: False
        self._admin_conn: Any = None
        self.log = self.root / "postgres.log"
        self.durable = durable
        self.settings = dict(settings or {})

    def start(self) -> None:
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                   "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])  # fmt: skip
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            self.log.touch()
            os.chown(self.log, entry.pw_uid, entry.pw_gid)
        self._launch()

    def _launch(self) -> None:
        # Tests kill Kartero, never the machine: PostgreSQL's own fsync buys them nothing. A benchmark
        # must pay it, as production does (PostgreSQL's defaults).
        if self.durable:
            durability = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
        else:
            durability = {"fsync": "off", "full_page_writes": "off"}
        settings = {"listen_addresses": self.host, "max_connections": "300", "shared_buffers": "64MB", **durability,
                    **self.settings}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.sockets),
                 *(arg for name, value in settings.items() for arg in ("-c", f"{name}={value}"))],
                stdout=log, stderr=log, user=self.user, start_new_session=True, cwd=self.root,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text(errors='replace')[-2000:]}")
            ready = subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
                                   check=False)  # fmt: skip
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not become ready in 30 s")

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(argv, capture_output=True, user=self.user, check=False, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {result.stderr.decode(errors='replace')}")

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p",
             str(self.port), "-U", "postgres", "-d", database, "-c", sql],
            capture_output=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode()

    def url(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"kartero_{next(self._names)}"
        self._admin(f"CREATE DATABASE {name}")
        return self._hand_out(name)

    def migrated_database(self, *, keep: bool = False) -> str:
        """A fresh database with Kartero's schema (what `kartero db init` makes), copied from a template
        migrated once: CREATE DATABASE ... TEMPLATE is several times faster than migrating each one.

        The next one is copied meanwhile, on a connection and thread of its own: a copy costs a test
        0.2-0.4 s of waiting otherwise, and PostgreSQL makes it in its own process while the test runs.
        Each test still gets a database nobody has used. `keep`: not dropped when the test asking
        ends (it is for a later one, which `adopt`s it)."""
        if not self._template:
            from kartero.store.pg_db import migrate

            self._admin("CREATE DATABASE kartero_template")
            migrate(self.url("kartero_template"))
            self._template = True
        name = self._take_spare()
        if name is None:
            name = f"kartero_{next(self._names)}"
            self._copy_template(name, self._connection())
        self._spare = self._spare_maker.submit(self._make_spare)
        return self.url(name) if keep else self._hand_out(name)

    def _hand_out(self, name: str) -> str:
        if not self.is_shared():
            self._finished.append(name)
        return self.url(name)

    def adopt(self, url: str) -> None:
        """The database of `url` (asked for with `keep`) belongs to the test running now."""
        self._hand_out(url.rsplit("/", 1)[1])

    def drop_finished(self) -> None:
        """Drop, in the background, the databases handed out to the test that just ended (its servers
        are stopped). Each database is ~8 MB in ~400 files: kept, the hundreds a run makes cost the
        disk gigabytes of writes while tests ran, and removing them took 15-50 s at the end of the run.

        A database still in use (a server the test left running) is not dropped: PostgreSQL refuses
        DROP DATABASE while anyone is connected, after waiting up to 5 s for them to leave."""
        names, self._finished = self._finished, []
        self._drops = [f for f in self._drops if not f.done()]
        for name in names:
            self._drops.append(self._dropper.submit(self._drop, name))

    def _drop(self, name: str) -> None:
        import psycopg

        with contextlib.suppress(psycopg.Error), psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}".encode())

    def _copy_template(self, name: str, conn: Any) -> None:
        # FILE_COPY (PostgreSQL 15): copy the files rather than log every page, the faster for small ones.
        strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
        conn.execute(f"CREATE DATABASE {name} TEMPLATE kartero_template{strategy}".encode())

    def _make_spare(self) -> str:
        import psycopg

        name = f"kartero_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            self._copy_template(name, conn)
        return name

    def _take_spare(self) -> str | None:
        """The database copied in the background, once it is there; None if none was started or its
        copy failed (the server was stopped meanwhile, say)."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        try:
            return spare.result()
        except Exception:
            return None

    def _admin(self, sql: str) -> None:
        """A statement on the server's own database, through one kept connection (psql costs a process)."""
        self._connection().execute(sql.encode())

    def _connection(self) -> Any:
        import psycopg

        if self._admin_conn is None or self._admin_conn.closed or self._admin_conn.broken:
            self._admin_conn = psycopg.connect(self.url("postgres"), autocommit=True)
        return self._admin_conn

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended), after the copy of a spare database
        under way (it stays the next one `migrated_database` hands out)."""
        if self._spare is not None:
            with contextlib.suppress(Exception):
                self._spare.result()
        for drop in self._drops:
            with contextlib.suppress(Exception):
                drop.result()
        self._drops = []
        if self._admin_conn is not None:
            self._admin_conn.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown (SIGTERM would wait for every client)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def resume(self) -> None:
        """Start again after `stop()` (same folder, same port)."""
        self._launch()

    def restart(self) -> None:
        """Stop and start the same data folder on the same port (the database-away tests)."""
        self.stop()
        self._launch()

    def close(self) -> None:
        self.stop()
        self._spare_maker.shutdown()
        self._dropper.shutdown()
        shutil.rmtree(self.root, ignore_errors=True)

"""Run a real `kartero serve` on loopback with a config in a temporary folder, and look at its store."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

from kartero.auth import accounts
from kartero.auth.accounts import Directory, new_scram
from kartero.auth.passwords import hash_password
from kartero.auth.sasl import SCRAM_ITERATIONS
from kartero.store.backends import AnyStore, open_store
from kartero.tls import make_self_signed

KARTERO = [sys.executable, "-m", "kartero"]
PASSWORD = "secret-password"  # of the accounts `add_user` makes unless told otherwise


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run_cli(config: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*KARTERO, "-c", str(config), *args], input=stdin, capture_output=True, text=True, timeout=60
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kartero {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def run_cli_in_process(
    config: Path, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """What `run_cli` returns, from the same click commands run in this process by click's CliRunner:
    no interpreter start and imports (~0.4 s a call). Only for tests about a command's output, replies and
    exit code, whose commands keep no process state: the umask `kartero.cli.main` sets is put back, the
    output is decoded as `text=True` decodes it (UTF-8, universal newlines), and an exception the command
    lets escape (a traceback and exit 1 in a process) fails the test. The run holds `_patching`, so no
    server being made in another thread has `accounts` patched with its shortcuts meanwhile."""
    from click.testing import CliRunner

    from kartero.cli import main

    with _patching:
        umask = os.umask(0o077)
        try:
            result = CliRunner().invoke(main, ["-c", str(config), *args], input=stdin, catch_exceptions=False)
        finally:
            os.umask(umask)

    def text(data: bytes) -> str:
        return data.decode().replace("\r\n", "\n").replace("\r", "\n")

    completed = subprocess.CompletedProcess(
        ["kartero", "-c", str(config), *args], result.exit_code, text(result.stdout_bytes), text(result.stderr_bytes)
    )
    if check and completed.returncode != 0:
        raise AssertionError(f"kartero {' '.join(args)} failed ({completed.returncode}): {completed.stderr}")
    return completed


PORT_FIELDS = ("port", "imap_port", "imaps_port", "pop3_port", "pop3s_port", "submission_port", "submissions_port",
               "managesieve_port", "http_port", "https_port")  # fmt: skip


_certificates: dict[str, tuple[bytes, bytes]] = {}  # host name: (cert, key) PEM, made once per test run


def self_signed(cert: Path, key: Path, hostname: str) -> None:
    """The files `make_self_signed(cert, key, [hostname])` writes (the key with mode 0600), made once
    per host name and test run: making an RSA-2048 key costs every server start 0.05-0.15 s otherwise,
    and no test depends on two servers having different keys."""
    if hostname not in _certificates:
        make_self_signed(cert, key, [hostname])
        _certificates[hostname] = (cert.read_bytes(), key.read_bytes())
        return
    cert_bytes, key_bytes = _certificates[hostname]
    cert.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert.write_bytes(cert_bytes)


_hashes: dict[tuple[str, str, int], str] = {}  # (kind, password, SCRAM rounds): what it stored, made once per run
_patching = threading.RLock()  # one thread at a time patches `accounts` (servers are also made in a thread)


def _hash_once(password: str) -> str:
    key = ("argon2", password, 0)
    if key not in _hashes:
        _hashes[key] = hash_password(password)
    return _hashes[key]


def _scram_once(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    key = ("scram", password, iterations)
    if key not in _hashes:
        _hashes[key] = new_scram(password, iterations)
    return _hashes[key]


class PortTaken(AssertionError):
    """A port chosen as free was taken by another process before the server could bind it."""


@dataclass
class KarteroServer:
    """One Kartero instance: its folder, config, port, process and log."""

    root: Path
    host: str = "127.0.0.1"
    domains: tuple[str, ...] = ("example.test",)
    hostname: str = "mx.example.test"
    extra_config: str = ""
    limits: str = ""
    tls: bool = True
    checks: bool = False  # SPF/DKIM/DMARC on the MX listener: off unless a test brings its DNS zone
    port: int = 0
    imap_port: int = 0
    imaps_port: int = 0
    pop3_port: int = 0
    pop3s_port: int = 0
    submission_port: int = 0
    submissions_port: int = 0
    managesieve_port: int = 0
    http: bool = False  # the HTTP listeners (http, and https with tls): off unless a test is about them
    plain_http: bool = True  # with `http`: the plain http listener too (False: https alone)
    http_port: int = 0
    https_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None
    _chosen_ports: list[str] = field(default_factory=list)
    # PostgreSQL: the database URL (servers of one cluster share one); None: the embedded store, unless
    # `new_database` is set (the integration conftest sets it for the tests run on both backends): then
    # each server gets a database of its own; "": the embedded store whatever `new_database` says.
    store_url: str | None = None
    node: str = ""
    lease: str = ""  # [store] lease, e.g. "5s"
    serve_args: tuple[str, ...] = ()  # e.g. ("--workers", "2")
    new_database: ClassVar[Callable[[], str] | None] = None

    def __post_init__(self) -> None:
        if self.store_url is None and KarteroServer.new_database is not None:
            self.store_url = KarteroServer.new_database()
        self.root.mkdir(parents=True, exist_ok=True)
        self._chosen_ports = [name for name in PORT_FIELDS if not getattr(self, name)]
        self._choose_ports()
        self.config = self.root / "kartero.toml"
        self._write_config()

    def _choose_ports(self) -> None:
        """Free ports for the listeners the test did not fix (free now; another process may take one
        before the server binds it, which `start` handles)."""
        for name in self._chosen_ports:
            setattr(self, name, free_port(self.host))

    def _write_config(self) -> None:
        tls_section = ""
        if self.tls:
            cert, key = self.root / "tls" / "cert.pem", self.root / "tls" / "key.pem"
            if not cert.exists():
                self_signed(cert, key, self.hostname)
            tls_section = '[tls]\ncert = "tls/cert.pem"\nkey = "tls/key.pem"\n'
        domains = ", ".join(f'"{d}"' for d in self.domains)
        self.config.write_text(
            f'hostname = "{self.hostname}"\n'
            f"domains = [{domains}]\n"
            'data_dir = "data"\n'
            f"{self.extra_config}\n"
            + (
                ""
                if self.checks or "[inbound]" in self.extra_config
                else "[inbound]\nspf = false\ndkim = false\ndmarc = false\n"
            )
            + "[listen]\n"
            f'smtp = ["{self.host}:{self.port}"]\n'
            f'imap = ["{self.host}:{self.imap_port}"]\n'
            f'pop3 = ["{self.host}:{self.pop3_port}"]\n'
            f'submission = ["{self.host}:{self.submission_port}"]\n'
            f'managesieve = ["{self.host}:{self.managesieve_port}"]\n'
            + (
                f'imaps = ["{self.host}:{self.imaps_port}"]\npop3s = ["{self.host}:{self.pop3s_port}"]\n'
                f'submissions = ["{self.host}:{self.submissions_port}"]\n'
                if self.tls
                else ""
            )
            + (f'http = ["{self.host}:{self.http_port}"]\n' if self.http and self.plain_http else "")
            + (f'https = ["{self.host}:{self.https_port}"]\n' if self.http and self.tls else "")
            + f"{tls_section}"
            + (
                f'[store]\nbackend = "postgresql"\nurl = "{self.store_url}"\nnode = "{self.node or self.host}"\n'
                + (f'lease = "{self.lease}"\n' if self.lease else "")
                if self.store_url
                else ""
            )
            + "[limits]\n"
            f"{self.limits}\n"
        )

    # -- process ---------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 20.0) -> None:
        for attempt in range(3):
            try:
                self._start(timeout_s)
                return
            except PortTaken:
                if attempt == 2 or not self._chosen_ports:
                    raise
                self.log_lines.clear()
                self._choose_ports()
                self._write_config()

    def _start(self, timeout_s: float) -> None:
        assert self.process is None or self.process.poll() is not None
        self.process = subprocess.Popen(
            [*KARTERO, "-c", str(self.config), "serve", *self.serve_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        ready = threading.Event()

        def read_stdout() -> None:
            assert self.process and self.process.stdout
            for raw in self.process.stdout:
                if raw.strip() == b"kartero ready":
                    ready.set()

        def read_stderr() -> None:
            assert self.process and self.process.stderr
            for raw in self.process.stderr:
                self.log_lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

        threading.Thread(target=read_stdout, daemon=True).start()
        self._reader = threading.Thread(target=read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.05):
            if self.process.poll() is not None:
                time.sleep(0.2)
                if "address already in use" in self.log:
                    raise PortTaken(self.log)
                raise AssertionError(f"kartero exited with {self.process.returncode}: {self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"kartero not ready after {timeout_s}s: {self.log}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout_s)
        if self._reader:
            self._reader.join(5)
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def log(self) -> str:
        return "\n".join(self.log_lines)

    def wait_events(self, event: str, count: int, timeout_s: float = 10.0) -> list[str]:
        """The log lines of `event` once there are at least `count` (the log is read by a thread, so a
        line may arrive a moment after the reply the test saw)."""
        wait_for(lambda: len(self.log_events(event)) >= count, timeout_s)
        return self.log_events(event)

    def log_events(self, event: str) -> list[str]:
        return [line for line in self.log_lines if f"event={event} " in line or line.endswith(f"event={event}")]

    # -- accounts and store ----------------------------------------------------------------------------

    def add_user(self, address: str, password: str = PASSWORD, *, admin: bool = False) -> None:
        """Add an account through the same Directory call the CLI makes (test_cli covers the CLI)."""
        with self.directory() as directory:
            directory.add_user(address, password, is_admin=admin)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://{self.host}:{self.https_port}"

    def add_alias(self, source: str, destination: str) -> None:
        with self.directory() as directory:
            directory.add_alias(source, destination)

    @contextlib.contextmanager
    def directory(self) -> Iterator[Directory]:
        """The store's Directory, as the CLI makes it, except that the accounts it adds share one argon2
        hash and one set of SCRAM keys (salt included) per password: each costs ~60 ms of CPU, hundreds
        of accounts are added per run, and the servers verify a shared hash as any other (test_cli
        covers `kartero user add`, which makes its own)."""
        store = self.store()
        try:
            with _patching, mock.patch.multiple(accounts, hash_password=_hash_once, new_scram=_scram_once):
                yield Directory(store.accounts, self.domains)
        finally:
            store.close()

    def store(self) -> AnyStore:
        if self.store_url:
            return open_store(self.root / "data", "postgresql", self.store_url)
        return open_store(self.root / "data")

    def messages(self, address: str, mailbox: str = "INBOX") -> list[bytes]:
        """Every message in `address`'s mailbox, oldest first, as stored (trace headers included)."""
        store = self.store()
        try:
            account = store.accounts.get_account(address)
            assert account is not None, f"no account {address}"
            box = store.mail.get_mailbox(account.id, mailbox)
            assert box is not None
            return [store.mail.read_message(m.blob_id) for m in store.mail.message_rows(box.id)]
        finally:
            store.close()


@contextlib.contextmanager
def two_nodes(root: Path, url: str, users: dict[str, str],
              **kwargs: Any) -> Iterator[tuple[KarteroServer, KarteroServer]]:  # fmt: skip
    """Two Kartero nodes on one PostgreSQL database (node-a on 127.0.0.2, node-b on 127.0.0.3), `users`
    (address: password) added, both running; each must stop cleanly at the end."""
    a = KarteroServer(root / "a", host="127.0.0.2", store_url=url, node="node-a", **kwargs)
    b = KarteroServer(root / "b", host="127.0.0.3", store_url=url, node="node-b", **kwargs)
    for user, password in users.items():
        a.add_user(user, password)
    with ThreadPoolExecutor(2) as starting:  # each start is mostly waiting for its process: both at once
        for started in [starting.submit(node.start) for node in (a, b)]:
            started.result()
    yield a, b
    for node in (a, b):
        if node.process and node.process.poll() is None:
            assert node.stop() == 0, node.log


def strip_trace(stored: bytes) -> bytes:
    """The message as the client sent it: the stored bytes minus Kartero's Return-Path and Received."""
    assert stored.startswith(b"Return-Path: <"), stored[:80]
    rest = stored.split(b"\r\n", 1)[1]
    assert rest.startswith(b"Received: from "), rest[:80]
    # The Received header is folded with CRLF + TAB; it ends at the first CRLF not followed by a TAB.
    i = 0
    while True:
        i = rest.index(b"\r\n", i)
        if rest[i + 2 : i + 3] != b"\t":
            return rest[i + 2 :]
        i += 2


def tls_context() -> ssl.SSLContext:
    """A client context for our self-signed test certificates: create_default_context's, without the
    system's trust anchors it would load (~50 ms of CPU per context) and never consult (CERT_NONE)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def wait_for(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)

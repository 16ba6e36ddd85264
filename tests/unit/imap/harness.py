"""Drive the IMAP core (and, when a store is given, the real command handlers) with transcripts.

Script lines: `C: text` is a client line (CRLF added), `C! <bytes literal>` raw bytes, `S: text` an exact
server line (CRLF added), `S~ regex` a server line matched as a regular expression. Consecutive client
lines are sent together. Handlers run synchronously here; in the server they run in worker threads.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, field

from kartero.imap.commands import run
from kartero.imap.commands.view import Session
from kartero.imap.connection import (
    AppendData,
    CommandReady,
    CompressRequested,
    ConnectionClosed,
    Event,
    IdleDone,
    IdleStarted,
    ImapConnection,
    ImapSettings,
    LoginRequested,
    StartTLSRequested,
    Unauthenticated,
)
from kartero.imap.response import Status
from kartero.imap.syntax import Append
from kartero.store.spool import IncomingSpool, spool_dir
from kartero.store.sqlite import SQLiteStore

SETTINGS = ImapSettings(hostname="imap.example.test", append_limit=100_000, is_tls_available=True)
PASSWORD = "pw"


@dataclass
class Client:
    """One IMAP connection: the core plus (optionally) a session over a real store."""

    store: SQLiteStore | None = None
    is_loopback: bool = True
    settings: ImapSettings = SETTINGS
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn = ImapConnection(self.settings, is_loopback=self.is_loopback)
        self.conn.start()
        self.session: Session | None = None
        self.greeting = self.conn.data_to_send()
        # Large APPEND literals, written as the adapter does (kartero.net.imap_session).
        self.spool = IncomingSpool(spool_dir(self.store.root) if self.store is not None else None)

    def _drain(self) -> bytes:
        conn = self.conn
        while (event := conn.next_event()) is not None:
            self.events.append(event)
            match event:
                case LoginRequested(tag=tag, user=user, password=password):
                    account = self.store.accounts.get_account(user) if self.store else None
                    if password == PASSWORD and (self.store is None or account is not None):
                        if self.store is not None and account is not None:
                            self.session = Session(self.store.mail, account.id, account.address, conn.enabled,
                                                   spool_dir=spool_dir(self.store.root),
                                                   default_quota=self.settings.default_quota)  # fmt: skip
                        conn.login_result(tag, user)
                    else:
                        conn.login_result(tag, None)
                case CommandReady(tag=tag, command=command):
                    assert self.session is not None, "commands need a store-backed client"
                    if isinstance(command, Append) and command.spooled:
                        self.session.spooled_message = self.spool.finish()
                    handler = run(self.session, tag, command, append_limit=self.settings.append_limit)
                    while True:
                        try:
                            conn.send(next(handler))
                        except StopIteration as stop:
                            done = stop.value
                            break
                    self.session.spooled_message = None
                    self.spool.reset()
                    conn.finish(tag, done.status, done.text, done.code, done.state, done.bye)
                case AppendData(data=data, is_first=is_first):
                    if is_first:
                        self.spool.reset()
                    self.spool.write(data)
                case StartTLSRequested():
                    conn.tls_established()
                case IdleStarted() | CompressRequested() | ConnectionClosed():
                    pass
                case IdleDone(tag=tag):
                    conn.finish(tag, Status.OK, "IDLE terminated")
                case Unauthenticated():
                    if self.session is not None:
                        self.session.select(None)
                    self.session = None
        return conn.data_to_send()

    def send(self, data: bytes, *, bytewise: bool = False) -> bytes:
        out = b""
        for piece in [data[i : i + 1] for i in range(len(data))] if bytewise else [data]:
            self.conn.receive_data(piece)
            out += self._drain()
        return out

    def command(self, line: str) -> list[bytes]:
        """Send one command line; return the response lines (CRLF kept, literals inline)."""
        return self.send(line.encode() + b"\r\n").splitlines(keepends=True)

    def login(self, user: str = "bob@example.test") -> None:
        assert self.command(f"l1 LOGIN {user} {PASSWORD}")[-1].startswith(b"l1 OK")

    def select(self, mailbox: str = "INBOX") -> list[bytes]:
        lines = self.command(f"s1 SELECT {mailbox}")
        assert lines[-1].startswith(b"s1 OK"), lines
        return lines


def _steps(script: str) -> list[tuple[str, bytes]]:
    steps: list[tuple[str, bytes]] = []
    for raw in textwrap.dedent(script).strip("\n").splitlines():
        line = raw.strip()
        if not line:
            continue
        kind, rest = line[:2], line[3:]
        if kind == "C!":
            value = ast.literal_eval(rest)
            assert isinstance(value, bytes)
            steps.append(("C", value))
        elif kind == "C:":
            steps.append(("C", rest.encode() + b"\r\n"))
        elif kind in ("S:", "S~"):
            steps.append((kind, rest.encode()))
        else:
            raise ValueError(f"bad transcript line {raw!r}")
    return steps


def _check(got: bytes, expected: list[tuple[str, bytes]], context: str) -> None:
    lines = got.split(b"\r\n")
    assert lines[-1] == b"", f"{context}: output does not end with CRLF: {got!r}"
    lines = lines[:-1]
    want = [(k, v) for k, v in expected]
    assert len(lines) == len(want), f"{context}: expected {len(want)} lines, got:\n" + "\n".join(repr(x) for x in lines)
    for line, (kind, text) in zip(lines, want, strict=True):
        if kind == "S:":
            assert line == text, f"{context}: {line!r} != {text!r}"
        else:
            assert re.fullmatch(text, line), f"{context}: {line!r} !~ {text!r}"


def play(client_factory: object, script: str, *, bytewise_too: bool = True) -> Client:
    """Play `script` on a fresh client (and again byte by byte when the core alone is under test)."""
    steps = _steps(script)
    result = None
    for bytewise in (False, True) if bytewise_too else (False,):
        client: Client = client_factory()  # type: ignore[operator]
        out = client.greeting
        expected: list[tuple[str, bytes]] = []
        i = 0
        while i < len(steps):
            kind, data = steps[i]
            if kind != "C":
                expected.append((kind, data))
                i += 1
                continue
            chunk = b""
            while i < len(steps) and steps[i][0] == "C":
                chunk += steps[i][1]
                i += 1
            out += client.send(chunk, bytewise=bytewise)
        _check(out, expected, f"bytewise={bytewise}")
        result = result or client
    assert result is not None
    return result

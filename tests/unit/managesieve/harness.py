"""Plays the ManageSieve adapter for the core's tests: a store in a dict, passwords, SCRAM keys, a fake
script checker, and transcripts in the RFC's notation checked byte for byte."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kartero.auth.sasl import scram_credentials
from kartero.managesieve.connection import (
    ActivateScript,
    CheckRequested,
    ConnectionClosed,
    DeleteScript,
    Event,
    LoginRequested,
    ManageSieveConnection,
    ManageSieveSettings,
    Outcome,
    OutputReady,
    PutScript,
    RenameScript,
    ScramFinished,
    ScramRequested,
    ScriptsWanted,
    ScriptWanted,
    StartTLSRequested,
    Unauthenticated,
)

USER = "bob@example.test"
PASSWORD = "pw"
SCRAM_KEYS = scram_credentials(PASSWORD, b"0123456789abcdef", 4096)
SETTINGS = ManageSieveSettings(extensions=("fileinto", "vacation"), is_tls_available=True, max_script_size=100,
                               max_scripts=3, max_errors=20)  # fmt: skip
GREETING_PLAIN = (
    b'"IMPLEMENTATION" "Kartero"\r\n"SASL" ""\r\n"SIEVE" "fileinto vacation"\r\n"STARTTLS"\r\n'
    b'"MAXREDIRECTS" "5"\r\n"UNAUTHENTICATE"\r\n"VERSION" "1.0"\r\nOK "Kartero ManageSieve ready"\r\n'
)


def check(text: str) -> str | None:
    """The fake checker: a script is wrong where it says "error"."""
    at = text.find("error")
    if at < 0:
        return None
    line = text.count("\n", 0, at) + 1
    return f"{line}:{at - (text.rfind(chr(10), 0, at) + 1) + 1}: unknown command"


@dataclass
class Peer:
    """The core with an adapter that answers at once (or, with `unavailable`, that the store is away)."""

    is_tls: bool = False
    is_loopback: bool = True
    settings: ManageSieveSettings = SETTINGS
    scripts: dict[str, str] = field(default_factory=dict)
    active: str | None = None
    unavailable: bool = False
    events: list[Event] = field(default_factory=list)
    checker: Callable[[str], str | None] = check

    def __post_init__(self) -> None:
        self.conn = ManageSieveConnection(self.settings, is_tls=self.is_tls, is_loopback=self.is_loopback,
                                          sasl_nonce="SERVERNONCE")  # fmt: skip
        self.conn.start()
        self.greeting = self.conn.data_to_send()

    def send(self, data: bytes, *, bytewise: bool = False) -> bytes:
        out = b""
        for piece in [data[i : i + 1] for i in range(len(data))] if bytewise else [data]:
            self.conn.receive_data(piece)
            while (event := self.conn.next_event()) is not None:
                self.events.append(event)
                self.answer(event)
            out += self.conn.data_to_send()
        return out

    def answer(self, event: Event) -> None:
        conn = self.conn
        no_store = (StartTLSRequested, CheckRequested, Unauthenticated, OutputReady, ConnectionClosed)
        if self.unavailable and not isinstance(event, no_store):
            conn.unavailable()
            return
        match event:
            case LoginRequested(user=user, password=password):
                conn.login_result(user if (user, password) == (USER, PASSWORD) else None)
            case ScramRequested():
                conn.scram_credentials(SCRAM_KEYS)
            case ScramFinished(user=user, ok=ok):
                conn.login_result(user if ok else None)
            case StartTLSRequested():
                conn.tls_established()
            case CheckRequested(text=text):
                conn.check_result(self.checker(text))
            case ScriptsWanted():
                conn.scripts_result([(name, name == self.active) for name in sorted(self.scripts)])
            case ScriptWanted(name=name):
                conn.script_result(self.scripts.get(name))
            case PutScript(name=name, text=text, max_scripts=most):
                if name not in self.scripts and len(self.scripts) >= most:
                    conn.store_result(Outcome.MAXSCRIPTS)
                else:
                    self.scripts[name] = text
                    conn.store_result(Outcome.OK)
            case DeleteScript(name=name):
                if name not in self.scripts:
                    conn.store_result(Outcome.NONEXISTENT)
                elif name == self.active:
                    conn.store_result(Outcome.ACTIVE)
                else:
                    del self.scripts[name]
                    conn.store_result(Outcome.OK)
            case RenameScript(old=old, new=new):
                if old not in self.scripts:
                    conn.store_result(Outcome.NONEXISTENT)
                elif new in self.scripts and new != old:
                    conn.store_result(Outcome.ALREADYEXISTS)
                else:
                    self.scripts[new] = self.scripts.pop(old)
                    self.active = new if self.active == old else self.active
                    conn.store_result(Outcome.OK)
            case ActivateScript(name=name):
                if name is not None and name not in self.scripts:
                    conn.store_result(Outcome.NONEXISTENT)
                else:
                    self.active = name
                    conn.store_result(Outcome.OK)
            case Unauthenticated() | OutputReady() | ConnectionClosed():
                pass


def parse_transcript(script: str) -> tuple[bytes, bytes]:
    """C: lines joined with CRLF (a line ending in `\\` continues without one: a literal's last octets),
    and the S: lines the same way."""
    client, server = bytearray(), bytearray()
    for line in script.strip().splitlines():
        who, _, text = line.lstrip().partition(": ")
        if who not in ("C", "S") or not _:
            who, text = line.strip().rstrip(":"), ""
        target = client if who == "C" else server
        target += text.encode()[:-1] if text.endswith("\\") else text.encode() + b"\r\n"
    return bytes(client), bytes(server)


def run_transcript(script: str, **peer: object) -> Peer:
    """Feed the C: lines after the greeting, whole and one byte at a time: both must give the S: lines."""
    client, server = parse_transcript(script)
    whole = _peer(peer)
    assert whole.send(client) == server
    bytewise = _peer(peer)
    assert bytewise.send(client, bytewise=True) == server
    return whole


def _peer(options: dict[str, object]) -> Peer:
    scripts = options.get("scripts")
    return Peer(**{**options, "scripts": dict(scripts) if isinstance(scripts, dict) else {}})  # type: ignore[arg-type]


def logged_in(**peer: object) -> Peer:
    p = Peer(**peer)  # type: ignore[arg-type]
    assert p.send(b'AUTHENTICATE "PLAIN" "AGJvYkBleGFtcGxlLnRlc3QAcHc="\r\n') == b'OK "Logged in"\r\n'
    return p

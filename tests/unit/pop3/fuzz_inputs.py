"""Fuzz inputs for the POP3 core, the adapter that plays it, and the check of its output.

Shared by the hypothesis tests and bench/fuzz_cores.py (see tests/unit/auth/sasl_inputs.py for the
Chooser).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from kartero.pop3.connection import (
    MAX_PARTIAL_LINE,
    ConnectionClosed,
    LoginRequested,
    MaildropEntry,
    MessageWanted,
    Pop3Connection,
    Pop3Settings,
    StartTLSRequested,
    UpdateRequested,
)
from tests.unit.auth.sasl_inputs import PASSWORD, Chooser, b64, chance, choice, plain_message, user, word
from tests.unit.smtp.fuzz_inputs import cased, eol, split

SETTINGS = Pop3Settings(hostname="pop.example.test", is_tls_available=True, max_errors=50)
MESSAGES = [
    b"Subject: a\r\n\r\nbody\r\n",
    b".\r\n..\r\n.x\r\n",
    b"a\n.\r\nb\r\n.\n+OK injected\r\n",  # bare LF before a dot line
    b"no final newline",
    b"",
    b"\r\r\n.\r\r.\n\r",
    b"x" * 3000 + b"\r\n.",
]
NUMBERS = ["1", "2", "0", "3", "9" * 12, "\u00b2", "\u0661", "-1", "1 2", "", " 1", "01", "4294967296"]


def number(c: Chooser) -> str:
    return choice(c, NUMBERS)


def command(c: Chooser) -> bytes:
    match c.integer(0, 14):
        case 0:
            line = f"{cased(c, 'USER')} {user(c)}"
        case 1:
            line = f"{cased(c, 'PASS')} {choice(c, [PASSWORD, 'wrong', '', word(c, 'ab ', 5)])}"
        case 2:
            mechanism = choice(c, ["PLAIN", "plain", "", "LOGIN", "X" * 300])
            response = b64(plain_message(c)).decode() if chance(c, 70) else choice(c, ["=", "*", "!!", ""])
            if chance(c, 50):
                return f"{cased(c, 'AUTH')} {mechanism} {response}".encode() + eol(c)
            return f"{cased(c, 'AUTH')} {mechanism}".encode() + eol(c) + response.encode() + eol(c)
        case 3:
            line = cased(c, choice(c, ["CAPA", "STLS", "STAT", "RSET", "NOOP", "QUIT", "LIST", "UIDL"]))
        case 4 | 5:
            line = f"{cased(c, choice(c, ['LIST', 'UIDL', 'RETR', 'DELE']))} {number(c)}"
        case 6 | 7:
            line = f"{cased(c, 'TOP')} {number(c)} {number(c)}"
        case 8:
            line = choice(c, ["APOP bob 0123456789abcdef", "XTND", "", " ", "GET / HTTP/1.1", "STLS x", "QUIT x"])
        case 9:
            return choice(c, [b"A", b"USER ", b"\xff"]) * c.integer(200, 20_000) + eol(c)
        case 10:
            return c.binary(60)
        case 11:
            line = word(c, "ab 1\t\0\x7f\u00e9\u2028", 20)
        case _:
            line = choice(c, ["USER bob@example.test", f"PASS {PASSWORD}", "RETR 1", "TOP 1 1", "DELE 1"])
    data = line.encode()
    if chance(c, 3):
        data = data.replace(b"\xc3", b"\xc3\xc3")
    return data + eol(c)


def pop3_session(c: Chooser) -> bytes:
    start = [b"USER bob@example.test\r\nPASS " + PASSWORD.encode() + b"\r\n"] if chance(c, 70) else []
    return b"".join(start + [command(c) for _ in range(c.integer(0, 10))])


@dataclass
class Pop3Run:
    output: bytes
    events: list[object] = field(default_factory=list)
    max_buffered: int = 0


def drive_pop3(chunks: list[bytes], *, is_tls: bool, seed: int, defer_tls: bool) -> Pop3Run:
    """Feed `chunks` then EOF to a fresh POP3 core, answering every request at random (seeded)."""
    rng = random.Random(seed)
    conn = Pop3Connection(SETTINGS, is_tls=is_tls, is_loopback=rng.random() < 0.5)
    conn.start()
    run = Pop3Run(b"")
    out = bytearray(conn.data_to_send())
    tls_pending = False

    def drain() -> None:
        nonlocal tls_pending
        while (event := conn.next_event()) is not None:
            run.events.append(event)
            match event:
                case LoginRequested(password=secret):
                    if secret == PASSWORD and rng.random() < 0.8:
                        drop = [MaildropEntry(uid, rng.randint(0, 10**6)) for uid in range(1, rng.randint(0, 4) + 1)]
                        conn.login_result("bob@example.test", drop)
                    else:
                        conn.login_result(None)
                case MessageWanted():
                    data = rng.choice(MESSAGES)
                    conn.message_result(None if rng.random() < 0.1 else data)
                case UpdateRequested():
                    conn.update_result(rng.random() < 0.8)
                case StartTLSRequested():
                    if defer_tls:
                        tls_pending = True
                    else:
                        conn.tls_established()
        run.max_buffered = max(run.max_buffered, conn.buffered_bytes)
        out.extend(conn.data_to_send())

    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        drain()
    if tls_pending and not conn.is_closed:
        conn.tls_established()
        drain()
    run.output = bytes(out)
    assert conn.is_closed
    assert [e for e in run.events if isinstance(e, ConnectionClosed)] == run.events[-1:], run.events[-3:]
    return run


_STATUS = re.compile(rb"(\+OK|-ERR)(?: [\x20-\x7e]*)?")
_MULTI_LINE = (b"+OK Capability list follows", b"+OK listing follows", b"+OK message follows",
               b"+OK SASL mechanisms follow")  # fmt: skip


def check_pop3_responses(output: bytes) -> int:
    """Assert `output` is nothing but POP3 responses (RFC 1939 §3, RFC 2449 §4): status lines of printable
    ASCII up to 512 octets, `+ ` continuations, and multi-line responses whose lines are dot-stuffed and
    end in CRLF, so that a client splitting at CRLF and one splitting at LF read the same lines. Returns
    the number of responses."""
    assert output.count(b"\n") == output.count(b"\r\n") == output.count(b"\r"), "bare CR or LF"
    assert output.endswith(b"\r\n"), output[-80:]
    lines = output[:-2].split(b"\r\n")
    count = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        count += 1
        if line == b"+ ":
            continue
        assert _STATUS.fullmatch(line) and len(line) + 2 <= 512, line[:200]
        if line in _MULTI_LINE:
            while i < len(lines) and lines[i] != b".":
                assert not lines[i].startswith(b".") or lines[i].startswith(b".."), lines[i][:80]
                i += 1
            assert i < len(lines), "unterminated multi-line response"
            i += 1
    return count


@dataclass(frozen=True, slots=True)
class Pop3Case:
    """One generated input for the POP3 core and how it is played."""

    data: bytes
    chunks: list[bytes]
    is_tls: bool
    seed: int  # of the decisions
    defer_tls: bool


def pop3_case(c: Chooser) -> Pop3Case:
    data = pop3_session(c)
    return Pop3Case(data, split(c, data), chance(c, 50), c.integer(0, 2**32), chance(c, 50))


def play_pop3(case: Pop3Case) -> Pop3Run:
    """Play a case and check the outcome: the fuzz step of the tests and of the bench."""
    run = drive_pop3(case.chunks, is_tls=case.is_tls, seed=case.seed, defer_tls=case.defer_tls)
    check_pop3_responses(run.output)
    assert run.max_buffered <= MAX_PARTIAL_LINE, run.max_buffered
    return run


def run_pop3_input(c: Chooser) -> Pop3Run:
    return play_pop3(pop3_case(c))

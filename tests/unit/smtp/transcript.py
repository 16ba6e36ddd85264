"""Play an SMTP transcript against the sans-I/O server core.

Script lines: `S: text` is what the server must send next (exactly, CRLF added); `C: text` is a line the
client sends (CRLF added); `C! <python bytes literal>` sends raw bytes and `S! <python bytes literal>`
expects them. Consecutive client lines are sent together, as a pipelining client would. Every script is
played twice: once in whole writes and once one byte at a time; both must give the same output.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

from kartero.auth.sasl import scram_credentials
from kartero.mail import replies
from kartero.mail.replies import Reply
from kartero.smtp.events import (
    AuthRequested,
    ConnectionClosed,
    Event,
    MailFrom,
    MessageReceived,
    MessageRefused,
    RcptTo,
    ScramFinished,
    ScramRequested,
    StartTLSRequested,
)
from kartero.smtp.server import ServerConnection, ServerSettings

SETTINGS = ServerSettings(hostname="mx.example.test", max_message_size=10_000, max_recipients=5, max_errors=10)
TLS_SETTINGS = ServerSettings(hostname="mx.example.test", max_message_size=10_000, is_tls_available=True)
SUBMISSION_SETTINGS = ServerSettings(
    hostname="mx.example.test",
    max_message_size=10_000,
    is_tls_available=True,
    auth_mechanisms=("PLAIN", "LOGIN", "SCRAM-SHA-256"),
    is_auth_required=True,
)
# The one password the transcripts' accounts have, and its SCRAM keys (fixed salt: reproducible).
PASSWORD = "pencil"
SCRAM = scram_credentials(PASSWORD, b"fixed-salt-16byt", 4096)


@dataclass
class Recorder:
    """The decisions a test plays, and what the core handed over."""

    messages: list[MessageReceived] = field(default_factory=list)
    refused: list[MessageRefused] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    rcpt_reply: Callable[[RcptTo], Reply] | None = None
    mail_reply: Callable[[MailFrom], Reply] | None = None
    message_reply: Reply = replies.MESSAGE_ACCEPTED

    def decide(self, conn: ServerConnection, event: Event) -> None:
        self.events.append(event)
        match event:
            case MailFrom():
                conn.answer(self.mail_reply(event) if self.mail_reply else replies.SENDER_OK)
            case RcptTo(path=path):
                if self.rcpt_reply:
                    conn.answer(self.rcpt_reply(event))
                elif path.mailbox and path.mailbox.local_part == "unknown":
                    conn.answer(replies.NO_SUCH_USER)
                else:
                    conn.answer(replies.RECIPIENT_OK)
            case MessageReceived():
                self.messages.append(event)
                conn.answer(self.message_reply)
            case MessageRefused():
                self.refused.append(event)
            case StartTLSRequested():
                conn.tls_established()
            case AuthRequested(user=user, password=password):
                conn.auth_result(user if password == PASSWORD else None)
            case ScramRequested():
                conn.scram_credentials(SCRAM)
            case ScramFinished(user=user, ok=ok):
                conn.auth_result(user if ok else None)
            case ConnectionClosed():
                pass


def _parse(script: str) -> list[tuple[str, bytes]]:
    steps: list[tuple[str, bytes]] = []
    for raw in textwrap.dedent(script).strip("\n").splitlines():
        line = raw.strip()
        if not line:
            continue
        kind, rest = line[:2], line[3:]
        if kind == "S:":
            steps.append(("S", rest.encode() + b"\r\n"))
        elif kind == "C:":
            steps.append(("C", rest.encode() + b"\r\n"))
        elif kind in ("C!", "S!"):
            value = ast.literal_eval(rest)
            assert isinstance(value, bytes)
            steps.append((kind[0], value))
        else:
            raise ValueError(f"bad transcript line {raw!r}")
    return steps


def _drain(conn: ServerConnection, recorder: Recorder) -> bytes:
    while (event := conn.next_event()) is not None:
        recorder.decide(conn, event)
    return conn.data_to_send()


def _play(
    script: str, settings: ServerSettings, recorder: Recorder, bytewise: bool, eof: bool, is_tls: bool
) -> tuple[list[bytes], ServerConnection]:
    conn = ServerConnection(settings, is_tls=is_tls, sasl_nonce="srvnonce")
    conn.start()
    got: list[bytes] = []
    pending = _drain(conn, recorder)
    steps = _parse(script)
    i = 0
    while i < len(steps):
        kind, data = steps[i]
        if kind == "S":
            got.append(data)
            i += 1
            continue
        chunk = b""
        while i < len(steps) and steps[i][0] == "C":
            chunk += steps[i][1]
            i += 1
        pieces = [chunk[j : j + 1] for j in range(len(chunk))] if bytewise else [chunk]
        for piece in pieces:
            conn.receive_data(piece)
            pending += _drain(conn, recorder)
    if eof:
        conn.receive_data(b"")
        pending += _drain(conn, recorder)
    return [pending], conn


def run_transcript(
    script: str,
    *,
    settings: ServerSettings = SETTINGS,
    recorder: Recorder | None = None,
    eof: bool = False,
    is_tls: bool = False,
) -> tuple[Recorder, ServerConnection]:
    """Play `script` (whole writes, then byte by byte) and assert the server said exactly the S: lines."""
    expected = b"".join(data for kind, data in _parse(script) if kind == "S")
    results = []
    for bytewise in (False, True):
        rec = Recorder(
            rcpt_reply=recorder.rcpt_reply if recorder else None,
            mail_reply=recorder.mail_reply if recorder else None,
            message_reply=recorder.message_reply if recorder else replies.MESSAGE_ACCEPTED,
        )
        out, conn = _play(script, settings, rec, bytewise, eof, is_tls)
        assert b"".join(out).decode() == expected.decode(), f"bytewise={bytewise}"
        results.append((rec, conn))
    first, second = results[0][0], results[1][0]
    assert [m.data for m in first.messages] == [m.data for m in second.messages]
    return results[0]

"""The reference outcome of a milter: a private Postfix with `smtpd_milters` pointing at it, relaying
what it accepts to an SMTP sink in this process, so that a test can compare, for the same SMTP
conversation, the replies Postfix gives and the message it delivers with Kartero's.

    with PostfixReference(root, milter.postfix_address) as postfix:
        outcome = postfix.send("alice@example.org", ["bob@example.test"], message)
        outcome.replies    # [("MAIL", 250, "2.1.0 Ok"), ("RCPT", 550, "5.7.1 Command rejected"), ...]
        outcome.delivered  # [Delivered(sender, recipients, message without Postfix's Received:)]
        outcome.held       # quarantined: Postfix put it on hold

Needs root (Postfix's daemons) and a 0755 `root` folder outside pytest's private tmp (see postfix.py).
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.integration.harness import free_port
from tests.integration.postfix import PostfixInstance

QUEUED = re.compile(rb"queued as ([0-9A-Za-z]+)")


@dataclass(frozen=True)
class Delivered:
    sender: str
    recipients: tuple[str, ...]
    message: bytes  # as Postfix relayed it, its own Received: field (the top one) taken off


@dataclass
class Outcome:
    replies: list[tuple[str, int, str]]  # (command, code, text) for EHLO, MAIL, each RCPT, end of DATA
    delivered: list[Delivered] = field(default_factory=list)
    held: bool = False  # a milter's quarantine: Postfix holds the message

    def reply(self, command: str) -> tuple[int, str]:
        """The (last) reply to `command`."""
        return next((code, text) for c, code, text in reversed(self.replies) if c == command)


class _Sink:
    """Every message Postfix relays, with its envelope, keyed by Postfix's queue id."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, tuple[str, ...], bytes]] = []
        self.changed = threading.Condition()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        with self.changed:
            self.messages.append((envelope.mail_from or "", tuple(envelope.rcpt_tos), content))
            self.changed.notify_all()
        return "250 2.0.0 sunk"


class PostfixReference:
    """Postfix on 127.0.0.1 with the milter at `milter` ("inet:127.0.0.1:PORT" or "unix:/path")."""

    def __init__(self, root: Path, milter: str, *, on_error: str = "tempfail", timeout_s: int = 30) -> None:
        self.sink = _Sink()
        self.sink_port = free_port()
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.sink_port)
        self.postfix = PostfixInstance(root, "127.0.0.1", free_port(), main_cf={
            "smtpd_milters": milter,
            "milter_protocol": "6",
            "milter_default_action": on_error,
            "milter_command_timeout": f"{timeout_s}s",
            "milter_content_timeout": f"{timeout_s}s",
            "relayhost": f"[127.0.0.1]:{self.sink_port}",
            "smtp_tls_security_level": "none",
            "local_header_rewrite_clients": "",  # relay the header as the client sent it (no Date/Message-ID)
            "smtpd_delay_reject": "no",  # refusals at the command they belong to
            "smtpd_helo_required": "no",
        })  # fmt: skip

    def __enter__(self) -> PostfixReference:
        self.controller.start()
        try:
            self.postfix.start()
        except BaseException:
            self.controller.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.postfix.stop()
        self.controller.stop()

    def send(self, sender: str, recipients: list[str], message: bytes, *, helo: str = "client.example.org",
             timeout_s: float = 30.0) -> Outcome:  # fmt: skip
        """One SMTP session: EHLO, MAIL, each RCPT, DATA if a recipient was accepted; then wait until
        Postfix delivered, discarded or held what it accepted."""
        outcome = Outcome([])
        queue_id = b""
        log_start = len(self.postfix.log())
        with smtplib.SMTP(self.postfix.host, self.postfix.port, timeout=timeout_s) as smtp:
            code, text = smtp.ehlo(helo)
            outcome.replies.append(("EHLO", code, text.decode(errors="replace").split("\n")[0]))
            code, text = smtp.mail(sender)
            outcome.replies.append(("MAIL", code, text.decode(errors="replace")))
            if code == 250:
                accepted = 0
                for rcpt in recipients:
                    code, text = smtp.rcpt(rcpt)
                    outcome.replies.append(("RCPT", code, text.decode(errors="replace")))
                    accepted += code in (250, 251)
                if accepted:
                    code, text = smtp.data(message)
                    outcome.replies.append(("DATA", code, text.decode(errors="replace")))
                    if code == 250 and (match := QUEUED.search(text)):
                        queue_id = match[1]
        if queue_id:
            outcome.held = self._settle(queue_id.decode(), log_start, timeout_s)
            outcome.delivered = self._delivered(queue_id.decode())
        return outcome

    def _settle(self, queue_id: str, log_start: int, timeout_s: float) -> bool:
        """Wait until Postfix is done with the message; True when a milter's quarantine put it on hold.
        A discard (at RCPT: logged as NOQUEUE, at the end: with the queue id) delivers nothing."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            session = self.postfix.log()[log_start:].splitlines()
            lines = [line for line in session if f" {queue_id}: " in line]
            if any("milter-hold" in line for line in lines):
                return True
            if any(line.endswith(f"{queue_id}: removed") for line in lines) or any(
                "milter-discard" in line for line in session
            ):
                return False
            time.sleep(0.05)  # Postfix writes its log file; there is no event to wait on
        raise AssertionError(f"Postfix did not finish {queue_id}:\n{self.postfix.log()}")

    def _delivered(self, queue_id: str) -> list[Delivered]:
        out = []
        with self.sink.changed:
            for sender, rcpts, content in self.sink.messages:
                stripped = _without_received(content, f"id {queue_id}".encode())
                if stripped is not None:
                    out.append(Delivered(sender, rcpts, stripped))
        return out


def _without_received(message: bytes, marker: bytes) -> bytes | None:
    """The message without the Received: field that holds `marker` (Postfix's own, usually the top
    field; below a field a milter inserted at index 0), or None when it has none."""
    start = 0
    while start < len(message) and message[start : start + 2] != b"\r\n":
        end = start
        while True:  # the field's end: a CRLF not followed by a blank
            end = message.find(b"\r\n", end)
            if end < 0:
                return None
            end += 2
            if message[end : end + 1] not in (b" ", b"\t"):
                break
        field = message[start:end]
        if field[:9].lower() == b"received:" and marker in field:
            return message[:start] + message[end:]
        start = end
    return None

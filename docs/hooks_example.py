"""An example Kartero hooks file: copy it next to kartero.toml and set

    [hooks]
    module = "hooks.py"
    on_error = "tempfail"
    timeout = "10s"

Each hook is optional; see docs/spam.md ("Python hooks") for what they are given and may answer.
Hooks run on the server's event loop: never block in them; blocking or CPU-heavy work goes to a thread
with `asyncio.to_thread`, as `on_message` does below. `kill -HUP` the server after editing this file.
"""

from __future__ import annotations

import asyncio
import io

from kartero import hooks

BLOCKED_SENDER_DOMAINS = frozenset({"spam.example"})
BLOCKED_NETWORK = "203.0.113."  # a documentation range (RFC 5737): put a real one here
SPAM_PHRASES = (b"buy now", b"act immediately")
SCAN_BYTES = 1024 * 1024  # read at most this much of a message
LINE_BYTES = 4096  # and at most this much of any one line


async def on_connect(session: hooks.Session) -> hooks.Answer:
    if session.client_address.startswith(BLOCKED_NETWORK):
        return hooks.reject(554, "5.7.1 Your network is not welcome here")
    return None


async def on_mail_from(session: hooks.Session, sender: str) -> hooks.Answer:
    domain = sender.rpartition("@")[2].lower()
    if session.authenticated_user is None and domain in BLOCKED_SENDER_DOMAINS:
        return hooks.reject(550, f"5.7.1 Mail from {domain} is not accepted here")
    return hooks.accept()


async def on_rcpt_to(session: hooks.Session, recipient: str) -> hooks.Answer:
    if session.listener == "smtp" and recipient.lower().startswith("noreply@"):
        return hooks.reject(550, "5.1.1 This address accepts no mail")
    return None


async def on_message(session: hooks.Session, message: hooks.Message) -> hooks.Answer:
    results: list[hooks.Result] = [hooks.add_header("X-Hooks-Checked", "yes")]
    subject = message.headers.get("Subject", "")
    shouting = len(subject) > 8 and subject.isupper()
    # Reading the message is file I/O for a large one: in a thread, so the loop goes on serving.
    if shouting or await asyncio.to_thread(mentions_spam_phrase, message.raw):
        results.append(hooks.add_header("X-Spam", "Yes"))  # [spam] junk_header: delivered to Junk
    return results


def mentions_spam_phrase(raw: io.BufferedIOBase) -> bool:
    """Whether the first SCAN_BYTES of the message hold a spam phrase (lines read with a limit: a
    message may have a line of any length)."""
    seen = 0
    while seen < SCAN_BYTES:
        line = raw.readline(LINE_BYTES)
        if not line:
            return False
        seen += len(line)
        if any(phrase in line.lower() for phrase in SPAM_PHRASES):
            return True
    return False

"""Vacation replies (RFC 5230 §4.5 to §5, RFC 6131): whether to answer a message, and the answer.

Whether to answer is decided from the envelope and the header alone, before the once-per-period tracking
(`Rules.remember_vacation`) is consulted: no reply to the null sender, to mailing-list and bulk mail, to
other automatic mail, to daemon-like senders, nor to a message that does not name the user in To/Cc/Bcc
(§4.5, §4.6). Every reply has the null envelope sender and `Auto-Submitted: auto-replied` (§5), so it can
never start a loop of replies.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.quoprimime import body_encode
from email.utils import format_datetime, formataddr

from kartero.mime.addresses import parse_address_list
from kartero.mime.headers import HeaderBlock, decode_words

# §4.6: list managers and daemons, by local part (compared without case).
_DAEMON_LOCALS = frozenset({"mailer-daemon", "listserv", "majordomo", "postmaster", "noreply", "no-reply"})
_BULK_PRECEDENCE = frozenset({b"bulk", b"list", b"junk"})
# Subjects and reasons come from a script; the reply has bounds of its own.
MAX_SUBJECT = 998
MAX_REASON = 64 * 1024
MAX_REFERENCES = 32  # message ids carried into References


def skip_reason(header: HeaderBlock, sender: str, own: frozenset[str]) -> str | None:
    """Why no reply goes out (for the log), or None when one may. `own`: the user's addresses, lower
    case (the account, the address mail came to, :addresses)."""
    if not sender:
        return "null sender"
    local = sender.rpartition("@")[0].lower()
    if local in _DAEMON_LOCALS or local.startswith("owner-") or local.endswith("-request"):
        return "sender is a list or daemon address"
    if sender.lower() in own:
        return "sender is the user"
    auto = header.get("auto-submitted")
    if auto is not None and auto.split(b";")[0].strip().lower() != b"no":
        return "Auto-Submitted message"
    precedence = header.get("precedence")
    if precedence is not None and precedence.strip().lower() in _BULK_PRECEDENCE:
        return "bulk or list Precedence"
    if any(name.startswith("list-") for name, _ in header.fields):
        return "mailing list message"
    addressed = False
    for name in ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc"):
        for value in header.get_all(name):
            for address in parse_address_list(value, 1000):
                if address.mailbox is None or address.host is None:
                    continue
                spec = (address.mailbox + b"@" + address.host).decode("utf-8", "replace").lower()
                if spec in own:
                    addressed = True
    if not addressed:
        return "user not in To/Cc/Bcc"
    return None


@dataclass(frozen=True, slots=True)
class Reply:
    """A message to send with the null envelope sender."""

    recipient: str
    data: bytes


def build_reply(*, header: HeaderBlock, sender: str, from_address: str, reason: str, subject: str | None,
                mime: bool, now: datetime, hostname: str, from_name: str = "") -> Reply:  # fmt: skip
    """The reply of §5: to the envelope sender, from the user (or :from), answering the message. Every
    line is CRLF-terminated and at most 998 octets (RFC 5322 §2.1.1)."""
    if subject is None:
        original = decode_words(header.get("subject") or b"")[:MAX_SUBJECT]
        subject = "Auto: " + original if original else "Automated reply"
    subject = " ".join(subject.split())[:MAX_SUBJECT]
    lines = [
        "From: " + (formataddr((from_name, from_address), "utf-8") if from_name else f"<{from_address}>"),
        f"To: <{sender}>",
        "Subject: " + Header(subject, "utf-8", header_name="Subject").encode(linesep="\r\n"),
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{secrets.token_hex(12)}@{hostname}>",
        "Auto-Submitted: auto-replied (vacation)",
    ]
    original_id = _message_id(header.get("message-id"))
    if original_id:
        lines.append(f"In-Reply-To: {original_id}")
        references = _message_ids(header.get("references")) or _message_ids(header.get("in-reply-to"))
        lines.append("References: " + "\r\n ".join([*references[-MAX_REFERENCES:], original_id]))  # folded
    lines.append("MIME-Version: 1.0")
    reason = reason[:MAX_REASON].replace("\r\n", "\n").replace("\r", "\n")
    if mime:  # §4.8: the reason is a MIME entity; of its header only the Content-* fields are taken
        entity_head, _, entity_body = reason.partition("\n\n")
        fields = content_fields(entity_head)
        body = entity_body.replace("\n", "\r\n")
        return Reply(sender, ("\r\n".join(lines + fields) + "\r\n\r\n" + _long_lines_cut(body)).encode("utf-8"))
    lines.append("Content-Type: text/plain; charset=utf-8")
    encoding, body = text_body(reason)
    lines.append(f"Content-Transfer-Encoding: {encoding}")
    return Reply(sender, ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8"))


def content_fields(head: str) -> list[str]:
    """The `Content-*` fields of a MIME entity's header (folded lines kept with their field)."""
    fields: list[str] = []
    keeping = False
    for line in head.split("\n")[:100]:
        if line[:1] in (" ", "\t"):
            if keeping:
                fields.append(line[:998])
            continue
        keeping = line.split(":", 1)[0].strip().lower().startswith("content-") and ":" in line
        if keeping:
            fields.append(line[:998])
    return fields


def text_body(text: str) -> tuple[str, str]:
    """A text/plain body with CRLF line ends: 8bit, or quoted-printable when a line would pass 998
    octets (RFC 5322 §2.1.1)."""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    if all(len(line.encode("utf-8")) <= 998 for line in lines):
        return "8bit", "".join(line + "\r\n" for line in lines)
    return "quoted-printable", body_encode("\n".join(lines) + "\n", maxlinelen=76, eol="\r\n")


def _long_lines_cut(body: str) -> str:
    return "\r\n".join(line[:998] for line in body.split("\r\n"))


def _message_id(value: bytes | None) -> str | None:
    ids = _message_ids(value)
    return ids[0] if ids else None


def _message_ids(value: bytes | None) -> list[str]:
    """The `<...>` message ids of a field (bounded: a field holds at most a few KiB)."""
    if not value:
        return []
    text = value[: 64 * 1024].decode("ascii", "replace")
    ids: list[str] = []
    start = text.find("<")
    while start >= 0 and len(ids) < 1000:
        end = text.find(">", start)
        if end < 0:
            break
        candidate = text[start : end + 1]
        if "@" in candidate and " " not in candidate and len(candidate) <= 998:
            ids.append(candidate)
        start = text.find("<", end)
    return ids

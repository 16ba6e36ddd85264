"""The rejection notice of Sieve `reject` when the SMTP reply cannot carry it (RFC 5429 §2.1.1): an MDN
(RFC 8098) with disposition `deleted`, the reason in its human-readable part and the original header,
sent with the null envelope sender to the message's envelope sender."""

from __future__ import annotations

import secrets
from datetime import datetime
from email.utils import format_datetime

from kartero.mime.headers import HeaderBlock
from kartero.rules.vacation import text_body

MAX_REASON = 64 * 1024
MAX_ORIGINAL_HEADER = 256 * 1024  # the original header block returned with the notice


def build_rejection(*, original_header: bytes, header: HeaderBlock, sender: str, recipient: str,
                    original_recipient: str, reason: str, now: datetime, hostname: str) -> bytes:  # fmt: skip
    boundary = "kartero-" + secrets.token_hex(12)
    encoding, text = text_body(
        "Your message was automatically rejected by Sieve, a mail filtering language.\n\n"
        "The following reason was given:\n" + reason[:MAX_REASON].replace("\r\n", "\n").replace("\r", "\n") + "\n"
    )
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: Automatically rejected mail",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{secrets.token_hex(12)}@{hostname}>",
        "Auto-Submitted: auto-replied (rejected)",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=disposition-notification; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Disposition: inline",
        f"Content-Transfer-Encoding: {encoding}",
        "",
        text.removesuffix("\r\n"),
        f"--{boundary}",
        "Content-Type: message/disposition-notification",
        "",
        f"Reporting-UA: {hostname}; Kartero",
        f"Original-Recipient: rfc822; {original_recipient}",
        f"Final-Recipient: rfc822; {recipient}",
    ]
    message_id = header.get("message-id")
    if message_id and b"\n" not in message_id and message_id.isascii():
        lines.append("Original-Message-ID: " + message_id.decode("ascii")[:998])
    lines += [
        "Disposition: automatic-action/MDN-sent-automatically; deleted",
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = original_header[:MAX_ORIGINAL_HEADER]
    body = head if head.endswith(b"\n") else head + b"\r\n"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8") + body + f"\r\n--{boundary}--\r\n".encode()

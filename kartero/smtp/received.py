"""The trace fields Kartero adds: `Received:` (RFC 5321 §4.4) and `Return-Path:` (at final delivery)."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime


def with_protocol(*, is_esmtp: bool, is_tls: bool, is_authenticated: bool, is_utf8: bool) -> str:
    """The `with` keyword of RFC 3848 and RFC 6531 §3.7.3 (e.g. ESMTPS, UTF8SMTPSA)."""
    if not is_esmtp:
        return "SMTP"
    base = "UTF8SMTP" if is_utf8 else "ESMTP"
    return base + ("S" if is_tls else "") + ("A" if is_authenticated else "")


def format_received(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    message_id: str,
    recipient: str | None,
    tls: str | None,
    authenticated_as: str | None,
    date: datetime,
) -> bytes:
    """A folded Received header ending in CRLF. `recipient` goes in a `for` clause (one recipient only,
    so that one stored copy can serve every recipient of a message)."""
    literal = f"[IPv6:{client_ip}]" if ":" in client_ip else f"[{client_ip}]"
    lines = [f"Received: from {helo} ({literal})"]
    by = f"by {hostname} (Kartero) with {protocol}"
    if tls:
        by += f" ({tls})"
    lines.append(by)
    if authenticated_as:
        lines.append(f"(authenticated as {authenticated_as})")
    last = f"id {message_id}"
    if recipient:
        last += f" for <{recipient}>"
    lines.append(f"{last}; {format_datetime(date)}")
    return ("\r\n\t".join(lines) + "\r\n").encode("utf-8")


def format_return_path(sender: str) -> bytes:
    """`Return-Path: <sender>` (empty brackets for the null sender), RFC 5321 §4.4."""
    return f"Return-Path: <{sender}>\r\n".encode()

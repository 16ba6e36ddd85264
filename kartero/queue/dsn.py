"""Delivery status notifications (RFC 3464, RFC 3461 §6, RFC 6533 for UTF-8 messages).

A DSN is a multipart/report with a human-readable part, a message/delivery-status part (per-recipient
Action, Status, Diagnostic-Code, ...), and the original message (RET=FULL) or its header (RET=HDRS).
It is sent with the null reverse-path, so a DSN can never cause another one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from enum import StrEnum

# Without RET, the whole message comes back unless it is larger than this (then only its header).
FULL_RETURN_LIMIT = 256 * 1024


class Action(StrEnum):
    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"


@dataclass(frozen=True, slots=True)
class RecipientReport:
    address: str
    action: Action
    status: str  # enhanced status code, e.g. 5.1.1
    diagnostic: str | None = None  # a reply as one line (Reply.to_line), "550 5.1.1 No such user"
    remote_mta: str | None = None
    orcpt: str | None = None  # "rfc822;user@example.org"
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None


def _date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC))


def _subject(action: Action) -> str:
    return {
        Action.FAILED: "Undelivered Mail Returned to Sender",
        Action.DELAYED: "Delayed Mail (still being retried)",
        Action.DELIVERED: "Successful Mail Delivery Report",
        Action.RELAYED: "Successful Mail Delivery Report",
    }[action]


def _human(hostname: str, reports: list[RecipientReport]) -> str:
    action = reports[0].action
    lines = [f"This is the mail system at host {hostname}.", ""]
    if action is Action.FAILED:
        lines += ["I'm sorry to have to inform you that your message could not",
                  "be delivered to one or more recipients. It's attached below.", ""]  # fmt: skip
    elif action is Action.DELAYED:
        lines += ["Your message could not be delivered yet to one or more recipients.",
                  "The mail system will keep trying; you do not need to resend it.", ""]  # fmt: skip
    else:
        lines += ["Your message was successfully delivered to the destination(s) listed below.", ""]
    for report in reports:
        detail = f": {report.diagnostic}" if report.diagnostic else ""
        where = f" (host {report.remote_mta})" if report.remote_mta else ""
        lines.append(f"<{report.address}>{where}{detail}")
    return "\r\n".join(lines) + "\r\n"


def build_dsn(
    *,
    hostname: str,
    sender: str,
    queue_id: str,
    arrival: datetime,
    reports: list[RecipientReport],
    original: bytes,
    ret: str | None,
    envid: str | None,
    smtputf8: bool,
    now: datetime,
) -> bytes:
    """The DSN message for `reports` (all of one kind: failed, delayed, or delivered/relayed)."""
    if not reports:
        raise ValueError("a DSN needs at least one recipient report")
    boundary = f"{queue_id}.{secrets.token_hex(6)}/{hostname}"
    per_message = [f"Reporting-MTA: dns; {hostname}", f"X-Kartero-Queue-ID: {queue_id}"]
    if envid:
        per_message.append(f"Original-Envelope-Id: {envid}")
    per_message.append(f"Arrival-Date: {_date(arrival)}")
    blocks = ["\r\n".join(per_message)]
    for report in reports:
        fields = [f"Final-Recipient: {'utf-8' if not report.address.isascii() else 'rfc822'}; {report.address}"]
        if report.orcpt:
            addr_type, _, address = report.orcpt.partition(";")
            fields.append(f"Original-Recipient: {addr_type}; {address}")
        fields += [f"Action: {report.action}", f"Status: {report.status}"]
        if report.remote_mta:  # "mx.example.org[192.0.2.1]": the field takes the name only
            fields.append(f"Remote-MTA: dns; {report.remote_mta.partition('[')[0] or report.remote_mta}")
        if report.diagnostic:
            fields.append(f"Diagnostic-Code: smtp; {report.diagnostic}")
        if report.last_attempt:
            fields.append(f"Last-Attempt-Date: {_date(report.last_attempt)}")
        if report.will_retry_until:
            fields.append(f"Will-Retry-Until: {_date(report.will_retry_until)}")
        blocks.append("\r\n".join(fields))
    status_type = "message/global-delivery-status" if smtputf8 else "message/delivery-status"
    want_headers = ret == "HDRS" or (ret is None and len(original) > FULL_RETURN_LIMIT)
    if want_headers:
        end = original.find(b"\r\n\r\n")
        returned = original[: end + 2] if end >= 0 else original
        returned_type = "message/global-headers" if smtputf8 else "text/rfc822-headers"
    else:
        returned = original
        returned_type = "message/global" if smtputf8 else "message/rfc822"
    head = (
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
        f"To: <{sender}>\r\n"
        f"Subject: {_subject(reports[0].action)}\r\n"
        f"Date: {_date(now)}\r\n"
        f"Message-ID: <{queue_id}.{secrets.token_hex(4)}@{hostname}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
        "\r\n"
    )
    parts = [
        f"--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + _human(hostname, reports),
        f"--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: {status_type}\r\n\r\n"
        + "\r\n\r\n".join(blocks)
        + "\r\n",
    ]
    body = head.encode() + "\r\n".join(parts).encode("utf-8")
    returned_part = (
        f"\r\n--{boundary}\r\nContent-Description: "
        f"{'Undelivered Message Headers' if want_headers else 'Undelivered Message'}\r\n"
        f"Content-Type: {returned_type}\r\n\r\n"
    ).encode() + returned
    if not returned.endswith(b"\r\n"):
        returned_part += b"\r\n"
    return body + returned_part + f"\r\n--{boundary}--\r\n".encode()

"""DSN messages (RFC 3464, RFC 6533): structure, per-recipient fields, what is returned per RET."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage

from kartero.queue.dsn import FULL_RETURN_LIMIT, Action, RecipientReport, build_dsn

MOMENT = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ORIGINAL = b"From: alice@a.test\r\nSubject: hello\r\n\r\nthe body\r\n"


def dsn(reports: list[RecipientReport], *, ret: str | None = None, smtputf8: bool = False,
        original: bytes = ORIGINAL) -> bytes:  # fmt: skip
    return build_dsn(hostname="mx.a.test", sender="alice@a.test", queue_id="q1", arrival=MOMENT, reports=reports,
                     original=original, ret=ret, envid="env-7", smtputf8=smtputf8, now=MOMENT)  # fmt: skip


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


FAILED = RecipientReport("bob@b.test", Action.FAILED, "5.1.1", "550 5.1.1 No such user", "mx.b.test[127.0.0.3]",
                         "rfc822;Bob@b.test", MOMENT)  # fmt: skip


def test_failure_report_structure() -> None:
    data = dsn([FAILED])
    assert data.isascii()
    message = parse(data)
    assert b"\r\nTo: <alice@a.test>\r\n" in data and message["Auto-Submitted"] == "auto-replied"
    assert message.get_content_type() == "multipart/report" and message.get_param("report-type") == "delivery-status"
    parts = [p.get_content_type() for p in message.iter_parts()]
    assert parts == ["text/plain", "message/delivery-status", "message/rfc822"]
    text = data.decode()
    assert "Reporting-MTA: dns; mx.a.test\r\n" in text and "Original-Envelope-Id: env-7\r\n" in text
    assert (
        "Final-Recipient: rfc822; bob@b.test\r\nOriginal-Recipient: rfc822; Bob@b.test\r\nAction: failed\r\n"
        "Status: 5.1.1\r\nRemote-MTA: dns; mx.b.test\r\nDiagnostic-Code: smtp; 550 5.1.1 No such user\r\n"
    ) in text
    assert data.endswith(b"\r\n" + ORIGINAL + b"\r\n--" + message.get_boundary().encode() + b"--\r\n")


def test_ret_hdrs_and_big_messages_return_only_the_header() -> None:
    message = parse(dsn([FAILED], ret="HDRS"))
    returned = list(message.iter_parts())[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"the body" not in dsn([FAILED], ret="HDRS")
    big = ORIGINAL + b"x" * FULL_RETURN_LIMIT
    assert list(parse(dsn([FAILED], original=big)).iter_parts())[2].get_content_type() == "text/rfc822-headers"
    assert list(parse(dsn([FAILED], ret="FULL")).iter_parts())[2].get_content_type() == "message/rfc822"


def test_utf8_messages_get_global_types() -> None:
    report = RecipientReport("jos\u00e9@b.test", Action.FAILED, "5.1.1", "550 5.1.1 No", None, None, MOMENT)
    data = dsn([report], smtputf8=True)
    parts = [p.get_content_type() for p in parse(data).iter_parts()]
    assert parts == ["text/plain", "message/global-delivery-status", "message/global"]
    assert "Final-Recipient: utf-8; jos\u00e9@b.test\r\n" in data.decode()


def test_delay_notice_says_until_when() -> None:
    until = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    report = RecipientReport("bob@b.test", Action.DELAYED, "4.4.1", "451 4.4.1 down", None, None, MOMENT, until)
    data = dsn([report]).decode()
    assert "Subject: Delayed Mail (still being retried)\r\n" in data
    assert (
        "Action: delayed\r\nStatus: 4.4.1\r\n" in data and "Will-Retry-Until: Tue, 01 Dec 2026 12:00:00 +0000" in data
    )

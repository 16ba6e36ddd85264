"""The sendmail(8) interface's input rules, and the maildrop file it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartero.delivery import maildrop
from kartero.delivery.sendmail import SendmailError, add_from, header_recipients, qualify, read_message, strip_bcc


@pytest.mark.parametrize(
    ("raw", "ignore_dots", "expected"),
    [
        (b"Subject: x\n\nbody\n", False, b"Subject: x\r\n\r\nbody\r\n"),
        (b"Subject: x\n\nbody\n.\nafter\n", False, b"Subject: x\r\n\r\nbody\r\n"),
        (b"Subject: x\n\nbody\n.\nafter\n", True, b"Subject: x\r\n\r\nbody\r\n.\r\nafter\r\n"),
        (b"Subject: x\r\n\r\nno final newline", False, b"Subject: x\r\n\r\nno final newline\r\n"),
        (b"Subject: x\n\nends with dot\n.", False, b"Subject: x\r\n\r\nends with dot\r\n"),
        (b".\n", False, b""),
        (b"Subject: x\n\n..two dots stay\n", False, b"Subject: x\r\n\r\n..two dots stay\r\n"),
    ],
)
def test_read_message(raw: bytes, ignore_dots: bool, expected: bytes) -> None:
    assert read_message(raw, ignore_dots=ignore_dots) == expected


def test_recipients_from_headers_and_bcc_removed() -> None:
    data = (
        b"To: A <a@x.test>, list: m@y.test;\r\nCc: bob\r\nBcc: hidden@z.test,\r\n  other@z.test\r\n"
        b"Subject: s\r\n\r\nBcc: in body\r\n"
    )
    assert header_recipients(data) == ["a@x.test", "m@y.test", "bob", "hidden@z.test", "other@z.test"]
    assert strip_bcc(data) == b"To: A <a@x.test>, list: m@y.test;\r\nCc: bob\r\nSubject: s\r\n\r\nBcc: in body\r\n"


def test_qualify_and_from() -> None:
    assert qualify("bob", "a.test") == "bob@a.test"
    assert qualify("<Bob@A.Test>", "a.test") == "Bob@a.test"  # a remote local part keeps its case
    with pytest.raises(SendmailError) as bad:
        qualify("a b@@c", "a.test")
    assert bad.value.code == 64
    assert add_from(b"Subject: s\r\n\r\n", "Cron Daemon", "root@a.test") == (
        b"From: Cron Daemon <root@a.test>\r\nSubject: s\r\n\r\n"
    )
    assert add_from(b"From: x@y\r\n\r\n", "Cron", "root@a.test") == b"From: x@y\r\n\r\n"


def test_maildrop_round_trip_and_refusals(tmp_path: Path) -> None:
    dropped = maildrop.Dropped("root@a.test", ("bob@b.test",), b"Subject: s\r\n\r\nhi\r\n", "root", 1.0,
                               ("FAILURE",), "HDRS", "e1")  # fmt: skip
    path = maildrop.write(tmp_path, dropped)
    assert path.parent == tmp_path / "maildrop" and path.suffix == ".msg"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert maildrop.read(path) == dropped
    broken = path.parent / "broken.msg"
    for content, reason in ((b"hello", "not a maildrop file"), (maildrop.MAGIC + b"{}\n", "bad envelope line"),
                            (maildrop.MAGIC + b'{"sender": "", "recipients": []}\n', "no recipients")):  # fmt: skip
        broken.write_bytes(content)
        with pytest.raises(maildrop.MaildropError, match=reason):
            maildrop.read(broken)

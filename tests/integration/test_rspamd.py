"""Issue 13: rspamd through the milter protocol — Debian's rspamd with its proxy worker in milter mode
(tests/rspamd.py: private, off the network, the set-up docs/spam.md gives) on the MX listener: GTUBE is
refused at the end of data with rspamd's own reply, a message rspamd marks "add header" (the test rule
on `X-Kartero-Test: junk`) lands in the recipient's Junk with `X-Spam: Yes`, a clean one in INBOX; then
moving the marked message out of Junk teaches rspamd ham through `[spam] learn`, closing the loop."""

from __future__ import annotations

import imaplib
import smtplib
from collections.abc import Iterator

import pytest

from tests import rspamd as rspamd_harness
from tests.integration.harness import PASSWORD, KarteroServer
from tests.rspamd import GTUBE, TEST_JUNK_HEADER, PrivateRspamd

pytestmark = pytest.mark.skipif(not rspamd_harness.available(), reason="needs Debian's rspamd and redis-server")

HEADER = ("From: alice@remote.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
          "Message-ID: <{subject}@remote.test>\r\nDate: Mon, 30 Nov 2026 01:00:00 +0000\r\n")  # fmt: skip
SPAM = (HEADER.format(subject="gtube") + f"\r\n{GTUBE}\r\n").encode()
MARKED = (HEADER.format(subject="marked") + f"{TEST_JUNK_HEADER}\r\n\r\nA marked message of its own words.\r\n"
          ).encode()
HAM = (HEADER.format(subject="lunch") + "\r\nShall we meet for lunch on Tuesday at noon?\r\n").encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, rspamd: PrivateRspamd) -> Iterator[KarteroServer]:
    config = (f'[[milter]]\naddress = "127.0.0.1:{rspamd.milter_port}"\nlisteners = ["smtp"]\ntimeout = "30s"\n'
              f'[spam]\nlearn = "{rspamd.controller_url}"\n')  # fmt: skip
    mx = KarteroServer(tmp_path_factory.mktemp("rspamd"), extra_config=config)
    mx.add_user("bob@example.test")
    mx.start()
    try:
        yield mx
    finally:
        assert mx.stop() == 0, mx.log


def test_issue_13_rspamd_refuses_gtube_at_the_end_of_data(server: KarteroServer) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo("client.remote.test")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("alice@remote.test", ["bob@example.test"], SPAM)
        assert (refused.value.smtp_code, refused.value.smtp_error) == (554, b"5.7.1 Gtube pattern")
    stored = server.messages("bob@example.test", "Junk") + server.messages("bob@example.test")
    assert all(GTUBE.encode() not in m for m in stored)  # refused: stored nowhere


def test_issue_13_rspamd_add_header_goes_to_junk_and_clean_mail_to_inbox(
    server: KarteroServer, rspamd: PrivateRspamd
) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo("client.remote.test")
        assert smtp.sendmail("alice@remote.test", ["bob@example.test"], MARKED) == {}
        assert smtp.sendmail("alice@remote.test", ["bob@example.test"], HAM) == {}
    imap = imaplib.IMAP4(server.host, server.imap_port, timeout=10)
    try:
        imap.login("bob@example.test", PASSWORD)
        assert imap.select("Junk")[0] == "OK"
        status, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (Subject X-Spam)])")
        assert status == "OK"
        assert data[0][1] == b"Subject: marked\r\nX-Spam: Yes\r\n\r\n"  # type: ignore[index]
        assert imap.select("INBOX")[0] == "OK"
        status, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (Subject X-Spam)])")
        assert data[0][1] == b"Subject: lunch\r\n\r\n"  # type: ignore[index]
        # The user disagrees with rspamd: out of Junk, and rspamd learns it as ham.
        spam, ham = rspamd.learned()
        assert imap.select("Junk")[0] == "OK"
        assert imap.uid("MOVE", "1", "INBOX")[0] == "OK"
    finally:
        imap.logout()
    server.wait_events("spam.learned", 1, timeout_s=20)
    assert rspamd.learned() == (spam, ham + 1)

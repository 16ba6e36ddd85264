"""Issue 13: SpamAssassin through the milter protocol — Debian's spamd (network tests off) and two
spamass-milters in front of it: one that only marks spam (on the MX listener: GTUBE is delivered to
Junk with X-Spam-Flag: YES) and one that refuses it (`-r 15`, on submission: GTUBE gets a 5xx at the
end of data). A clean message reaches INBOX through both."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from tests import spamassassin
from tests.integration.harness import PASSWORD, KarteroServer, tls_context

pytestmark = pytest.mark.skipif(not spamassassin.available(), reason="needs Debian's spamd and spamass-milter")

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SPAM = (f"From: alice@remote.test\r\nTo: bob@example.test\r\nSubject: spam\r\nMessage-ID: <spam@remote.test>\r\n"
        f"Date: Mon, 30 Nov 2026 01:00:00 +0000\r\n\r\n{GTUBE}\r\n").encode()  # fmt: skip
HAM = (b"From: alice@remote.test\r\nTo: bob@example.test\r\nSubject: lunch\r\nMessage-ID: <ham@remote.test>\r\n"
       b"Date: Mon, 30 Nov 2026 01:00:00 +0000\r\n\r\nShall we meet for lunch on Tuesday at noon?\r\n")  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KarteroServer]:
    sa = spamassassin.PrivateSpamAssassin().start()
    try:
        marking, refusing = sa.milter(), sa.milter(reject_score=15)
        config = "".join(f'[[milter]]\naddress = "127.0.0.1:{port}"\nlisteners = ["{listener}"]\ntimeout = "60s"\n'
                         for port, listener in ((marking, "smtp"), (refusing, "submission")))  # fmt: skip
        mx = KarteroServer(tmp_path_factory.mktemp("sa"), extra_config=config)
        mx.add_user("bob@example.test")
        mx.add_user("alice@example.test")
        mx.start()
        yield mx
        assert mx.stop() == 0, mx.log
    finally:
        sa.stop()


def test_issue_13_spamassassin_marks_gtube_and_it_lands_in_junk(server: KarteroServer) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=60) as smtp:
        smtp.ehlo("client.remote.test")
        assert smtp.sendmail("alice@remote.test", ["bob@example.test"], SPAM) == {}
        assert smtp.sendmail("alice@remote.test", ["bob@example.test"], HAM) == {}
    (junk,) = server.messages("bob@example.test", "Junk")
    header, _, body = junk.partition(b"\r\n\r\n")
    assert b"\r\nX-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=" in header
    assert b'\r\nContent-Type: multipart/mixed; boundary="' in header  # SpamAssassin's report_safe wrapping:
    assert b"Content-Type: message/rfc822; x-spam-type=original\r\n" in body  # the body was replaced
    boundary = header.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    attached = b"\r\nDate: Mon, 30 Nov 2026 01:00:00 +0000\r\n\r\n" + GTUBE.encode() + b"\r\n\r\n--" + boundary
    assert attached + b"--\r\n" in body  # the original, attached, then the closing boundary
    (inbox,) = server.messages("bob@example.test")
    assert b"X-Spam-Flag: YES" not in inbox and inbox.endswith(b"Shall we meet for lunch on Tuesday at noon?\r\n")


def test_issue_13_spamassassin_refuses_gtube_on_submission(server: KarteroServer) -> None:
    with smtplib.SMTP(server.host, server.submission_port, timeout=60) as smtp:
        smtp.starttls(context=tls_context())
        smtp.login("alice@example.test", PASSWORD)
        submitted = SPAM.replace(b"alice@remote.test", b"alice@example.test")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("alice@example.test", ["carol@remote.test"], submitted)
        assert refused.value.smtp_code == 550 and refused.value.smtp_error.startswith(b"5.7.1 ")
    store = server.store()
    try:
        assert store.queue.queue_entries() == []  # refused: nothing queued for the remote recipient
    finally:
        store.close()

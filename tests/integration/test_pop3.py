"""POP3 against a real `kartero serve`: poplib, curl, fetchmail; deletion only at QUIT; IMAP sees it."""

from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import smtplib
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer, tls_context
from tests.unit.mime import corpus

PASSWORD = "secret-password"


def deliver(mx: KarteroServer, *messages: bytes) -> list[bytes]:
    with smtplib.SMTP(mx.host, mx.port, timeout=30) as s:
        for message in messages:
            s.sendmail("alice@example.org", ["bob@example.test"], message)
    return mx.messages("bob@example.test")


def test_poplib_list_retr_top_uidl_and_delete_at_quit(mx: KarteroServer) -> None:
    stored = deliver(mx, corpus.PLAIN, corpus.MIXED)
    pop = poplib.POP3(mx.host, mx.pop3_port, timeout=30)
    assert pop.getwelcome() == b"+OK mx.example.test Kartero POP3 ready"
    assert "STLS" in pop.capa()
    pop.stls(context=tls_context())
    pop.user("bob@example.test")
    pop.pass_(PASSWORD)
    assert pop.stat() == (2, sum(len(m) for m in stored))
    assert pop.list()[1] == [b"1 %d" % len(stored[0]), b"2 %d" % len(stored[1])]
    # UIDL is the IMAP UID of the message in INBOX.
    assert pop.uidl()[1] == [b"1 1", b"2 2"]
    response, lines, _ = pop.retr(2)
    assert response == b"+OK message follows"
    assert b"\r\n".join(lines) + b"\r\n" == stored[1]
    assert pop.top(1, 0)[1][-1] == b"" and b"Subject: Quarterly report" in pop.top(1, 0)[1]
    pop.dele(1)
    pop.quit()
    assert mx.messages("bob@example.test") == [stored[1]]


def test_lost_connection_deletes_nothing(mx: KarteroServer) -> None:
    stored = deliver(mx, corpus.PLAIN)
    pop = poplib.POP3_SSL(mx.host, mx.pop3s_port, context=tls_context(), timeout=30)
    pop.user("bob@example.test")
    pop.pass_(PASSWORD)
    pop.dele(1)
    pop.sock.close()  # no QUIT
    pop = poplib.POP3(mx.host, mx.pop3_port, timeout=30)
    pop.user("bob@example.test")
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 1
    pop.quit()
    assert mx.messages("bob@example.test") == stored


def test_pop3_deletion_reaches_an_imap_session(mx: KarteroServer) -> None:
    deliver(mx, corpus.PLAIN, corpus.ALTERNATIVE)
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        imap.select("INBOX")
        pop = poplib.POP3(mx.host, mx.pop3_port, timeout=30)
        pop.user("bob@example.test")
        pop.pass_(PASSWORD)
        pop.dele(1)
        pop.quit()
        imap.noop()
        assert imap.untagged_responses.get("EXPUNGE") == [b"1"]


def test_wrong_password(mx: KarteroServer) -> None:
    pop = poplib.POP3(mx.host, mx.pop3_port, timeout=30)
    pop.user("bob@example.test")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
        pop.pass_("nope")
    pop.quit()


def test_curl_pop3(mx: KarteroServer) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed (.ci/run installs it)")
    stored = deliver(mx, corpus.LATIN1)
    result = subprocess.run(
        [curl, "--silent", "--show-error", "--ssl-reqd", "--insecure", "--user", f"bob@example.test:{PASSWORD}",
         f"pop3://{mx.host}:{mx.pop3_port}/1"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == stored[0]


def test_fetchmail_downloads_and_deletes(mx: KarteroServer, tmp_path: Path) -> None:
    fetchmail = shutil.which("fetchmail")
    if fetchmail is None:
        pytest.fail("fetchmail is not installed (.ci/run installs it)")
    stored = deliver(mx, corpus.PLAIN, corpus.FORWARDED)
    mbox = tmp_path / "mbox"
    mda = tmp_path / "mda.sh"
    mda.write_text(f'#!/bin/sh\ncat >> "{mbox}"\nprintf "\\n--- end ---\\n" >> "{mbox}"\n')
    mda.chmod(0o755)
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"poll {mx.host} protocol POP3 port {mx.pop3s_port}\n"
        f'  user "bob@example.test" password "{PASSWORD}"\n'
        f'  ssl\n  no sslcertck\n  mda "{mda}"\n  no keep\n'
    )
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(tmp_path), "FETCHMAILHOME": str(tmp_path)}
    result = subprocess.run(
        [fetchmail, "--fetchmailrc", str(rc), "--nodetach", "--nosyslog", "--silent", "--pidfile",
         str(tmp_path / "pid")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    downloaded = mbox.read_bytes()
    assert downloaded.count(b"--- end ---") == 2
    for message in stored:
        # fetchmail hands the MDA LF line ends and adds a Received header of its own first.
        body = message.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
        assert body in downloaded
    assert mx.messages("bob@example.test") == []

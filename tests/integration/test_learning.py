"""Issue 13, junk learning on a real `kartero serve` with `[spam] learn` pointing at a private rspamd's
controller (tests/rspamd.py): moving a message into Junk over IMAP teaches rspamd spam, out of Junk ham,
STORE of $Junk spam; APPEND into Junk teaches nothing; the IMAP reply never waits for rspamd, not even
when it is down, and the report is learned once it is back. Counts are rspamd's own Bayes counters.

One server for the module on the embedded store; the path that differs between backends (reading the
message to send it) runs once more on PostgreSQL in the last test."""

from __future__ import annotations

import imaplib
import secrets
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import rspamd as rspamd_harness
from tests.integration.harness import KarteroServer
from tests.pgserver import PrivatePostgres
from tests.rspamd import PrivateRspamd

pytestmark = pytest.mark.skipif(not rspamd_harness.available(), reason="needs Debian's rspamd and redis-server")

PASSWORD = "learning password"
USER = "bob@example.test"


def make_server(root: Path, rspamd: PrivateRspamd, store_url: str | None = None) -> KarteroServer:
    server = KarteroServer(root, extra_config=f'[spam]\nlearn = "{rspamd.controller_url}"\n', store_url=store_url)
    server.add_user(USER, PASSWORD)
    server.start()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, rspamd: PrivateRspamd) -> Iterator[KarteroServer]:
    mx = make_server(tmp_path_factory.mktemp("learning"), rspamd)
    try:
        yield mx
    finally:
        assert mx.stop() == 0, mx.log


def text() -> str:
    """A message body of words no other test message has: rspamd learns a message once (it keeps a
    digest of what it learned) and would not learn as spam what its Bayes already calls spam."""
    return " ".join(secrets.token_hex(4) for _ in range(40))


def deliver(server: KarteroServer, subject: str) -> None:
    message = f"From: sender@remote.test\r\nTo: {USER}\r\nSubject: {subject}\r\n\r\n{text()}\r\n"
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        smtp.sendmail("sender@remote.test", [USER], message.encode())


def login(server: KarteroServer) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(server.host, server.imap_port, timeout=10)
    imap.login(USER, PASSWORD)
    return imap


def last_uid(imap: imaplib.IMAP4, mailbox: str) -> bytes:
    assert imap.select(mailbox)[0] == "OK"
    status, data = imap.uid("SEARCH", "ALL")
    assert status == "OK" and data[0], data
    return data[0].split()[-1]


def learned_after(server: KarteroServer, rspamd: PrivateRspamd, count: int) -> tuple[int, int]:
    """rspamd's (spam, ham) counts once Kartero has logged `count` spam.learned lines in all."""
    server.wait_events("spam.learned", count, timeout_s=20)
    return rspamd.learned()


def test_issue_13_move_into_junk_learns_spam(server: KarteroServer, rspamd: PrivateRspamd) -> None:
    spam, ham = rspamd.learned()
    learned = rspamd.stat()["learned"]  # what `rspamc stat` shows as "Messages learned"
    seen = len(server.log_events("spam.learned"))
    deliver(server, "cheap pills")
    imap = login(server)
    try:
        uid = last_uid(imap, "INBOX")
        assert imap.uid("MOVE", uid, "Junk")[0] == "OK"
    finally:
        imap.logout()
    assert learned_after(server, rspamd, seen + 1) == (spam + 1, ham)
    assert rspamd.stat()["learned"] == learned + 1
    line = server.log_events("spam.learned")[-1]
    assert f"user={USER} " in line and " kind=spam status=200 attempts=1" in line


def test_issue_13_append_into_junk_learns_nothing_and_moving_out_learns_ham(
    server: KarteroServer, rspamd: PrivateRspamd
) -> None:
    spam, ham = rspamd.learned()
    seen = len(server.log_events("spam.learned"))
    message = f"From: friend@remote.test\r\nSubject: lunch\r\n\r\n{text()}\r\n".encode()
    imap = login(server)
    try:
        assert imap.append("Junk", None, None, message)[0] == "OK"
        uid = last_uid(imap, "Junk")
        assert imap.uid("COPY", uid, "Trash")[0] == "OK"  # into Trash: no verdict either
        assert imap.uid("MOVE", uid, "INBOX")[0] == "OK"
    finally:
        imap.logout()
    assert learned_after(server, rspamd, seen + 1) == (spam, ham + 1)
    assert " kind=ham " in server.log_events("spam.learned")[-1]
    assert len(server.log_events("spam.learned")) == seen + 1  # the APPEND and the COPY sent nothing


def test_issue_13_store_junk_keyword_learns_spam(server: KarteroServer, rspamd: PrivateRspamd) -> None:
    spam, ham = rspamd.learned()
    seen = len(server.log_events("spam.learned"))
    deliver(server, "you won")
    imap = login(server)
    try:
        uid = last_uid(imap, "INBOX")
        assert imap.uid("STORE", uid, "+FLAGS", "($Junk)")[0] == "OK"
    finally:
        imap.logout()
    assert learned_after(server, rspamd, seen + 1) == (spam + 1, ham)


def test_issue_13_imap_does_not_wait_for_a_hung_controller(server: KarteroServer, rspamd: PrivateRspamd) -> None:
    """rspamd frozen (it accepts connections and never answers): MOVE still answers at once, well within
    the learner's 10 s request timeout; the report is learned when rspamd wakes up."""
    spam, ham = rspamd.learned()
    seen = len(server.log_events("spam.learned"))
    deliver(server, "while frozen")
    imap = login(server)
    rspamd.pause()
    try:
        uid = last_uid(imap, "INBOX")
        started = time.monotonic()
        assert imap.uid("MOVE", uid, "Junk")[0] == "OK"
        assert imap.noop()[0] == "OK"
        assert time.monotonic() - started < 2.0
    finally:
        rspamd.resume()
        imap.logout()
    assert learned_after(server, rspamd, seen + 1) == (spam + 1, ham)


def test_issue_13_reports_wait_for_a_controller_that_is_down(server: KarteroServer, rspamd: PrivateRspamd) -> None:
    """rspamd stopped: the learner retries with its backoff and learns once rspamd is back."""
    spam, ham = rspamd.learned()  # redis keeps the counts while rspamd is away
    seen = len(server.log_events("spam.learned"))
    retries = len(server.log_events("spam.learn_retry"))
    deliver(server, "while away")
    rspamd.stop_rspamd()
    try:
        imap = login(server)
        try:
            assert imap.uid("MOVE", last_uid(imap, "INBOX"), "Junk")[0] == "OK"
        finally:
            imap.logout()
        line = server.wait_events("spam.learn_retry", retries + 1)[-1]
        assert ' kind=spam attempts=1 retry_in_s=1.0 detail="ConnectionRefusedError:' in line
    finally:
        rspamd.start_rspamd()
    assert learned_after(server, rspamd, seen + 1) == (spam + 1, ham)
    assert server.log_events("spam.learned")[-1].endswith(tuple(f" attempts={n}" for n in range(2, 9)))


def test_issue_13_learning_on_postgresql(
    tmp_path: Path, rspamd: PrivateRspamd, postgres: PrivatePostgres
) -> None:
    """The learner reads the message through the PostgreSQL store's reader (bodies in blob_chunks)."""
    mx = make_server(tmp_path / "pg", rspamd, store_url=postgres.migrated_database())
    try:
        spam, ham = rspamd.learned()
        deliver(mx, "from the cluster")
        imap = login(mx)
        try:
            assert imap.uid("MOVE", last_uid(imap, "INBOX"), "Junk")[0] == "OK"
        finally:
            imap.logout()
        assert learned_after(mx, rspamd, 1) == (spam + 1, ham)
    finally:
        assert mx.stop() == 0, mx.log

"""Issue 12, quotas on a real `kartero serve` (one server for the module): limits set with `kartero user
quota`, 452 4.2.2 at RCPT for a full mailbox and for a SIZE that does not fit, GETQUOTAROOT/GETQUOTA
and APPEND NO [OVERQUOTA] over imaplib, the 90 % warning once."""

from __future__ import annotations

import imaplib
import smtplib
from collections.abc import Iterator

import pytest

from tests.integration.harness import KarteroServer, run_cli_in_process, tls_context, wait_for

PASSWORD = "quota password"
# account -> its limit in octets, set through the CLI before the server starts
LIMITS = {"bob@example.test": 3000, "carol@example.test": 20_000, "dave@example.test": 10_000}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KarteroServer]:
    mx = KarteroServer(tmp_path_factory.mktemp("quota"), limits='default_quota = "1MB"')
    for address, limit in LIMITS.items():
        mx.add_user(address, PASSWORD)
        done = run_cli_in_process(mx.config, "user", "quota", address, str(limit))
        assert done.stdout == f"{address}: 0 of {limit} bytes (0.0%), 0 messages\n"
    mx.add_user("erin@example.test", PASSWORD)
    mx.start()
    try:
        yield mx
    finally:
        assert mx.stop() == 0, mx.log


def used(server: KarteroServer, address: str) -> int:
    store = server.store()
    try:
        account = store.accounts.get_account(address)
        assert account is not None
        return store.mail.quota_usage([account.id])[account.id].used_bytes
    finally:
        store.close()


def send(server: KarteroServer, rcpt: str, body_size: int) -> None:
    body = ("Subject: filler\r\n\r\n" + ("x" * 70 + "\r\n") * (body_size // 72)).encode()
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:  # without SIZE=: the message may pass
        smtp.ehlo("client.test")
        assert smtp.mail("sender@remote.test")[0] == 250
        assert smtp.rcpt(rcpt)[0] == 250
        assert smtp.data(body)[0] == 250


def rcpt_reply(server: KarteroServer, rcpt: str, size: int | None = None) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        assert smtp.mail("sender@remote.test", [f"SIZE={size}"] if size is not None else [])[0] == 250
        return smtp.rcpt(rcpt)


def test_issue_12_rcpt_452_for_a_size_that_does_not_fit_and_for_a_full_mailbox(server: KarteroServer) -> None:
    assert rcpt_reply(server, "bob@example.test", 3001) == (452, b"4.2.2 Mailbox full")
    assert rcpt_reply(server, "bob@example.test", 2000)[0] == 250
    assert rcpt_reply(server, "erin@example.test", 1_000_001) == (452, b"4.2.2 Mailbox full")  # default_quota
    send(server, "bob@example.test", 3200)  # accepted at RCPT: stored though it passes the limit
    assert used(server, "bob@example.test") > 3000
    wait_for(lambda: rcpt_reply(server, "bob@example.test")[0] == 452)  # the book hears of it at once
    assert rcpt_reply(server, "bob@example.test") == (452, b"4.2.2 Mailbox full")
    with smtplib.SMTP(server.host, server.submission_port, timeout=10) as smtp:  # submission alike
        smtp.ehlo("client.test")
        smtp.starttls(context=tls_context())
        smtp.login("erin@example.test", PASSWORD)
        smtp.mail("erin@example.test")
        assert smtp.rcpt("bob@example.test") == (452, b"4.2.2 Mailbox full")


def test_issue_12_getquotaroot_getquota_and_append_over_quota(server: KarteroServer) -> None:
    send(server, "carol@example.test", 5000)
    usage = used(server, "carol@example.test")
    with imaplib.IMAP4(server.host, server.imap_port, timeout=10) as imap:
        imap.login("carol@example.test", PASSWORD)
        capabilities = imap.capability()[1][0].split()
        assert b"QUOTA" in capabilities and b"QUOTA=RES-STORAGE" in capabilities
        status, data = imap.getquotaroot("INBOX")
        assert status == "OK"
        assert data == [[b'"INBOX" ""'], [f'"" (STORAGE {-(-usage // 1024)} 19)'.encode()]]
        assert imap.getquota('""') == ("OK", [f'"" (STORAGE {-(-usage // 1024)} 19)'.encode()])
        room = 20_000 - usage
        assert imap.append("Drafts", None, None, b"Subject: big\r\n\r\n" + b"y" * room)[0] == "NO"
        assert imap.append("Drafts", None, None, b"Subject: big\r\n\r\n" + b"y" * room) == (
            "NO", [b"[OVERQUOTA] Quota exceeded (mailbox is full)"])  # fmt: skip
        fits = b"Subject: fits\r\n\r\n" + b"y" * (room - 17)
        assert imap.append("Drafts", None, None, fits)[0] == "OK"
        # That APPEND took carol past 90 %: the warning arrives in INBOX a moment later, and counts too.
        def warnings() -> list[bytes]:
            return [m for m in server.messages("carol@example.test") if b"Auto-Submitted: auto-generated" in m]

        wait_for(lambda: len(warnings()) == 1)
        usage = 20_000 + len(warnings()[0])
        assert used(server, "carol@example.test") == usage
        assert imap.getquota('""')[1] == [f'"" (STORAGE {-(-usage // 1024)} 19)'.encode()]


def test_issue_12_the_90_percent_warning_arrives_once(server: KarteroServer) -> None:
    send(server, "dave@example.test", 7000)
    assert used(server, "dave@example.test") < 9000
    send(server, "dave@example.test", 1700)  # past 90 % of 10,000
    wait_for(lambda: len(server.messages("dave@example.test")) == 3)
    warning = server.messages("dave@example.test")[-1]
    assert b"\r\nFrom: Mail System <postmaster@example.test>\r\n" in warning
    assert b"\r\nAuto-Submitted: auto-generated\r\n" in warning and b"Subject: Your mailbox is 9" in warning
    send(server, "dave@example.test", 100)
    wait_for(lambda: len(server.messages("dave@example.test")) == 4)
    assert sum(b"Auto-Submitted: auto-generated" in m for m in server.messages("dave@example.test")) == 1
    assert len([e for e in server.log_events("quota.warning") if "account=dave@example.test " in e]) == 1
    done = run_cli_in_process(server.config, "user", "quota", "dave@example.test")
    usage = used(server, "dave@example.test")
    assert done.stdout == f"dave@example.test: {usage} of 10000 bytes ({usage / 100:.1f}%), 4 messages\n"

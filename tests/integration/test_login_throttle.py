"""Issue 8, finding 7: the failed-login throttle shared by SMTP AUTH, IMAP and POP3, with real clients.

The server runs with `[auth] failures_per_address_and_account = 3`, so a lockout takes 0.5 + 1 + 2 s of
failure delays instead of a minute.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import smtplib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer, tls_context
from tests.integration.spares import fresh_server
from tests.integration.test_submission import scram_login

PASSWORDS = {"alice@example.test": "alice's password", "bob@example.test": "bob's password",
             "mallory@example.test": "mallory's password"}  # fmt: skip
THROTTLED = (454, b"4.7.0 Too many authentication failures, try again later")
WRONG = (535, b"5.7.8 Authentication credentials invalid")


def _server(root: Path, store_url: str) -> KarteroServer:
    mx = KarteroServer(root, extra_config="[auth]\nfailures_per_address_and_account = 3\n", store_url=store_url)
    for address, password in PASSWORDS.items():
        mx.add_user(address, password)
    return mx


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[KarteroServer]:
    mx = fresh_server(request, _server)
    yield mx
    if mx.process and mx.process.poll() is None:
        assert mx.stop() == 0, mx.log


def smtp(mx: KarteroServer, source: str = "127.0.0.1") -> smtplib.SMTP:
    client = smtplib.SMTP(mx.host, mx.submission_port, local_hostname="laptop.example", timeout=30,
                          source_address=(source, 0))  # fmt: skip
    client.starttls(context=tls_context())
    client.ehlo("laptop.example")
    return client


def plain(client: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    return client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode())


def imap_login(mx: KarteroServer, user: str, password: str) -> str:
    with imaplib.IMAP4(mx.host, mx.imap_port, timeout=30) as client:
        try:
            client.login(user, password)
        except imaplib.IMAP4.error:
            return "NO"
        client.logout()
        return "OK"


def test_issue_8_an_attacker_with_an_account_is_blocked_at_another_account(server: KarteroServer) -> None:
    """The issue's attack: Mallory logs in to her own account (IMAP) between guesses at Alice's password
    (SMTP AUTH PLAIN, LOGIN, SCRAM). Before, her successes cleared her failures and she was never
    blocked; now the fourth guess is refused unchecked, even with the right password."""
    with smtp(server) as c:
        for guess in range(3):
            assert imap_login(server, "mallory@example.test", PASSWORDS["mallory@example.test"]) == "OK"
            if guess == 0:
                assert plain(c, "alice@example.test", "guess 0") == WRONG
            elif guess == 1:
                c.user, c.password = "alice@example.test", "guess 1"
                with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                    c.auth("LOGIN", c.auth_login)
                assert (failed.value.smtp_code, failed.value.smtp_error) == WRONG
            else:
                assert scram_login(c, "alice@example.test", "guess 2") == WRONG
        assert imap_login(server, "mallory@example.test", PASSWORDS["mallory@example.test"]) == "OK"
        assert plain(c, "alice@example.test", PASSWORDS["alice@example.test"]) == THROTTLED
        scram_first = base64.b64encode(b"n,,n=alice@example.test,r=nonce").decode()
        assert c.docmd("AUTH", f"SCRAM-SHA-256 {scram_first}") == THROTTLED
    assert imap_login(server, "alice@example.test", PASSWORDS["alice@example.test"]) == "NO"
    pop = poplib.POP3(server.host, server.pop3_port, timeout=30)
    pop.user("alice@example.test")
    with pytest.raises(poplib.error_proto):
        pop.pass_(PASSWORDS["alice@example.test"])
    pop.quit()
    # Nobody else is locked out: Bob behind the same address, Mallory herself, Alice from elsewhere.
    assert imap_login(server, "bob@example.test", PASSWORDS["bob@example.test"]) == "OK"
    with smtp(server) as c:
        assert plain(c, "mallory@example.test", PASSWORDS["mallory@example.test"])[0] == 235
    with smtp(server, source="127.0.0.2") as c:
        assert plain(c, "alice@example.test", PASSWORDS["alice@example.test"])[0] == 235
    assert len(server.wait_events("smtp.auth_failed", 3)) == 3
    throttled = (server.wait_events("smtp.auth_throttled", 2) + server.wait_events("imap.login_throttled", 1)
                 + server.wait_events("pop3.login_throttled", 1))  # fmt: skip
    assert all("reason=address+account" in line for line in throttled), throttled
    assert PASSWORDS["alice@example.test"] not in server.log


def test_issue_8_parallel_wrong_logins_are_checked_at_most_up_to_the_limit(server: KarteroServer) -> None:
    """12 simultaneous IMAP logins with wrong passwords: each is counted before its check, so 3 are
    checked (and answered after the delay) and 9 refused at once."""
    results: list[str] = []
    start = threading.Barrier(12)

    def attempt(n: int) -> None:
        start.wait()
        results.append(imap_login(server, "alice@example.test", f"wrong {n}"))

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == ["NO"] * 12
    assert len(server.wait_events("imap.login_throttled", 9)) == 9
    assert len(server.log_events("imap.login_failed")) == 3
    # The right password is not checked either while the pair is locked out; Bob's is.
    assert imap_login(server, "alice@example.test", PASSWORDS["alice@example.test"]) == "NO"
    assert imap_login(server, "bob@example.test", PASSWORDS["bob@example.test"]) == "OK"

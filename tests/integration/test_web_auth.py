"""Who may use the HTTP side (issue 14): password sign-in for admins at /admin/ and for users at /,
session cookies and CSRF tokens, bearer tokens from `kartero token create`, the shared login throttle."""

from __future__ import annotations

import asyncio
import email
import email.policy
import imaplib
import re
import smtplib
import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import PASSWORD, KarteroServer, run_cli_in_process, wait_for
from tests.integration.web_client import Browser, csrf_of

ADMIN, USER = "admin@example.test", "bob@example.test"
METRICS_TOKEN = "scrape-me-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KarteroServer]:
    """One server for the module (the tests use accounts of their own where they change one)."""
    server = KarteroServer(tmp_path_factory.mktemp("web") / "k", http=True,
                           extra_config=f'[auth]\nfailures_per_address_and_account = 2\n'
                                        f'[http]\nmetrics_token = "{METRICS_TOKEN}"\n',
                           limits='command_deadline = "2s"')  # fmt: skip
    server.add_user(ADMIN, admin=True)
    server.add_user(USER)
    server.start()
    yield server
    assert server.stop() == 0, server.log


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_admin_signs_in_with_a_strict_http_only_session_cookie(server: KarteroServer) -> None:
    async def body() -> None:
        async with Browser(server.http_url) as browser:
            status, _, response = await browser.get("/admin/")
            assert (status, response.headers["Location"]) == (303, "/admin/login")
            status, _, response = await browser.login(ADMIN, PASSWORD)
            assert (status, response.headers["Location"]) == (303, "/admin/")
            cookie = next(v for k, v in response.headers.items() if k == "Set-Cookie" and "kartero_session=" in v)
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
            secret = browser.cookie("kartero_session")
            assert secret is not None and len(secret) >= 43  # 256 random bits, url-safe base64
            status, page, response = await browser.get("/admin/")
            assert status == 200 and "Dashboard" in page and ADMIN in page
            assert response.headers["X-Frame-Options"] == "DENY"
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
            # A second sign-in gets another session id.
            async with Browser(server.http_url) as other:
                await other.login(ADMIN, PASSWORD)
                assert other.cookie("kartero_session") not in (None, secret)

    run(body())


def test_sign_in_refusals(server: KarteroServer) -> None:
    async def body() -> None:
        async with Browser(server.http_url) as browser:
            _, page, _ = await browser.get("/admin/login")
            token = csrf_of(page)
            form = {"address": ADMIN, "password": PASSWORD}
            status, page, _ = await browser.post("/admin/login", {**form, "csrf": "x" + token})
            assert status == 403 and "The form expired" in page
            status, page, _ = await browser.post("/admin/login", form)
            assert status == 403 and browser.cookie("kartero_session") is None
            status, page, _ = await browser.post("/admin/login", {**form, "csrf": token},
                                                 headers={"Origin": "http://evil.example"})  # fmt: skip
            assert status == 403 and browser.cookie("kartero_session") is None
            status, page, _ = await browser.post("/admin/login", {**form, "csrf": token, "password": "nope"})
            assert status == 401 and "Wrong address or password." in page
            status, page, _ = await browser.login(USER, PASSWORD)
            assert status == 403 and "This account is not an administrator." in page
            assert browser.cookie("kartero_session") is None

    run(body())


def test_a_user_cannot_reach_the_admin_pages(server: KarteroServer) -> None:
    async def body() -> None:
        async with Browser(server.http_url) as browser:
            status, _, response = await browser.login(USER, PASSWORD, admin=False)
            assert (status, response.headers["Location"]) == (303, "/")
            status, page, _ = await browser.get("/")
            assert status == 200 and "Change your password" in page
            status, page, _ = await browser.get("/admin/")
            assert status == 403 and "is not an administrator" in page
            status, page, _ = await browser.get("/api/v1/accounts")
            assert status in (403, 404)

    run(body())


def test_logout_needs_the_csrf_token_and_ends_the_session(server: KarteroServer) -> None:
    async def body() -> None:
        async with Browser(server.http_url) as browser:
            await browser.login(ADMIN, PASSWORD)
            _, page, _ = await browser.get("/admin/")
            status, _, _ = await browser.post("/admin/logout", {"csrf": "wrong"})
            assert status == 403
            assert (await browser.get("/admin/"))[0] == 200
            secret = browser.cookie("kartero_session")
            status, _, response = await browser.post("/admin/logout", {"csrf": csrf_of(page)})
            assert (status, response.headers["Location"]) == (303, "/admin/login")
            assert (await browser.get("/admin/"))[0] == 303
        async with Browser(server.http_url) as replay:  # the old cookie is dead on the server too
            replay.session.cookie_jar.update_cookies({"kartero_session": secret or ""})
            assert (await replay.get("/admin/"))[0] == 303

    run(body())


def test_bearer_tokens_from_the_cli(server: KarteroServer) -> None:
    admin_token = run_cli_in_process(server.config, "token", "create", "ci").stdout.strip()
    user_token = run_cli_in_process(server.config, "token", "create", "bobs", "--user", USER).stdout.strip()
    assert re.fullmatch(r"kt_[A-Za-z0-9_-]{43}", admin_token)
    listed = run_cli_in_process(server.config, "token", "list").stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["bobs", "ci"]
    assert listed[0].endswith(f" {USER}") and listed[1].endswith(" admin")
    assert run_cli_in_process(server.config, "token", "create", "ci", check=False).returncode == 1

    async def body() -> None:
        async with Browser(server.http_url) as client:
            status, text, response = await client.get("/api/v1/me")
            assert status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.content_type == "application/json" and "error" in text
            for bad in ("Bearer " + admin_token + "x", "Bearer ", "Basic " + admin_token, "Bearer " + "a" * 5000):
                assert (await client.get("/api/v1/me", headers={"Authorization": bad}))[0] in (400, 401)
            status, text, _ = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {admin_token}"})
            assert status == 200 and '"admin": true' in text and "token:ci" in text
            status, text, _ = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {user_token}"})
            assert status == 200 and '"admin": false' in text and USER in text

    run(body())
    assert run_cli_in_process(server.config, "token", "revoke", "ci").stdout == "revoked ci\n"

    async def revoked() -> None:
        async with Browser(server.http_url) as client:
            status, _, _ = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {admin_token}"})
            assert status == 401

    run(revoked())


def test_user_changes_their_password(server: KarteroServer) -> None:
    address = "carol@example.test"
    server.add_user(address, "old-password")

    async def body() -> None:
        async with Browser(server.http_url) as browser, Browser(server.http_url) as elsewhere:
            await browser.login(address, "old-password", admin=False)
            await elsewhere.login(address, "old-password", admin=False)
            _, page, _ = await browser.get("/")
            csrf = csrf_of(page)
            form = {"csrf": csrf, "current": "old-password", "new": "new-password", "again": "new-password"}
            assert (await browser.post("/password", {**form, "csrf": "x"}))[0] == 403
            status, page, _ = await browser.post("/password", {**form, "again": "other"})
            assert status == 400 and "The two new passwords differ." in page
            status, page, _ = await browser.post("/password", {**form, "current": "wrong"})
            assert status == 401 and "The current password is wrong." in page
            status, _, response = await browser.post("/password", form)
            assert (status, response.headers["Location"]) == (303, "/?changed=1")
            status, page, _ = await browser.get("/?changed=1")
            assert status == 200 and "Your password was changed" in page
            status, page, _ = await elsewhere.get("/")  # the other browser was signed out
            assert status == 200 and 'action="/login"' in page

    run(body())
    with imaplib.IMAP4(server.host, server.imap_port) as imap:
        assert imap.login(address, "new-password")[0] == "OK"


def test_the_web_login_shares_the_failed_login_throttle_with_imap(server: KarteroServer) -> None:
    address = "dora@example.test"
    server.add_user(address)

    async def body() -> None:
        async with Browser(server.http_url) as browser:
            for _ in range(2):  # [auth] failures_per_address_and_account = 2
                assert (await browser.login(address, "wrong", admin=False))[0] == 401

    run(body())
    with imaplib.IMAP4(server.host, server.imap_port) as imap, pytest.raises(imaplib.IMAP4.error):
        imap.login(address, PASSWORD)  # the right password, refused unchecked: locked out
    assert server.wait_events("http.login_failed", 2)


def test_https_session_cookie_is_secure(server: KarteroServer) -> None:
    async def body() -> None:
        async with Browser(server.https_url) as browser:
            _, _, response = await browser.get("/admin/login")
            assert "Secure" in response.headers["Set-Cookie"]
            assert response.headers["Strict-Transport-Security"].startswith("max-age=")
            status, _, response = await browser.login(ADMIN, PASSWORD)
            cookie = next(v for k, v in response.headers.items() if k == "Set-Cookie" and "kartero_session=" in v)
            assert status == 303 and "Secure" in cookie and "HttpOnly" in cookie

    run(body())


def test_metrics_over_http_need_the_metrics_token(server: KarteroServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("x@remote.test", [USER], b"Subject: counted\r\n\r\nhi\r\n")

    async def body() -> None:
        async with Browser(server.http_url) as client:
            assert (await client.login("nobody@example.test", "wrong"))[0] == 401
            assert (await client.login(ADMIN, PASSWORD))[0] == 303
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456"}, {"Authorization": METRICS_TOKEN}):
                status, _, response = await client.get("/metrics", headers=headers)
                assert status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
            status, text, response = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
            assert status == 200 and response.content_type == "text/plain"
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip
            assert samples[("kartero_messages_received_total", (("origin", "smtp"),))] >= 1
            assert samples[("kartero_connections_open", (("listener", "http"),))] >= 1
            assert samples[("kartero_logins_total", (("protocol", "http"),))] >= 1
            assert samples[("kartero_auth_failures_total", (("protocol", "http"),))] >= 1

    run(body())


def test_user_sets_a_vacation_reply_that_answers_mail(server: KarteroServer) -> None:
    address = "vic@example.test"
    server.add_user(address)

    async def body() -> None:
        async with Browser(server.http_url) as browser:
            await browser.login(address, PASSWORD, admin=False)
            _, page, _ = await browser.get("/")
            assert "Your vacation reply is <strong>off</strong>" in page
            form = {"csrf": csrf_of(page), "action": "on", "subject": 'Away "for now"', "body": "Back on\nMonday.",
                    "days": "3"}  # fmt: skip
            assert (await browser.post("/vacation", {**form, "csrf": "wrong"}))[0] == 403
            status, page, _ = await browser.post("/vacation", {**form, "days": "400"})
            assert status == 400 and "days must be 1 to 90" in page and "Back on\nMonday." in page
            status, _, response = await browser.post("/vacation", form)
            assert (status, response.headers["Location"]) == (303, "/?changed=on")
            _, page, _ = await browser.get("/?changed=on")
            assert "Your vacation reply is on." in page and "&#34;for now&#34;" in page

    run(body())
    with smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("pat@remote.test", [address], b"From: pat@remote.test\r\nTo: vic@example.test\r\n"
                        b"Subject: hello\r\n\r\nhi\r\n")
    store = server.store()
    try:
        account = store.accounts.get_account(address)
        assert account is not None
        assert store.sieve.active_script(account.id) is not None
        wait_for(lambda: any(r.address == "pat@remote.test" for e in store.queue.queue_entries() for r in e.recipients))
        (reply,) = [e for e in store.queue.queue_entries() if e.recipients[0].address == "pat@remote.test"]
        text = store.mail.read_message(reply.id)
        parsed = email.message_from_bytes(text, policy=email.policy.default)
        assert reply.sender == "" and parsed["Subject"] == 'Away "for now"' and b"Back on\r\nMonday." in text
        store.sieve.put_script(account.id, "mine", 'require ["fileinto"];\r\nfileinto "Archive";\r\n')
    finally:
        store.close()

    async def own_script_and_off() -> None:
        async with Browser(server.http_url) as browser:
            await browser.login(address, PASSWORD, admin=False)
            _, page, _ = await browser.get("/")
            status, _, _ = await browser.post("/vacation", {"csrf": csrf_of(page), "action": "off"})
            assert status == 303
            _, page, _ = await browser.get("/?changed=off")
            assert "Your vacation reply is off." in page
            store = server.store()
            try:
                store.sieve.set_active(account.id, "mine")
            finally:
                store.close()
            _, page, _ = await browser.get("/")
            assert "Your own Sieve script <strong>mine</strong> is active" in page
            status, page, _ = await browser.post("/vacation", {"csrf": csrf_of(page), "action": "on", "body": "x",
                                                               "days": "7"})  # fmt: skip
            assert status == 409 and "your own Sieve script &#39;mine&#39; is active" in page

    run(own_script_and_off())


def test_issue_14_a_body_that_never_arrives_gets_408_at_the_deadline(server: KarteroServer) -> None:
    """[limits] command_deadline (2 s here): a client that announces a body and sends 3 bytes of it holds
    its connection no longer (the review's finding F1: it held it for ever)."""
    token = run_cli_in_process(server.config, "token", "create", "slow").stdout.strip()
    for path, kind, status in (("/login", "application/x-www-form-urlencoded", b"408"),
                               ("/api/v1/accounts", "application/json", b"408"),
                               ("/api/v1/accounts", "application/json", b"401")):  # fmt: skip
        bearer = token if status == b"408" else "nothing"  # credentials are checked before the body is read
        with socket.create_connection((server.host, server.http_port), timeout=20) as client:
            client.sendall(f"POST {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: {kind}\r\n"
                           f"Content-Length: 60000\r\nAuthorization: Bearer {bearer}\r\n\r\nabc".encode())
            started = time.monotonic()
            answer = client.recv(4096)
            assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
            assert time.monotonic() - started < 15
    # The form's own answer: signed in users' routes answer before reading a body they have no use for.
    with socket.create_connection((server.host, server.http_port), timeout=20) as client:
        client.sendall(f"POST /vacation HTTP/1.1\r\nHost: {server.host}\r\nContent-Length: 100000\r\n\r\n".encode())
        assert client.recv(4096).startswith(b"HTTP/1.1 303 ")


def test_issue_14_a_password_too_long_is_refused_never_cut(server: KarteroServer) -> None:
    address, long_password = "lou@example.test", "p" * 1500
    server.add_user(address, long_password)

    async def body() -> None:
        async with Browser(server.http_url) as browser:
            assert (await browser.login(address, long_password[:1024], admin=False))[0] == 401

    run(body())


def test_issue_14_other_host_names_get_nothing(server: KarteroServer) -> None:
    """The review's F13: a rebound name (DNS rebinding) reached the login form and /metrics."""

    async def body() -> None:
        async with Browser(server.http_url) as client:
            bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
            for host in ("evil.test", f"evil.test:{server.http_port}", "example.test.evil.test"):
                for path, headers in (("/admin/login", {}), ("/metrics", bearer), ("/api/v1/openapi.json", {})):
                    status, _, _ = await client.get(path, headers={"Host": host, **headers})
                    assert status == 421, (host, path)
            for host in ("mx.example.test", "EXAMPLE.test:8443", "autoconfig.example.test", "localhost"):
                assert (await client.get("/admin/login", headers={"Host": host}))[0] == 200, host

    run(body())

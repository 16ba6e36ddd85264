"""The web admin's pages (issue 14) over HTTP: who may see them, the CSRF token on every form, what
each form does, and HTML escaping of every string a user or a remote server chose.

One server for the module, with a loopback DNS server (an empty zone: the DNS check answers at once)
and a route for remote.test to a stub MX that answers every RCPT with a 451 whose text is markup.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
from collections.abc import Coroutine, Iterator
from typing import Any
from urllib.parse import quote

import pytest

from kartero.web.ui import POST_ROUTES
from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import PASSWORD, KarteroServer, tls_context, wait_for
from tests.integration.web_client import Browser, StubMX, csrf_of

ADMIN, USER, SENDER = "admin@example.test", "bob@example.test", "alice@example.test"
SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


class Site:
    def __init__(self, server: KarteroServer, stub: StubMX) -> None:
        self.server, self.stub = server, stub
        self.queue_id = ""

    def queued(self) -> dict[str, Any]:
        """The queue as the store has it: id -> entry."""
        store = self.server.store()
        try:
            return {e.id: e for e in store.queue.queue_entries()}
        finally:
            store.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with LoopbackDNS("") as dns, StubMX(f"451 4.3.0 {SCRIPT}".encode()) as stub:
        server = KarteroServer(
            tmp_path_factory.mktemp("webadmin") / "k",
            http=True,
            extra_config=dns.config + f'[routes]\n"remote.test" = "{stub.host}:{stub.port}"\n',
        )
        server.add_user(ADMIN, admin=True)
        server.add_user(USER)
        server.add_user(SENDER)
        server.add_alias("sales@example.test", USER)
        server.start()
        site = Site(server, stub)
        # A message for the queue: its Subject and the remote server's reply carry markup.
        with smtplib.SMTP(server.host, server.submission_port, timeout=30) as client:
            client.starttls(context=tls_context())
            client.login(SENDER, PASSWORD)
            client.sendmail(
                SENDER,
                ["carol@remote.test"],
                f"From: {SENDER}\r\nTo: carol@remote.test\r\nSubject: {SCRIPT}\r\n\r\nhello\r\n".encode(),
            )
        wait_for(lambda: any(r.attempts for e in site.queued().values() for r in e.recipients), 20)
        site.queue_id = next(iter(site.queued()))
        yield site
        assert server.stop() == 0, server.log


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def pages(site: Site) -> list[str]:
    q = quote(site.queue_id)
    return [
        "/admin/",
        "/admin/accounts?q=bob",
        f"/admin/account?address={USER}",
        f"/admin/account/delete?address={USER}",
        "/admin/aliases",
        "/admin/queue",
        f"/admin/queue/message?id={q}",
        f"/admin/queue/delete?id={q}",
        "/admin/domains",
        "/admin/domains/check?domain=example.test",
        f"/admin/trace?id={q}",
    ]


def forms(site: Site) -> dict[str, dict[str, str]]:
    """A form for each POST route that would change something with the right token."""
    return {
        "/admin/accounts/add": {"address": "victim@example.test", "password": "x"},
        "/admin/account/password": {"address": USER, "password": "changed"},
        "/admin/account/quota": {"address": USER, "quota": "1k"},
        "/admin/account/admin": {"address": USER, "admin": "on"},
        "/admin/account/delete": {"address": USER},
        "/admin/aliases/add": {"source": "victim@example.test", "destination": "eve@remote.test"},
        "/admin/aliases/delete": {"source": "sales@example.test"},
        "/admin/queue/retry": {"id": site.queue_id},
        "/admin/queue/delete": {"id": site.queue_id},
        "/admin/domains/dkim": {"domain": "example.test", "algorithm": "ed25519", "selector": "victim"},
    }


def test_every_admin_page_and_form_needs_an_admin_session(site: Site) -> None:
    assert set(forms(site)) == set(POST_ROUTES)

    async def body() -> None:
        async with Browser(site.server.http_url) as anonymous:
            for path in pages(site):
                status, _, response = await anonymous.get(path)
                assert (status, response.headers.get("Location")) == (303, "/admin/login"), path
            for path, fields in forms(site).items():
                status, _, response = await anonymous.post(path, {**fields, "csrf": "x"})
                assert (status, response.headers.get("Location")) == (303, "/admin/login"), path
        async with Browser(site.server.http_url) as user:
            await user.login(USER, PASSWORD, admin=False)
            csrf = csrf_of((await user.get("/"))[1])
            for path in pages(site):
                status, page, _ = await user.get(path)
                assert status == 403 and "is not an administrator" in page, path
            for path, fields in forms(site).items():
                status, page, _ = await user.post(path, {**fields, "csrf": csrf})
                assert status == 403 and "is not an administrator" in page, path

    run(body())


def test_every_form_refuses_a_missing_or_wrong_csrf_token(site: Site) -> None:
    async def body() -> None:
        async with Browser(site.server.http_url) as admin:
            await admin.login(ADMIN, PASSWORD)
            csrf = csrf_of((await admin.get("/admin/"))[1])
            for path, fields in forms(site).items():
                for token in (None, "wrong", csrf[:-1]):
                    sent = fields if token is None else {**fields, "csrf": token}
                    status, page, _ = await admin.post(path, sent)
                    assert status == 403 and "The form expired" in page, (path, token)
                # The right token from another origin is refused too.
                status, _, _ = await admin.post(
                    path, {**fields, "csrf": csrf}, headers={"Origin": "http://evil.example"}
                )
                assert status == 403, path
            # Nothing changed.
            _, page, _ = await admin.get("/admin/accounts")
            assert "victim@example.test" not in page
            _, page, _ = await admin.get(f"/admin/account?address={USER}")
            assert ">admin<" not in page and "(the default)" in page
            _, page, _ = await admin.get("/admin/aliases")
            assert "sales@example.test" in page and "victim@example.test" not in page
            _, page, _ = await admin.get("/admin/domains")
            assert "victim._domainkey" not in page
        assert site.queue_id in site.queued()

    run(body())


def test_accounts_add_change_and_delete_with_confirmation(site: Site) -> None:
    new = "dana@example.test"

    async def body() -> None:
        async with Browser(site.server.http_url) as admin:
            await admin.login(ADMIN, PASSWORD)
            _, page, _ = await admin.get("/admin/accounts")
            csrf = csrf_of(page)
            assert 'aria-current="page">Accounts' in page
            form = {"csrf": csrf, "address": new, "password": "dana password", "quota": "2G"}
            status, _, response = await admin.post("/admin/accounts/add", form)
            assert (status, response.headers["Location"]) == (
                303,
                f"/admin/account?address={quote(new)}&done=account-added",
            )
            status, page, _ = await admin.get(response.headers["Location"])
            assert status == 200 and "The account was added." in page and "of 2G" in page and 'value="2G"' in page
            status, page, _ = await admin.post("/admin/accounts/add", form)
            assert status == 409 and f"account {new} already exists" in page
            status, page, _ = await admin.post("/admin/accounts/add", {**form, "address": "x@elsewhere.test"})
            assert status == 400 and "elsewhere.test" in page
            # Search and paging.
            _, page, _ = await admin.get("/admin/accounts?q=DANA")
            assert new in page and USER not in page
            _, page, _ = await admin.get("/admin/accounts?q=nobody-at-all")
            assert "No account matches" in page
            # Password, quota, admin flag.
            status, _, response = await admin.post(
                "/admin/account/password", {"csrf": csrf, "address": new, "password": "new dana"}
            )
            assert (status, response.headers["Location"]) == (303, f"/admin/account?address={quote(new)}&done=password")
            status, page, _ = await admin.post("/admin/account/quota", {"csrf": csrf, "address": new, "quota": "lots"})
            assert status == 400 and "not a size" in page
            await admin.post("/admin/account/quota", {"csrf": csrf, "address": new, "quota": "0"})
            _, page, _ = await admin.get(f"/admin/account?address={new}")
            assert "no limit" in page
            await admin.post("/admin/account/admin", {"csrf": csrf, "address": new, "admin": "on"})
            _, page, _ = await admin.get(f"/admin/accounts?q={new}")
            assert ">admin<" in page
            status, page, _ = await admin.post("/admin/account/admin", {"csrf": csrf, "address": ADMIN, "admin": "off"})
            assert status == 409 and "your own administrator rights" in page
            status, page, _ = await admin.post(
                "/admin/account/admin", {"csrf": csrf, "address": " Admin@EXAMPLE.test", "admin": "off"}
            )
            assert status == 409 and "your own administrator rights" in page
            # Delete: a page asks first (a GET changes nothing), then the POST deletes.
            status, page, _ = await admin.get(f"/admin/account/delete?address={new}")
            assert status == 200 and f"Delete {new}?" in page and 'action="/admin/account/delete"' in page
            assert new in (await admin.get("/admin/accounts"))[1]
            status, _, response = await admin.post("/admin/account/delete", {"csrf": csrf, "address": new})
            assert (status, response.headers["Location"]) == (303, "/admin/accounts?done=account-deleted")
            _, page, _ = await admin.get("/admin/accounts?done=account-deleted")
            assert "The account was deleted." in page and new not in page
            status, page, _ = await admin.post("/admin/account/delete", {"csrf": csrf, "address": ADMIN})
            assert status == 409 and "signed in with" in page
            status, _, _ = await admin.get("/admin/account?address=nobody@example.test")
            assert status == 404

    run(body())
    import imaplib

    with imaplib.IMAP4(site.server.host, site.server.imap_port) as imap, pytest.raises(imaplib.IMAP4.error):
        imap.login(new, "new dana")


def test_aliases_catch_all_and_remote_targets(site: Site) -> None:
    async def body() -> None:
        async with Browser(site.server.http_url) as admin:
            await admin.login(ADMIN, PASSWORD)
            csrf = csrf_of((await admin.get("/admin/aliases"))[1])
            for source, destination in (("@example.test", USER), ("fwd@example.test", "dave@elsewhere.test")):
                status, _, response = await admin.post(
                    "/admin/aliases/add", {"csrf": csrf, "source": source, "destination": destination}
                )
                assert (status, response.headers["Location"]) == (303, "/admin/aliases?done=alias-added")
            status, page, _ = await admin.post(
                "/admin/aliases/add", {"csrf": csrf, "source": "@other.test", "destination": USER}
            )
            assert status == 400 and "not one of the local domains" in page
            _, page, _ = await admin.get("/admin/aliases?done=alias-added")
            assert "The alias was added." in page
            row = page[page.index("<strong>@example.test</strong>") :][:600]
            assert ">catch-all<" in row and USER in row
            row = page[page.index("<strong>fwd@example.test</strong>") :][:600]
            assert "dave@elsewhere.test" in row and ">remote<" in row
            for source in ("@example.test", "fwd@example.test"):
                status, _, response = await admin.post("/admin/aliases/delete", {"csrf": csrf, "source": source})
                assert (status, response.headers["Location"]) == (303, "/admin/aliases?done=alias-deleted")
            _, page, _ = await admin.get("/admin/aliases")
            assert "fwd@example.test" not in page and "<strong>@example.test</strong>" not in page
            status, page, _ = await admin.post("/admin/aliases/delete", {"csrf": csrf, "source": "fwd@example.test"})
            assert status == 404 and "no alias" in page

    run(body())


def test_user_and_remote_strings_are_escaped(site: Site) -> None:
    """`<script>` in an account name, an alias target, a search, a queued Subject and a remote reply."""

    async def body() -> None:
        async with Browser(site.server.http_url) as admin:
            await admin.login(ADMIN, PASSWORD)
            csrf = csrf_of((await admin.get("/admin/accounts"))[1])
            status, page, _ = await admin.post(
                "/admin/accounts/add", {"csrf": csrf, "password": "x", "address": f'"{SCRIPT}"@example.test'}
            )
            assert status == 303, page
            status, _, _ = await admin.post(
                "/admin/aliases/add",
                {"csrf": csrf, "source": "x@example.test", "destination": f'"{SCRIPT}"@remote.test'},
            )
            assert status == 303
            q = quote(site.queue_id)
            shown = [
                "/admin/accounts",
                f"/admin/account?address={quote(SCRIPT)}@example.test",
                f"/admin/account/delete?address={quote(SCRIPT)}@example.test",
                "/admin/aliases",
                f"/admin/accounts?q={quote(SCRIPT)}",
                "/admin/queue",
                f"/admin/queue/message?id={q}",
                f"/admin/trace?id={q}",  # the remote reply in the deferral's event
                f"/admin/trace?address={quote(SCRIPT)}@example.test",  # the search echoed in the form
            ]
            for path in shown:
                status, page, _ = await admin.get(path)
                assert status == 200 and ESCAPED in page and "<script>alert" not in page, path
            _, page, _ = await admin.get(f"/admin/queue/message?id={q}")
            assert f"Subject: {ESCAPED}" in page  # the header
            assert f"451 4.3.0 {ESCAPED}" in page  # the remote server's reply
            # An error message that repeats the input is escaped too.
            status, page, _ = await admin.post(
                "/admin/accounts/add", {"csrf": csrf, "password": "x", "address": SCRIPT}
            )
            assert status == 400 and "&lt;script&gt;" in page and "<script>alert" not in page

    run(body())


def test_queue_list_show_retry_and_delete(site: Site) -> None:
    queue_id = site.queue_id

    async def body() -> None:
        async with Browser(site.server.http_url) as admin:
            await admin.login(ADMIN, PASSWORD)
            _, page, _ = await admin.get("/admin/queue")
            assert queue_id in page and "carol@remote.test" in page and ">deferred<" in page
            _, page, _ = await admin.get(f"/admin/queue/message?id={quote(queue_id)}")
            assert f"From: {SENDER}" in page and SENDER in page and "hello" not in page  # the header only
            csrf = csrf_of(page)
            attempts = site.queued()[queue_id].recipients[0].attempts
            status, _, response = await admin.post("/admin/queue/retry", {"csrf": csrf, "id": queue_id})
            assert (status, response.headers["Location"]) == (
                303,
                f"/admin/queue/message?id={quote(queue_id)}&done=retried",
            )
            wait_for(lambda: site.queued()[queue_id].recipients[0].attempts > attempts, 20)
            status, page, _ = await admin.post("/admin/queue/retry", {"csrf": csrf, "id": "nope"})
            assert status == 404
            status, page, _ = await admin.get(f"/admin/queue/delete?id={quote(queue_id)}")
            assert status == 200 and "will not be delivered to carol@remote.test" in page
            status, _, response = await admin.post("/admin/queue/delete", {"csrf": csrf, "id": queue_id})
            assert (status, response.headers["Location"]) == (303, "/admin/queue?done=queue-deleted")
            _, page, _ = await admin.get("/admin/queue?done=queue-deleted")
            assert "The message was deleted from the queue." in page and queue_id not in page
            assert (await admin.get(f"/admin/queue/message?id={quote(queue_id)}"))[0] == 404

    try:
        run(body())
    finally:
        site.queue_id = "gone"
    assert queue_id not in site.queued()


def test_dashboard_and_domains(site: Site) -> None:
    with smtplib.SMTP(site.server.host, site.server.port) as client:  # this hour's chart counts it
        client.sendmail("someone@remote.test", [ADMIN], b"Subject: counted\r\n\r\nhi\r\n")

    async def body() -> None:
        async with Browser(site.server.http_url) as admin:
            await admin.login(ADMIN, PASSWORD)
            status, page, _ = await admin.get("/admin/")
            assert status == 200 and "No activity data yet." not in page and "<svg" in page
            shown = dict(re.findall(r'<li class="(\w+)"><span class="swatch"></span>\w+ <strong>(\d+)</strong>', page))
            assert int(shown["received"]) >= 1 and int(shown["delivered"]) >= 1, shown
            assert 'id="store-size"' in page and 'id="cert-days">82' in page  # the self-signed test cert: 825 days
            assert "<td>smtp</td>" in page and "<td>http</td>" in page
            _, page, _ = await admin.get("/admin/domains")
            csrf = csrf_of(page)
            assert "No DKIM key yet" in page
            form = {"csrf": csrf, "domain": "example.test", "algorithm": "ed25519", "selector": "web1"}
            status, _, response = await admin.post("/admin/domains/dkim", form)
            assert (status, response.headers["Location"]) == (303, "/admin/domains?done=dkim")
            _, page, _ = await admin.get("/admin/domains?done=dkim")
            assert 'web1._domainkey.example.test. IN TXT "v=DKIM1; k=ed25519; p=' in page
            assert 'class="copy small secondary" data-copy="dkim-example.test-web1" hidden' in page
            status, page, _ = await admin.post("/admin/domains/dkim", form)
            assert status == 409 and "already has a key" in page
            status, page, _ = await admin.post("/admin/domains/dkim", {**form, "domain": "other.test"})
            assert status == 404
            status, page, _ = await admin.get("/admin/domains/check?domain=example.test")
            assert status == 200 and "Some required records are missing" in page
            assert '<code id="record-1">example.test. IN MX 10 mx.example.test.</code>' in page
            assert "web1._domainkey.example.test. IN TXT" in page
            status, script, response = await admin.get("/static/admin.js")
            assert status == 200 and "clipboard" in script

    run(body())


def test_the_dashboard_shows_the_certificate_reloaded_on_sighup(site: Site) -> None:
    import signal

    from kartero.tls import make_self_signed

    tls = site.server.root / "tls"
    make_self_signed(tls / "cert.pem", tls / "key.pem", [site.server.hostname], days=10)
    assert site.server.process is not None
    site.server.process.send_signal(signal.SIGHUP)
    site.server.wait_events("tls.reloaded", 1)

    async def body() -> None:
        async with Browser(site.server.http_url) as admin:
            await admin.login(ADMIN, PASSWORD)
            _, page, _ = await admin.get("/admin/")
            assert 'id="cert-days">9 days' in page  # 10 days from a moment ago
            assert '<div class="tile warn">' in page

    run(body())


def test_trace_search_by_address_and_a_bad_time(site: Site) -> None:
    async def body() -> None:
        async with Browser(site.server.http_url) as admin:
            await admin.login(ADMIN, PASSWORD)
            status, page, _ = await admin.get("/admin/trace?address=carol%40REMOTE.test")
            assert status == 200 and page.count('<li class="traced">') == 1
            assert "carol@remote.test" in page and "deferred" in page and "via submission" in page
            status, page, _ = await admin.get("/admin/trace?address=nobody%40example.test")
            assert status == 200 and "No message matches." in page
            status, page, _ = await admin.get("/admin/trace?since=yesterday")
            assert status == 400 and "not a time: &#39;yesterday&#39;" in page

    run(body())


def test_issue_14_a_form_field_too_long_is_refused_not_cut(site: Site) -> None:
    """The review's F6: a 1,500-character password was cut to 1,024 (web login worked, IMAP did not)."""

    async def body() -> None:
        async with Browser(site.server.http_url) as admin:
            await admin.login(ADMIN, PASSWORD)
            csrf = csrf_of((await admin.get("/admin/accounts"))[1])
            status, page, _ = await admin.post("/admin/accounts/add",
                                               {"csrf": csrf, "address": "long@example.test", "password": "p" * 1500})
            assert status == 400 and "longer than 1024 characters" in page
            assert (await admin.get("/admin/account?address=long%40example.test"))[0] == 404

    run(body())

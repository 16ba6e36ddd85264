"""The JSON API /api/v1/ (issue 14) over HTTP: each call's real outcome (an account added over the API
logs in over IMAP, an alias delivers, a queued message is retried and deleted, a DKIM key is made and its
DNS check read), who may call what (bearer tokens, a browser session with its CSRF header), and errors as
JSON for every status."""

from __future__ import annotations

import asyncio
import imaplib
import json
import smtplib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from kartero.auth.tokens import TOKEN_PREFIX, new_secret
from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import PASSWORD, KarteroServer, free_port, tls_context, wait_for
from tests.integration.web_client import Browser, csrf_of

ADMIN, BOB = "admin@example.test", "bob@example.test"
ZONE = "example.test. 60 IN MX 10 mx.example.test.\nmx.example.test. 60 IN A 127.0.0.1\n"
Reply = tuple[int, Any, aiohttp.ClientResponse]


@pytest.fixture(scope="module")
def dns() -> Iterator[LoopbackDNS]:
    with LoopbackDNS(ZONE) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, dns: LoopbackDNS) -> Iterator[KarteroServer]:
    """One server for the module; remote.test's next hop is a closed loopback port, so mail there waits
    in the queue. Each test uses accounts and aliases of its own."""
    closed = free_port()
    server = KarteroServer(tmp_path_factory.mktemp("api") / "k", http=True,
                           extra_config=f'{dns.config}[routes]\n"remote.test" = "127.0.0.1:{closed}"\n')  # fmt: skip
    server.add_user(ADMIN, admin=True)
    server.add_user(BOB)
    server.start()
    server.admin_token = add_token(server, "ci")  # type: ignore[attr-defined]
    server.bob_token = add_token(server, "bob", BOB)  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0, server.log


def add_token(server: KarteroServer, name: str, address: str | None = None) -> str:
    """A bearer token as `kartero token create` makes it (test_web_auth runs the command itself)."""
    secret, digest = new_secret(TOKEN_PREFIX)
    with server.directory() as directory:
        account = directory.store.get_account(address) if address else None
        assert directory.store.add_token(name, digest, account.id if account else None)
    return secret


class Api:
    """An API client: JSON in and out, the bearer token of the caller chosen per call."""

    def __init__(self, server: KarteroServer, session: aiohttp.ClientSession) -> None:
        self.base = server.http_url + "/api/v1"
        self.session = session
        self.admin: str = server.admin_token  # type: ignore[attr-defined]
        self.bob: str = server.bob_token  # type: ignore[attr-defined]

    async def __call__(self, method: str, path: str, body: object = None, *, token: str | None = "",
                       **kwargs: Any) -> Reply:  # fmt: skip
        """`token`: "" the admin's, None none. A JSON `body` unless `data` is given."""
        headers = dict(kwargs.pop("headers", {}))
        token = self.admin if token == "" else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.base + path, headers=headers, **kwargs) as response:
            text = await response.text()
            if response.status == 204:
                assert text == ""
                return 204, None, response
            assert response.content_type == "application/json", (response.status, text[:200])
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            return response.status, json.loads(text), response


def run(test: Callable[[Api], Awaitable[None]], server: KarteroServer) -> None:
    async def body() -> None:
        async with aiohttp.ClientSession() as session:
            await test(Api(server, session))

    asyncio.run(body())


def test_accounts(server: KarteroServer) -> None:
    erin = "erin@example.test"

    async def body(api: Api) -> None:
        status, value, _ = await api("POST", "/accounts", {"address": erin, "password": "erin-1", "quota": "lots"})
        assert status == 400 and value["error"].startswith("not a size: 'lots' (like \"500M\"")
        assert (await api("GET", f"/accounts/{erin}"))[0] == 404  # the bad quota made no account
        status, value, _ = await api("POST", "/accounts", {"address": erin, "password": "e", "quota": "9" * 20 + "G"})
        assert status == 400 and "at most 1 EB" in value["error"]  # was a 500 from SQLite's 64-bit integer
        assert (await api("GET", f"/accounts/{erin}"))[0] == 404
        status, value, _ = await api("POST", "/accounts", {"address": "Erin@Example.TEST", "password": "erin-1",
                                                          "quota": "500M"})  # fmt: skip
        assert status == 201
        assert value == {"address": erin, "admin": False, "created_at": value["created_at"],
                         "quota_bytes": 500_000_000, "quota_is_default": False, "used_bytes": 0, "messages": 0}
        assert (await api("POST", "/accounts", {"address": erin, "password": "x"}))[:2] == \
            (409, {"error": f"account {erin} already exists"})  # fmt: skip
        status, value, _ = await api("GET", "/accounts", params={"search": "ERIN"})
        assert status == 200 and [a["address"] for a in value["accounts"]] == [erin] and value["total"] == 1
        _, every, _ = await api("GET", "/accounts")
        assert [a["address"] for a in every["accounts"]][:3] == [ADMIN, BOB, erin]  # by address
        status, value, _ = await api("GET", "/accounts", params={"offset": "1", "limit": "1"})
        assert [a["address"] for a in value["accounts"]] == [BOB]
        assert (value["total"], value["offset"], value["limit"]) == (every["total"], 1, 1)
        status, value, _ = await api("PATCH", f"/accounts/{erin}", {"quota": "default", "admin": True})
        assert status == 200 and value["admin"] is True and value["quota_is_default"] is True
        status, value, _ = await api("PATCH", f"/accounts/{erin}", {"password": "erin-2", "quota": "2G"})
        assert status == 200 and value["quota_bytes"] == 2_000_000_000
        assert (await api("PATCH", f"/accounts/{erin}", {"password": "x", "quota": "huge"}))[0] == 400
        assert (await api("PATCH", f"/accounts/{erin}", {}))[:2] == \
            (400, {"error": "nothing to change: give password, quota or admin"})  # fmt: skip
        assert (await api("PATCH", "/accounts/nobody@example.test", {"admin": True}))[:2] == \
            (404, {"error": "no account nobody@example.test"})  # fmt: skip

    run(body, server)
    with imaplib.IMAP4(server.host, server.imap_port) as imap:  # the password set last (not "x") is the one
        assert imap.login(erin, "erin-2")[0] == "OK"

    async def delete(api: Api) -> None:
        assert (await api("DELETE", f"/accounts/{erin}"))[0] == 204
        assert (await api("GET", f"/accounts/{erin}"))[:2] == (404, {"error": f"no account {erin}"})
        assert (await api("DELETE", f"/accounts/{erin}"))[0] == 404

    run(delete, server)


def test_aliases_deliver(server: KarteroServer) -> None:
    async def add(api: Api) -> None:
        alias = {"source": "sales@example.test", "destination": BOB}
        status, value, _ = await api("POST", "/aliases", alias)
        assert (status, value) == (201, {"source": "sales@example.test", "destinations": [BOB], "catch_all": False,
                                         "remote": []})  # fmt: skip
        assert (await api("POST", "/aliases", alias))[:2] == \
            (409, {"error": "alias sales@example.test already points to that destination"})  # fmt: skip
        status, value, _ = await api("POST", "/aliases", {**alias, "destination": "x@remote.test"})
        assert (status, value["destinations"], value["remote"]) == (201, [BOB, "x@remote.test"], ["x@remote.test"])
        status, value, _ = await api("POST", "/aliases", {"source": "@example.test", "destination": BOB})
        assert status == 201 and value["catch_all"] is True
        status, value, _ = await api("GET", "/aliases")
        assert {a["source"]: a["destinations"] for a in value["aliases"]} == \
            {"sales@example.test": [BOB, "x@remote.test"], "@example.test": [BOB]}  # fmt: skip

    run(add, server)
    before = len(server.messages(BOB))
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.sendmail("someone@elsewhere.example", ["anything@example.test"],
                        b"Subject: through the catch-all\r\n\r\nhello\r\n")  # fmt: skip
    wait_for(lambda: len(server.messages(BOB)) == before + 1)
    assert b"Subject: through the catch-all" in server.messages(BOB)[-1]

    async def delete(api: Api) -> None:
        assert (await api("DELETE", "/aliases/%40example.test"))[0] == 204  # the catch-all, URL-encoded
        assert (await api("DELETE", "/aliases/@example.test"))[:2] == (404, {"error": "no alias @example.test"})
        assert (await api("DELETE", "/aliases/sales@example.test"))[0] == 204
        assert (await api("GET", "/aliases"))[1] == {"aliases": []}

    run(delete, server)


def test_queue_retry_and_delete(server: KarteroServer) -> None:
    with smtplib.SMTP(server.host, server.submission_port, local_hostname="laptop.example", timeout=30) as client:
        client.starttls(context=tls_context())
        client.login(BOB, PASSWORD)
        client.sendmail(BOB, ["dave@remote.test"], b"From: bob@example.test\r\nSubject: stuck\r\n\r\nx\r\n")

    async def body(api: Api) -> None:
        async def entry() -> dict[str, Any]:
            status, value, _ = await api("GET", "/queue")
            assert status == 200 and value["total"] == 1, value
            queued: dict[str, Any] = value["queue"][0]
            return queued

        for _ in range(200):  # the first attempt finds the port closed at once
            first = await entry()
            if first["recipients"][0]["attempts"] >= 1:
                break
            await asyncio.sleep(0.05)
        recipient = first["recipients"][0]
        assert (recipient["address"], recipient["state"], recipient["attempts"]) == ("dave@remote.test", "deferred", 1)
        assert recipient["next_attempt_at"] > first["created_at"] and recipient["last_reply"]
        queue_id = first["id"]
        status, value, _ = await api("GET", f"/queue/{queue_id}")
        assert status == 200 and value["message"]["id"] == queue_id and "Subject: stuck\r\n" in value["header"]
        assert value["message"]["sender"] == BOB and value["header"].endswith("\r\n")
        assert (await api("POST", f"/queue/{queue_id}/retry"))[:2] == (200, {"due": 1})
        for _ in range(200):
            retried = await entry()
            if retried["recipients"][0]["attempts"] >= 2:
                break
            await asyncio.sleep(0.05)
        assert retried["recipients"][0]["attempts"] == 2
        assert (await api("DELETE", f"/queue/{queue_id}"))[0] == 204
        assert (await api("GET", "/queue"))[1] == {"queue": [], "total": 0, "offset": 0, "limit": 100}
        for method, path in (("GET", ""), ("POST", "/retry"), ("DELETE", "")):
            assert (await api(method, f"/queue/{queue_id}{path}"))[:2] == \
                (404, {"error": f"no queued message {queue_id}"})  # fmt: skip
        # The message's path, found by its queue id and by the recipient's address (domain in any case).
        status, found, _ = await api("GET", f"/trace?id={queue_id}")
        assert status == 200 and found["more"] is False and len(found["messages"]) == 1, found
        (traced,) = found["messages"]
        assert traced["queue_ids"] == [queue_id] and traced["sender"] == BOB
        assert [e["kind"] for e in traced["events"]] == ["received", "queued", "deferred", "deferred", "deleted"]
        received, _, first, second, _ = traced["events"]
        assert (received["listener"], received["user"], received["helo"]) == ("submission", BOB, "laptop.example")
        assert "Subject" not in json.dumps(traced)  # nothing of the message itself
        assert (first["attempt"], second["attempt"]) == (1, 2) and first["reply"] and first["recipient"] == \
            "dave@remote.test"  # fmt: skip
        assert traced["outcomes"] == {"dave@remote.test": "deleted"}
        status, by_address, _ = await api("GET", "/trace?address=dave@REMOTE.test&limit=5")
        assert status == 200 and [m["id"] for m in by_address["messages"]] == [traced["id"]]
        assert (await api("GET", "/trace", token=api.bob))[0] == 403
        assert (await api("GET", "/trace?since=20&until=10"))[:2] == (400, {"error": "since must be before until"})

    run(body, server)


def test_domains_dns_and_dkim(server: KarteroServer) -> None:
    async def body(api: Api) -> None:
        assert (await api("GET", "/domains"))[:2] == (200, {"domains": [{"domain": "example.test", "dkim": []}]})
        status, key, _ = await api("POST", "/domains/example.test/dkim", {"algorithm": "ed25519"})
        assert status == 201 and (key["selector"], key["algorithm"]) == ("kartero-ed", "ed25519")
        assert key["record_name"] == "kartero-ed._domainkey.example.test"
        assert key["record"].startswith("v=DKIM1; k=ed25519; p=")
        assert (await api("POST", "/domains/example.test/dkim", {"algorithm": "ed25519"}))[0] == 409
        assert (await api("POST", "/domains/example.test/dkim", {"algorithm": "dsa"}))[:2] == \
            (400, {"error": "algorithm must be one of rsa, ed25519"})  # fmt: skip
        assert (await api("POST", "/domains/other.test/dkim", {}))[:2] == \
            (404, {"error": "other.test is not one of the local domains"})  # fmt: skip
        status, rsa, _ = await api("POST", "/domains/example.test/dkim")  # no body: the defaults
        assert status == 201 and (rsa["selector"], rsa["algorithm"]) == ("kartero", "rsa")
        status, value, _ = await api("GET", "/domains")
        assert [(k["selector"], k["record"]) for k in value["domains"][0]["dkim"]] == \
            [("kartero", rsa["record"]), ("kartero-ed", key["record"])]  # fmt: skip
        status, value, _ = await api("GET", "/domains/EXAMPLE.test/dns")
        assert status == 200 and value["domain"] == "example.test" and value["ok"] is False
        checks = {c["name"]: (c["status"], c["required"]) for c in value["checks"]}
        assert checks["MX"] == ("ok", True) and checks["A/AAAA"] == ("ok", True)
        assert checks["SPF"] == ("missing", True) and checks["DMARC"][0] == "missing"
        assert any(name.startswith("DKIM") and state == ("missing", True) for name, state in checks.items())
        assert (await api("GET", "/domains/other.test/dns"))[0] == 404

    run(body, server)


def test_stats_and_me(server: KarteroServer) -> None:
    async def body(api: Api) -> None:
        status, value, _ = await api("GET", "/stats")
        assert status == 200 and value["version"] and value["uptime_s"] > 0 and value["connections"]["http"] >= 1
        assert set(value["connections"]) >= {"smtp", "imap", "http"}
        assert value["queue"] == {"messages": 0, "recipients": 0, "oldest_created_at": None}
        assert value["store"]["accounts"] >= 2 and value["store"]["messages"] >= 0
        assert (await api("GET", "/me"))[1] == {"name": "token:ci", "admin": True, "via": "token", "address": None}
        assert (await api("GET", "/me", token=api.bob))[1] == \
            {"name": BOB, "admin": False, "via": "token", "address": BOB}  # fmt: skip

    run(body, server)


def test_own_password(server: KarteroServer) -> None:
    address = "frank@example.test"
    server.add_user(address, "frank-1")
    token = add_token(server, "frank", address)

    async def body(api: Api) -> None:
        change = {"current": "frank-1", "new": "frank-2"}
        assert (await api("POST", "/me/password", change))[:2] == \
            (400, {"error": "an admin token has no account and so no password: use PATCH /api/v1/accounts/{address}"})
        assert (await api("POST", "/me/password", {**change, "current": "wrong"}, token=token))[:2] == \
            (403, {"error": "the current password is wrong"})  # fmt: skip
        assert (await api("POST", "/me/password", {"new": "frank-2"}, token=token))[:2] == \
            (400, {"error": "missing field current"})  # fmt: skip
        assert (await api("POST", "/me/password", change, token=token))[:2] == (200, {"address": address})
        assert (await api("GET", "/me", token=token))[0] == 200  # the token stays valid

    run(body, server)
    with imaplib.IMAP4(server.host, server.imap_port) as imap:
        assert imap.login(address, "frank-2")[0] == "OK"


def test_credentials_and_roles(server: KarteroServer) -> None:
    async def body(api: Api) -> None:
        for method, path in (("GET", "/accounts"), ("POST", "/accounts"), ("GET", "/me"), ("GET", "/stats"),
                             ("DELETE", "/queue/x"), ("POST", "/me/password")):  # fmt: skip
            for token in (None, api.admin + "x"):
                status, value, response = await api(method, path, {"address": "a@example.test"}, token=token)
                assert status == 401 and response.headers["WWW-Authenticate"] == 'Bearer realm="kartero"'
                assert value == {"error": "a valid bearer token (kartero token create) or session is needed"}
        for method, path in (("GET", "/accounts"), ("POST", "/aliases"), ("GET", "/queue"), ("DELETE", "/queue/x"),
                             ("GET", "/domains"), ("GET", "/stats"), ("PATCH", f"/accounts/{BOB}")):  # fmt: skip
            status, value, _ = await api(method, path, {"admin": True}, token=api.bob)
            assert (status, value) == (403, {"error": "this needs an administrator"}), (method, path)
        status, doc, _ = await api("GET", "/openapi.json", token=None)  # the description needs no credentials
        assert status == 200 and doc["openapi"].startswith("3.1") and "/api/v1/accounts/{address}" in doc["paths"]

    run(body, server)


def test_a_browser_session_sends_its_csrf_token(server: KarteroServer) -> None:
    async def body() -> None:
        async with Browser(server.http_url) as browser:
            await browser.login(ADMIN, PASSWORD)
            _, page, _ = await browser.get("/admin/")
            csrf = csrf_of(page)
            status, text, _ = await browser.get("/api/v1/me")
            assert status == 200 and json.loads(text)["via"] == "session"
            alias = {"source": "csrf@example.test", "destination": BOB}
            url = server.http_url + "/api/v1/aliases"
            for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}):
                async with browser.session.post(url, json=alias, headers=headers) as response:
                    assert response.status == 403 and await response.json() == \
                        {"error": "a browser session must send its CSRF token in X-CSRF-Token"}  # fmt: skip
            async with browser.session.post(url, json=alias, headers={"X-CSRF-Token": csrf}) as response:
                assert response.status == 201
            async with browser.session.delete(url + "/csrf@example.test", headers={"X-CSRF-Token": csrf}) as response:
                assert response.status == 204
            # An admin acting as an account cannot lock it out (the review's F11; the pages refused it).
            own = server.http_url + f"/api/v1/accounts/{ADMIN.upper()}"
            async with browser.session.delete(own, headers={"X-CSRF-Token": csrf}) as response:
                assert response.status == 409 and "another admin" in (await response.json())["error"]
            async with browser.session.patch(own, json={"admin": False}, headers={"X-CSRF-Token": csrf}) as response:
                assert response.status == 409
            async with browser.session.get(own) as response:
                assert (await response.json())["admin"] is True
        async with Browser(server.http_url) as user:  # a user's own session: not the admin API
            await user.login(BOB, PASSWORD, admin=False)
            status, text, _ = await user.get("/api/v1/accounts")
            assert (status, json.loads(text)) == (403, {"error": "this needs an administrator"})

    asyncio.run(body())


def test_errors_are_json(server: KarteroServer) -> None:
    async def body(api: Api) -> None:
        async def error(method: str, path: str, *args: Any, **kwargs: Any) -> tuple[int, str]:
            status, value, _ = await api(method, path, *args, **kwargs)
            assert set(value) == {"error"} and isinstance(value["error"], str)
            return status, value["error"]

        json_type = {"Content-Type": "application/json"}
        assert await error("POST", "/accounts", data=b'{"address": ', headers=json_type) == \
            (400, "the body is not valid JSON (Expecting value at character 12)")  # fmt: skip
        assert await error("POST", "/accounts", data=b'["a@example.test"]', headers=json_type) == \
            (400, "the body must be a JSON object")  # fmt: skip
        assert await error("POST", "/accounts", {"address": "g@example.test", "password": "p", "admin": "yes"}) == \
            (400, "admin must be true or false")  # fmt: skip
        assert await error("POST", "/accounts", {"address": "g@example.test", "password": "p", "role": "x"}) == \
            (400, 'unknown field "role" (known: address, password, admin, quota)')  # fmt: skip
        assert await error("POST", "/accounts", {"address": "g@example.test", "password": "p" * 1025}) == \
            (400, "password is longer than 1024 characters")  # fmt: skip
        assert await error("POST", "/accounts") == \
            (400, "this call takes a JSON object (Content-Type: application/json)")  # fmt: skip
        assert await error("GET", "/accounts", params={"limit": "many"}) == \
            (400, "limit must be a number like 100, not \"many\"")  # fmt: skip
        assert await error("GET", "/accounts", params={"sort": "x"}) == \
            (400, "unknown query parameter 'sort' (known: search, offset, limit)")  # fmt: skip
        assert await error("GET", "/accounts/" + "a" * 400) == (400, "address is longer than 320 characters")
        assert await error("GET", "/nothing/here") == \
            (404, "no such API path; the API is described at /api/v1/openapi.json")  # fmt: skip
        assert (await error("GET", "/../v2/accounts"))[0] == 404
        status, value, response = await api("PUT", "/accounts", {})
        assert (status, value) == (405, {"error": "PUT is not allowed here (allowed: GET,POST)"})
        assert response.headers["Allow"] == "GET,POST"
        assert await error("POST", "/accounts", {"address": BOB, "password": "p"}) == \
            (409, f"account {BOB} already exists")  # fmt: skip
        big = json.dumps({"address": "g@example.test", "password": "p" * 70_000}).encode()
        assert await error("POST", "/accounts", data=big, headers=json_type) == (413, "the body is larger than 64 KiB")

        async def chunks() -> Any:  # no Content-Length: the limit counts what arrives
            for _ in range(70):
                yield b" " * 1024

        assert await error("POST", "/accounts", data=chunks(), headers=json_type) == \
            (413, "the body is larger than 64 KiB")  # fmt: skip
        assert await error("POST", "/accounts", data=b"address=a", headers={"Content-Type": "text/plain"}) == \
            (415, "the body must be JSON, sent as Content-Type: application/json")  # fmt: skip

    run(body, server)


def test_markup_in_input_comes_back_escaped(server: KarteroServer) -> None:
    script = "<script>alert(1)</script>"

    async def body(api: Api) -> None:
        async with api.session.post(api.base + "/aliases", headers={"Authorization": f"Bearer {api.admin}"},
                                    json={"source": "xss@example.test", "destination": f'"{script}"@remote.test',
                                          script: 1}) as response:  # fmt: skip
            text = await response.text()
            assert response.status == 400 and response.content_type == "application/json"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert "<" not in text and json.loads(text)["error"].startswith(f'unknown field "{script}"')
        status, value, _ = await api("POST", "/aliases", {"source": "xss@example.test",
                                                          "destination": f'"{script}"@remote.test'})  # fmt: skip
        assert status == 201 and value["destinations"] == [f'"{script}"@remote.test']
        async with api.session.get(api.base + "/aliases", headers={"Authorization": f"Bearer {api.admin}"}) as response:
            text = await response.text()
            assert "<script>" not in text and "\\u003cscript\\u003e" in text
            assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert (await api("DELETE", "/aliases/xss@example.test"))[0] == 204

    run(body, server)

"""Submission (RFC 6409) on a real `kartero serve`: 587 with STARTTLS and 465 with implicit TLS, AUTH
PLAIN, LOGIN and SCRAM-SHA-256 from real clients (smtplib, swaks), and the rules of the listener."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer, strip_trace, tls_context
from tests.integration.spares import fresh_server

PASSWORD = "alice's long password"
MESSAGE = b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nHello Bob.\r\n"


def _server(root: Path, store_url: str) -> KarteroServer:
    mx = KarteroServer(root, store_url=store_url)
    mx.add_user("alice@example.test", PASSWORD)
    mx.add_user("bob@example.test")
    mx.add_alias("alice.smith@example.test", "alice@example.test")
    return mx


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[KarteroServer]:
    mx = fresh_server(request, _server)
    yield mx
    if mx.process and mx.process.poll() is None:
        assert mx.stop() == 0, mx.log


def submission(mx: KarteroServer, *, implicit: bool = False) -> smtplib.SMTP:
    """A client on 465 (implicit TLS) or on 587 after STARTTLS, before AUTH."""
    if implicit:
        client: smtplib.SMTP = smtplib.SMTP_SSL(mx.host, mx.submissions_port, context=tls_context(), timeout=30)
        client.ehlo("laptop.example")
        return client
    client = smtplib.SMTP(mx.host, mx.submission_port, local_hostname="laptop.example", timeout=30)
    client.starttls(context=tls_context())
    client.ehlo("laptop.example")
    return client


def scram_login(client: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """SCRAM-SHA-256 (RFC 5802, RFC 7677) from the client side; smtplib has no SCRAM of its own."""
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f"n={user},r={nonce}"
    code, reply = client.docmd("AUTH", "SCRAM-SHA-256 " + base64.b64encode(f"n,,{first_bare}".encode()).decode())
    assert code == 334, reply
    server_first = base64.b64decode(reply).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    assert fields["r"].startswith(nonce)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    without_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{without_proof},p={base64.b64encode(proof).decode()}"
    code, reply = client.docmd(base64.b64encode(final.encode()).decode())
    if code != 334:
        return code, reply
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    expected = base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha256).digest()).decode()
    assert base64.b64decode(reply).decode() == f"v={expected}"  # the server proved it knows the password too
    return client.docmd("")


def test_auth_only_after_starttls_and_mail_needs_auth(server: KarteroServer) -> None:
    with smtplib.SMTP(server.host, server.submission_port, local_hostname="laptop.example", timeout=30) as c:
        c.ehlo()
        assert "starttls" in c.esmtp_features and "auth" not in c.esmtp_features
        assert c.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0alice@example.test\0{PASSWORD}".encode()).decode()) == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )
        assert c.docmd("MAIL", "FROM:<alice@example.test>") == (530, b"5.7.0 Authentication required")
        c.starttls(context=tls_context())
        c.ehlo()
        assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
        assert c.docmd("MAIL", "FROM:<alice@example.test>") == (530, b"5.7.0 Authentication required")
        assert c.docmd("RCPT", "TO:<bob@example.test>") == (503, b"5.5.1 Need MAIL before RCPT")
    # The MX listener of the same server offers no AUTH at all, and relays for nobody.
    with smtplib.SMTP(server.host, server.port, timeout=30) as c:
        c.starttls(context=tls_context())
        c.ehlo()
        assert "auth" not in c.esmtp_features
        c.mail("alice@example.test")
        assert c.rcpt("someone@elsewhere.example")[0] == 554


@pytest.mark.parametrize("implicit", [False, True], ids=["587-starttls", "465-implicit-tls"])
def test_each_mechanism_sends_mail(server: KarteroServer, implicit: bool) -> None:
    for mechanism in ("PLAIN", "LOGIN", "SCRAM-SHA-256"):
        with submission(server, implicit=implicit) as c:
            if mechanism == "SCRAM-SHA-256":
                assert scram_login(c, "alice@example.test", PASSWORD) == (235, b"2.7.0 Authentication successful")
            else:
                c.user, c.password = "alice@example.test", PASSWORD
                method = c.auth_plain if mechanism == "PLAIN" else c.auth_login
                assert c.auth(mechanism, method) == (235, b"2.7.0 Authentication successful")
            message = MESSAGE.replace(b"Subject: hi", f"Subject: {mechanism}".encode()).replace(
                b"\r\n\r\n", b"\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m@laptop.example>\r\n\r\n"
            )
            assert c.sendmail("alice@example.test", ["bob@example.test"], message) == {}
    stored = server.messages("bob@example.test")
    assert len(stored) == 3
    for mechanism, message in zip(("PLAIN", "LOGIN", "SCRAM-SHA-256"), stored, strict=True):
        assert f"Subject: {mechanism}\r\n".encode() in strip_trace(message)
        assert b"Return-Path: <alice@example.test>\r\nReceived: from laptop.example ([127.0.0.1])\r\n" in message
        assert b"with ESMTPSA (version=TLSv1.3" in message
        assert b"\t(authenticated as alice@example.test)\r\n" in message
        # Complete messages are stored exactly as submitted.
        assert strip_trace(message).startswith(b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\n")
    assert [line.split("mechanism=")[1] for line in server.wait_events("smtp.auth", 3)] == [
        "PLAIN", "LOGIN", "SCRAM-SHA-256"
    ]  # fmt: skip


def test_wrong_password_is_535_after_a_growing_delay(server: KarteroServer) -> None:
    with submission(server) as c:
        timings = []
        for attempt in range(2):
            started = time.monotonic()
            c.user, c.password = "alice@example.test", f"wrong {attempt}"
            with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
                c.auth("PLAIN", c.auth_plain)
            timings.append(time.monotonic() - started)
            assert (failure.value.smtp_code, failure.value.smtp_error) == (
                535, b"5.7.8 Authentication credentials invalid"
            )  # fmt: skip
        started = time.monotonic()
        assert scram_login(c, "alice@example.test", "wrong 3") == (535, b"5.7.8 Authentication credentials invalid")
        timings.append(time.monotonic() - started)
        # An unknown user looks exactly like a wrong password.
        c.user, c.password = "nobody@example.test", "x"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.auth("LOGIN", c.auth_login)
        # Failures from one address wait 0.5 s, 1 s, 2 s, ... before the answer.
        assert timings[0] >= 0.45 and timings[1] >= 0.95 and timings[2] >= 1.9, timings
        c.user, c.password = "alice@example.test", PASSWORD
        assert c.auth("PLAIN", c.auth_plain)[0] == 235
    assert len(server.wait_events("smtp.auth_failed", 4)) == 4
    assert PASSWORD not in server.log and "wrong 3" not in server.log


def test_sender_and_from_must_belong_to_the_user(server: KarteroServer) -> None:
    with submission(server) as c:
        c.login("alice@example.test", PASSWORD)
        assert c.docmd("MAIL", "FROM:<bob@example.test>") == (
            553, b"5.7.1 Sender address not owned by the authenticated user"
        )  # fmt: skip
        assert c.docmd("MAIL", "FROM:<>")[0] == 553
        assert c.docmd("MAIL", "FROM:<alice@elsewhere.example>")[0] == 553
        # An alias of hers and her plus-address are hers.
        for sender in ("alice.smith@example.test", "alice+lists@example.test"):
            assert c.docmd("MAIL", f"FROM:<{sender}>") == (250, b"2.1.0 Sender OK")
            c.rset()
        # A From: header naming someone else is refused after DATA.
        with pytest.raises(smtplib.SMTPDataError) as refused:
            spoofed = MESSAGE.replace(b"From: Alice <alice", b"From: <bob")
            c.sendmail("alice@example.test", ["bob@example.test"], spoofed)
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            553, b"5.7.1 From: header address not owned by the authenticated user"
        )  # fmt: skip
        # Local recipients must exist; remote ones are queued.
        c.mail("alice@example.test")
        assert c.rcpt("nosuchuser@example.test") == (550, b"5.1.1 No such user here")
        c.rset()
    assert server.messages("bob@example.test") == []


def test_missing_date_and_message_id_are_added(server: KarteroServer) -> None:
    with submission(server) as c:
        c.login("alice@example.test", PASSWORD)
        c.sendmail("alice.smith@example.test", ["bob@example.test"],
                   MESSAGE.replace(b"From: Alice <alice@", b"From: Alice <alice.smith@"))  # fmt: skip
    (stored,) = server.messages("bob@example.test")
    body = strip_trace(stored)
    added, _, rest = body.partition(b"From: Alice")
    lines = added.split(b"\r\n")
    assert (
        lines[0].startswith(b"Date: ")
        and lines[1].startswith(b"Message-ID: <")
        and lines[1].endswith(b"@mx.example.test>")
    )
    assert b"From: Alice" + rest == MESSAGE.replace(b"From: Alice <alice@", b"From: Alice <alice.smith@")


def test_issue_10_remote_recipients_are_queued_with_the_domain_canonical(server: KarteroServer) -> None:
    """The queue (and so routes, MTA-STS and the next hop's RCPT) gets the address as policy canonicalised
    it, an A-label domain in lower case, not as the client typed it (found in review of issue 10)."""
    with submission(server) as c:
        c.login("alice@example.test", PASSWORD)
        c.sendmail("alice@example.test", ["Joe@B\u00fccher.EXAMPLE", '"joe"@Remote.Example'], MESSAGE,
                   mail_options=["SMTPUTF8"])  # fmt: skip
    store = server.store()
    try:
        (entry,) = store.queue.queue_entries()
    finally:
        store.close()
    assert sorted(r.address for r in entry.recipients) == ["Joe@xn--bcher-kva.example", "joe@remote.example"]


def test_swaks_over_587_and_465(server: KarteroServer, tmp_path: Path) -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.fail("swaks is not installed (Debian package swaks; .ci/run installs it)")
    eml = tmp_path / "msg.eml"
    eml.write_bytes(MESSAGE.replace(b"\r\n\r\n", b"\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
                                    b"Message-ID: <s@laptop.example>\r\n\r\n"))  # fmt: skip
    for port, tls_option, mechanism in ((server.submission_port, "--tls", "LOGIN"),
                                        (server.submissions_port, "--tlsc", "PLAIN")):  # fmt: skip
        result = subprocess.run(
            [swaks, "--server", server.host, "--port", str(port), tls_option, "--auth", mechanism,
             "--auth-user", "alice@example.test", "--auth-password", PASSWORD, "--from", "alice@example.test",
             "--to", "bob@example.test", "--data", f"@{eml}", "--helo", "swaks.example"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "<~  235 2.7.0 Authentication successful" in result.stdout
    stored = server.messages("bob@example.test")
    assert [strip_trace(m) for m in stored] == [eml.read_bytes() + b"\r\n"] * 2


@pytest.mark.store_unused("TLS handshakes only")
def test_tls_policy_refuses_old_protocols_and_weak_ciphers(server: KarteroServer) -> None:
    def handshake(configure: object) -> str:
        ctx = tls_context()
        configure(ctx)  # type: ignore[operator]
        with socket.create_connection((server.host, server.submissions_port), timeout=10) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname="mx.example.test") as tls:
                    return f"{tls.version()} {tls.cipher()[0]}"  # type: ignore[index]
            except ssl.SSLError as exc:
                return f"refused: {exc.reason}"

    def tls11(ctx: ssl.SSLContext) -> None:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # old protocols are what is being tested
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1

    def cbc_without_forward_secrecy(ctx: ssl.SSLContext) -> None:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("AES128-SHA:AES256-SHA")

    def modern_tls12(ctx: ssl.SSLContext) -> None:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("ECDHE+AESGCM")

    # Refused by the server (it ends the handshake), not unsendable by the client ("NO_PROTOCOLS_...").
    for weak in (tls11, cbc_without_forward_secrecy):
        assert handshake(weak) in ("refused: UNEXPECTED_EOF_WHILE_READING", "refused: TLSV1_ALERT_PROTOCOL_VERSION",
                                   "refused: SSLV3_ALERT_HANDSHAKE_FAILURE")  # fmt: skip
    assert handshake(modern_tls12).startswith("TLSv1.2 ECDHE-")
    assert handshake(lambda ctx: None).startswith("TLSv1.3 ")


INVALID_FROM = b"From: is not a valid mailbox list"
# A representative subset of tests/unit/policy/test_submission_from.py, through smtplib on 587:
# (From:/Sender: fields, the reply expected after DATA; None: accepted).
FROM_VARIANTS: list[tuple[bytes, tuple[int, bytes] | None]] = [
    (b"From: ALICE@EXAMPLE.TEST", None),
    (b"From: Alice <alice+lists@example.test>", None),
    (b'From: "alice.smith@example.test" <alice.smith@example.test>', None),
    (b"From: alice@example.test (Alice)\r\nSender: Alice <Alice@example.test>", None),
    (b'From: "bob@example.test" <alice@example.test>',
     (553, b"5.7.1 From: header display name shows an address not owned by the authenticated user")),
    (b"From: alice@example.test (bob@example.test)",
     (553, b"5.7.1 From: header display name shows an address not owned by the authenticated user")),
    (b"From: =?utf-8?b?Ym9iQGV4YW1wbGUudGVzdA==?= <alice@example.test>",
     (553, b"5.7.1 From: header display name shows an address not owned by the authenticated user")),
    (b"From: alice@example.test\r\nSender: bob@example.test",
     (553, b"5.7.1 Sender: header address not owned by the authenticated user")),
    (b"Resent-From: bob@example.test\r\nFrom: alice@example.test",
     (553, b"5.7.1 Resent-From: header address not owned by the authenticated user")),
    (b"From: bob@example.test <alice@example.test>", (554, b"5.6.0 Message refused: " + INVALID_FROM)),
    (b"From: Friends: alice@example.test;", (554, b"5.6.0 Message refused: " + INVALID_FROM)),
    (b"From: <@evil.example:bob@example.test>", (554, b"5.6.0 Message refused: " + INVALID_FROM)),
    (b"From: alice@example.test\r\nFrom: bob@example.test",
     (554, b"5.6.0 Message refused: one From: field and at most one Sender: field are required (RFC 5322 3.6)")),
    (b"Fr\x00om: bob@example.test\r\nFrom: alice@example.test", (554, b"5.6.0 Message refused: NUL in message data")),
    (b"From: alice@example.test\r\nX-\x01: x", (554, b"5.6.0 Message refused: malformed header field")),
]


def test_issue_8_from_spoofing_variants_over_submission(server: KarteroServer) -> None:
    accepted = 0
    c = submission(server)
    c.login("alice@example.test", PASSWORD)
    for index, (fields, expected) in enumerate(FROM_VARIANTS):
        message = fields + f"\r\nTo: bob@example.test\r\nSubject: variant {index}\r\n\r\nHello.\r\n".encode()
        if index == 8:  # a fresh session: each refusal counts towards the error budget
            c.quit()
            c = submission(server)
            c.login("alice@example.test", PASSWORD)
        if expected is None:
            assert c.sendmail("alice@example.test", ["bob@example.test"], message) == {}, fields
            accepted += 1
            continue
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail("alice@example.test", ["bob@example.test"], message)
        assert (refused.value.smtp_code, refused.value.smtp_error) == expected, fields
    c.quit()
    # NUL in the body is refused as well.
    with submission(server) as c:
        c.login("alice@example.test", PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail("alice@example.test", ["bob@example.test"], MESSAGE + b"nul \x00 here\r\n")
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            554, b"5.6.0 Message refused: NUL in message data"
        )  # fmt: skip
    stored = server.messages("bob@example.test")
    assert len(stored) == accepted == 4
    assert [b"Subject: variant %d\r\n" % n in strip_trace(m) for n, m in enumerate(stored)] == [True] * 4

"""SMTP AUTH on the submission core (RFC 4954, RFC 6409): PLAIN, LOGIN, SCRAM-SHA-256, and the rules."""

from __future__ import annotations

import base64
import hashlib
import hmac

from tests.unit.smtp.transcript import PASSWORD, SCRAM, SUBMISSION_SETTINGS, run_transcript

EHLO_TLS = """
    S: 220 mx.example.test ESMTP Kartero
    C: EHLO client.example.org
    S: 250-mx.example.test Hello client.example.org
    S: 250-PIPELINING
    S: 250-SIZE 10000
    S: 250-8BITMIME
    S: 250-SMTPUTF8
    S: 250-ENHANCEDSTATUSCODES
    S: 250-CHUNKING
    S: 250-DSN
    S: 250 AUTH PLAIN LOGIN SCRAM-SHA-256
"""


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def test_no_auth_before_tls_and_no_mail_before_auth() -> None:
    run_transcript(
        """
        S: 220 mx.example.test ESMTP Kartero
        C: EHLO client.example.org
        S: 250-mx.example.test Hello client.example.org
        S: 250-PIPELINING
        S: 250-SIZE 10000
        S: 250-8BITMIME
        S: 250-SMTPUTF8
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250-DSN
        S: 250 STARTTLS
        C: AUTH PLAIN
        S: 538 5.7.11 Encryption required for requested authentication mechanism
        C: MAIL FROM:<alice@example.test>
        S: 530 5.7.0 Authentication required
        """,
        settings=SUBMISSION_SETTINGS,
    )


def test_plain_with_initial_response_then_mail() -> None:
    rec, conn = run_transcript(
        EHLO_TLS
        + f"""
        C: AUTH PLAIN {b64(chr(0) + "alice@example.test" + chr(0) + "wrong")}
        S: 535 5.7.8 Authentication credentials invalid
        C: AUTH PLAIN {b64(chr(0) + "alice@example.test" + chr(0) + PASSWORD)}
        S: 235 2.7.0 Authentication successful
        C: AUTH PLAIN
        S: 503 5.5.1 Already authenticated
        C: MAIL FROM:<alice@example.test> AUTH=<>
        S: 250 2.1.0 Sender OK
        """,
        settings=SUBMISSION_SETTINGS,
        is_tls=True,
    )
    assert conn.authenticated_as == "alice@example.test"
    assert [type(e).__name__ for e in rec.events] == ["Hello", "AuthRequested", "AuthRequested", "MailFrom"]


def test_plain_and_login_with_challenges_and_cancel() -> None:
    run_transcript(
        EHLO_TLS
        + f"""
        C: AUTH PLAIN
        S! b"334 \\r\\n"
        C: *
        S: 501 5.0.0 Authentication cancelled
        C: AUTH LOGIN
        S: 334 {b64("Username:")}
        C: {b64("alice@example.test")}
        S: 334 {b64("Password:")}
        C: {b64(PASSWORD)}
        S: 235 2.7.0 Authentication successful
        """,
        settings=SUBMISSION_SETTINGS,
        is_tls=True,
    )


def test_bad_mechanism_and_garbage() -> None:
    run_transcript(
        EHLO_TLS
        + """
        C: AUTH CRAM-MD5
        S: 504 5.5.4 Unrecognized authentication type
        C: AUTH PLAIN !!!not-base64!!!
        S: 501 5.5.2 Cannot decode response
        C: AUTH
        S: 501 5.5.4 Syntax error in parameters or arguments
        """,
        settings=SUBMISSION_SETTINGS,
        is_tls=True,
    )


def _scram_client_messages(password: str) -> tuple[str, str, bytes]:
    client_first_bare = "n=alice@example.test,r=clientnonce"
    server_first = f"r=clientnoncesrvnonce,s={b64(SCRAM.salt)},i={SCRAM.iterations}"
    without_proof = "c=biws,r=clientnoncesrvnonce"
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), SCRAM.salt, SCRAM.iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
    return server_first, f"{without_proof},p={b64(proof)}", b"v=" + base64.b64encode(server_signature)


def test_scram_sha_256() -> None:
    server_first, client_final, server_final = _scram_client_messages(PASSWORD)
    _, conn = run_transcript(
        EHLO_TLS
        + f"""
        C: AUTH SCRAM-SHA-256 {b64("n,,n=alice@example.test,r=clientnonce")}
        S: 334 {b64(server_first)}
        C: {b64(client_final)}
        S: 334 {b64(server_final)}
        C:
        S: 235 2.7.0 Authentication successful
        """,
        settings=SUBMISSION_SETTINGS,
        is_tls=True,
    )
    assert conn.authenticated_as == "alice@example.test"
    _, wrong_final, _ = _scram_client_messages("not the password")
    run_transcript(
        EHLO_TLS
        + f"""
        C: AUTH SCRAM-SHA-256 {b64("n,,n=alice@example.test,r=clientnonce")}
        S: 334 {b64(server_first)}
        C: {b64(wrong_final)}
        S: 535 5.7.8 Authentication credentials invalid
        C: AUTH SCRAM-SHA-256 {b64("p=tls-unique,,n=alice@example.test,r=x")}
        S: 501 5.5.2 Cannot decode response
        """,
        settings=SUBMISSION_SETTINGS,
        is_tls=True,
    )

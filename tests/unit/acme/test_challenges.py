"""The challenge answers (kartero/acme/challenges.py): http-01 tokens and the tls-alpn-01 handshake
(RFC 8737), the latter over memory BIOs through the https listener's switching context."""

from __future__ import annotations

import contextlib
import hashlib
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from kartero.acme.challenges import ACME_IDENTIFIER, Challenges, FileTokens, challenge_certificate, is_token
from kartero.tls import make_self_signed, server_context, switching_context

NAME = "mail.example.test"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEY_AUTHORIZATION = f"{TOKEN}.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


def test_issue_15_http01_tokens_are_served_until_cleared(tmp_path: Path) -> None:
    challenges = Challenges(FileTokens(tmp_path / "challenges"))
    assert challenges.http01(TOKEN) is None
    challenges.add_http01(TOKEN, KEY_AUTHORIZATION)
    assert challenges.http01(TOKEN) == KEY_AUTHORIZATION
    assert Challenges(FileTokens(tmp_path / "challenges")).http01(TOKEN) == KEY_AUTHORIZATION  # another worker sees it
    challenges.clear()
    assert challenges.http01(TOKEN) is None
    assert list((tmp_path / "challenges").iterdir()) == []


@pytest.mark.parametrize("token", ["", "../acme/account.key", "a/b", "..", "a.b", "x" * 257, "tok\x00en", "é"])
def test_issue_15_http01_looks_up_only_base64url_tokens(tmp_path: Path, token: str) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "account.key").write_text("secret")
    challenges = Challenges(FileTokens(tmp_path / "challenges"))
    assert not is_token(token)
    assert challenges.http01(token) is None
    with pytest.raises(ValueError):
        challenges.add_http01(token, "x")


def test_issue_15_tls_alpn01_certificate_carries_the_key_authorization_digest() -> None:
    cert_pem, _ = challenge_certificate(NAME, KEY_AUTHORIZATION)
    certificate = x509.load_pem_x509_certificate(cert_pem)
    extension = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    assert extension.critical
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    assert extension.value.value == b"\x04\x20" + hashlib.sha256(KEY_AUTHORIZATION.encode()).digest()
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [NAME]


def handshake(server_ctx: ssl.SSLContext, server_name: str, alpn: list[str]) -> tuple[x509.Certificate, str | None]:
    """A TLS handshake over memory BIOs; the certificate the client saw and the ALPN protocol chosen."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.set_alpn_protocols(alpn)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name or None)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if client.version() is not None and server.version() is not None:
            break
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der), client.selected_alpn_protocol()


def test_issue_15_https_context_answers_tls_alpn01_and_follows_the_current_certificate(tmp_path: Path) -> None:
    for name in ("one", "two"):
        make_self_signed(tmp_path / f"{name}.pem", tmp_path / f"{name}.key", [NAME], days=30)
    current = {"ctx": server_context(tmp_path / "one.pem", tmp_path / "one.key")}
    challenges = Challenges(FileTokens(tmp_path / "challenges"))
    front = switching_context(lambda: current["ctx"], challenges.tls_alpn01)
    one = x509.load_pem_x509_certificate((tmp_path / "one.pem").read_bytes())
    two = x509.load_pem_x509_certificate((tmp_path / "two.pem").read_bytes())

    assert handshake(front, NAME, ["acme-tls/1"]) == (one, None)  # no challenge pending: the certificate
    challenges.add_tls_alpn01(NAME, KEY_AUTHORIZATION, tmp_path / "scratch")
    seen, protocol = handshake(front, NAME.upper(), ["acme-tls/1"])
    assert protocol == "acme-tls/1"
    assert seen.extensions.get_extension_for_oid(ACME_IDENTIFIER).value.value[2:] == hashlib.sha256(
        KEY_AUTHORIZATION.encode()).digest()  # fmt: skip
    assert handshake(front, "other.example.test", ["http/1.1"]) == (one, None)  # other names: unaffected
    assert handshake(front, "", ["http/1.1"]) == (one, None)  # no SNI at all
    assert list((tmp_path / "scratch").iterdir()) == []  # the challenge key did not stay on disk

    challenges.clear()
    current["ctx"] = server_context(tmp_path / "two.pem", tmp_path / "two.key")  # a renewal
    assert handshake(front, NAME, ["acme-tls/1"]) == (two, None)

"""TLS: server contexts with a modern policy, and self-signed certificates for first start and `init`."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context: TLS 1.2 minimum, the ssl module's modern cipher choice, no renegotiation.

    Raises ssl.SSLError / OSError when the files are unreadable or do not match.
    """
    ctx = policy_context()
    ctx.load_cert_chain(cert, key)
    return ctx


def policy_context() -> ssl.SSLContext:
    """A server context with the policy of `server_context` and no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20")
    return ctx


def switching_context(current: Callable[[], ssl.SSLContext | None],
                      challenge: Callable[[str], ssl.SSLContext | None] | None = None) -> ssl.SSLContext:
    """A context for a listener that is given one context for good (asyncio's `create_server(ssl=...)`)
    but must follow certificate changes: at each ClientHello its SNI callback moves the connection to
    `current()` (the certificate in force now), or, for a server name `challenge` has a context for
    (an ACME tls-alpn-01 validation, RFC 8737 §3), to that one. The callback runs for every ClientHello,
    with or without SNI; OpenSSL takes the certificate and ALPN choice from the context set there,
    the protocol versions and ciphers from this one (the same policy)."""
    front = policy_context()

    def choose(connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        chosen = challenge(server_name) if challenge is not None and server_name else None
        if chosen is None:
            chosen = current()
        if chosen is not None:
            connection.context = chosen
        return None

    front.sni_callback = choose
    return front


def certificate_expiry(cert: Path) -> int | None:
    """When the first (the server's own) certificate of the PEM chain `cert` expires, as unix time;
    None when the file cannot be read or parsed (the dashboard then shows no date)."""
    try:
        first = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return None
    return int(first.not_valid_after_utc.timestamp())


def make_self_signed(cert: Path, key: Path, names: list[str], *, days: int = 825) -> None:
    """Write a self-signed RSA-2048 certificate for `names` (first = CN) and its key (mode 0600)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """`version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384` for Received headers and logs."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return f"version={ssl_object.version()} cipher={cipher[0] if cipher else 'unknown'}"

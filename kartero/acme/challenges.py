"""The answers to the CA's challenges while an order runs, shared between the ordering thread (which
adds and removes them) and the event loop (which serves them).

http-01 (RFC 8555 §8.3): `GET /.well-known/acme-challenge/TOKEN` on port 80 answers the key
authorization; the web side looks tokens up through `http01`. tls-alpn-01 (RFC 8737): a TLS handshake on
port 443 with SNI = the name and ALPN `acme-tls/1` gets a self-signed certificate for that name carrying
the critical acmeIdentifier extension (the SHA-256 of the key authorization); the https listener's SNI
callback asks `tls_alpn01` for such a context. Python's ssl cannot see the client's ALPN list in the SNI
callback, so while a validation for a name is pending (seconds), any client naming it in SNI gets the
challenge certificate; the challenge context offers only `acme-tls/1`.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from kartero.acme.storage import write_atomically
from kartero.tls import policy_context

ACME_TLS_ALPN = "acme-tls/1"  # RFC 8737 §6.2
ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier, RFC 8737 §6.1
MAX_PENDING = 100  # challenges at once: one per name of an order; the CA limits an order to 100 names
MAX_TOKEN = 256  # characters; Let's Encrypt and pebble send 43 (32 bytes)
MAX_KEY_AUTHORIZATION = 1024  # token, ".", a 43-character thumbprint


class TokenBook(Protocol):
    """Where http-01 answers wait for the CA: `FileTokens` (one machine, any `--workers` process reads
    them) or `shared.RowTokens` (a cluster's database). Blocking."""

    def put(self, token: str, key_authorization: str) -> None: ...
    def get(self, token: str) -> str | None: ...
    def delete(self, token: str) -> None: ...


class FileTokens:
    """http-01 answers as files named by their token."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put(self, token: str, key_authorization: str) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(self.folder / token, key_authorization.encode("ascii"), 0o644)

    def get(self, token: str) -> str | None:
        try:
            with open(self.folder / token, "rb") as f:
                return f.read(MAX_KEY_AUTHORIZATION).decode("ascii", "replace")
        except OSError:
            return None

    def delete(self, token: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / token).unlink()


class Challenges:
    """The challenges being answered now: http-01 key authorizations in a `TokenBook` (so that whichever
    process or node the CA's request reaches answers it), tls-alpn-01 contexts in this process (see
    docs/tls.md). Thread-safe."""

    def __init__(self, tokens: TokenBook) -> None:
        self.tokens = tokens
        self._lock = threading.Lock()
        self._tokens: set[str] = set()
        self._alpn: dict[str, ssl.SSLContext] = {}

    def http01(self, token: str) -> str | None:
        """The key authorization for `token`, a path segment from the network: anything but a token's
        base64url characters is refused before the book is asked (no `..`, no `/`). Blocking."""
        return self.tokens.get(token) if is_token(token) else None

    def tls_alpn01(self, server_name: str) -> ssl.SSLContext | None:
        with self._lock:
            return self._alpn.get(server_name.lower().rstrip("."))

    def add_http01(self, token: str, key_authorization: str) -> None:
        if not is_token(token):
            raise ValueError("the CA's token is not base64url")
        with self._lock:
            if len(self._tokens) >= MAX_PENDING:
                raise ValueError("too many pending challenges")
            self._tokens.add(token)
        self.tokens.put(token, key_authorization)

    def add_tls_alpn01(self, name: str, key_authorization: str, scratch: Path) -> None:
        """Make the challenge certificate for `name` (blocking: a key and a certificate, written to a
        temporary file in `scratch` because ssl loads certificates from files only)."""
        context = challenge_context(name, key_authorization, scratch)
        with self._lock:
            if len(self._alpn) >= MAX_PENDING:
                raise ValueError("too many pending challenges")
            self._alpn[name.lower()] = context

    def clear(self) -> None:
        """Take every challenge down (the order is over, whatever its outcome). Blocking."""
        with self._lock:
            tokens, self._tokens = self._tokens, set()
            self._alpn.clear()
        for token in tokens:
            self.tokens.delete(token)


def is_token(text: str) -> bool:
    """RFC 8555 §8.1: a token is base64url (RFC 4648 §5) without padding; 128 bits at least."""
    return 0 < len(text) <= MAX_TOKEN and all(c in _BASE64URL for c in text)


_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def challenge_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """The tls-alpn-01 certificate for `name` and its key, PEM (RFC 8737 §3): self-signed, SAN = name,
    and a critical acmeIdentifier extension holding the DER OCTET STRING of SHA-256(key authorization)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def challenge_context(name: str, key_authorization: str, scratch: Path) -> ssl.SSLContext:
    """A server context that serves `name`'s challenge certificate and negotiates only `acme-tls/1`."""
    cert_pem, key_pem = challenge_certificate(name, key_authorization)
    context = policy_context()
    context.set_alpn_protocols([ACME_TLS_ALPN])
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=scratch, suffix=".pem") as f:  # mode 0600 by tempfile
        f.write(key_pem + cert_pem)
        f.flush()
        context.load_cert_chain(f.name)
    return context

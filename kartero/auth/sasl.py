"""SASL mechanisms, sans-I/O: PLAIN (RFC 4616), LOGIN and SCRAM-SHA-256 (RFC 5802, RFC 7677); the
protocols frame the exchange.

Imports only the stdlib (it is a protocol core). Verifying the password is the caller's job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass


class SASLError(ValueError):
    """The client's SASL data is malformed."""


@dataclass(frozen=True, slots=True)
class PlainCredentials:
    authzid: str
    authcid: str
    password: str


def decode_base64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("invalid base64") from None


def parse_plain(message: bytes) -> PlainCredentials:
    """Split a decoded PLAIN message `[authzid] NUL authcid NUL passwd` (RFC 4616 §2)."""
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise SASLError("malformed PLAIN message")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise SASLError("PLAIN message is not UTF-8") from None
    return PlainCredentials(authzid, authcid, password)


# -- SCRAM-SHA-256 (RFC 5802, RFC 7677) ------------------------------------------------------------------

# PBKDF2 rounds for new keys. RFC 7677 §4 asks for at least 4096; at 100,000 a stolen key costs about as
# much to crack as the argon2id hash beside it (4096 made it ~23x cheaper). `[auth] scram_iterations`.
SCRAM_ITERATIONS = 100_000


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What the server keeps for SCRAM: never the password, nor anything that logs in by itself."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def encode(self) -> str:
        b64 = base64.b64encode
        return (
            f"{self.iterations}:{b64(self.salt).decode()}:{b64(self.stored_key).decode()}:"
            + b64(self.server_key).decode()
        )

    @classmethod
    def decode(cls, text: str) -> ScramCredentials:
        iterations, salt, stored, server = text.split(":")
        b64d = base64.b64decode
        return cls(b64d(salt), int(iterations), b64d(stored), b64d(server))


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def scram_credentials(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> ScramCredentials:
    """Derive SCRAM-SHA-256 keys from a password (RFC 5802 §3); `salt` comes from the caller."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return ScramCredentials(salt, iterations, hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key"))


# RFC 5802 §7: saslname = 1*(value-safe-char / "=2C" / "=3D"); a nonce is printable ASCII except ",".
_SASLNAME = re.compile(r"(?:[^=,]|=2C|=3D)+")
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")


def _decode(message: bytes) -> str:
    try:
        return message.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("SCRAM message is not UTF-8") from None


def _attributes(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq or len(key) != 1:
            raise SASLError("malformed SCRAM attribute")
        out[key] = value
    return out


class ScramServer:
    """The server side of one SCRAM-SHA-256 exchange, without channel binding (no -PLUS variant).

    client_first() names the user; the caller looks up the credentials (fake ones for an unknown user, so
    the exchange does not reveal who exists) and gets the server-first message from server_first();
    client_final() checks the proof and returns the server-final message, or raises SASLError.
    """

    def __init__(self, server_nonce: str) -> None:
        self._server_nonce = server_nonce
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._credentials: ScramCredentials | None = None

    def client_first(self, message: bytes) -> str:
        """Take client-first-message (RFC 5802 §7); returns the user name. Raises SASLError."""
        text = _decode(message)
        gs2_flag, sep, rest = text.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not sep or not sep2 or gs2_flag not in ("n", "y"):
            raise SASLError("channel binding is not supported" if gs2_flag.startswith("p") else "bad GS2 header")
        attrs = _attributes(bare)
        if "m" in attrs or "n" not in attrs or "r" not in attrs:
            raise SASLError("bad client-first message")
        # The nonce goes back in server-first and the name to the account lookup: both well-formed only.
        if not _SASLNAME.fullmatch(attrs["n"]) or not _NONCE.fullmatch(attrs["r"]):
            raise SASLError("bad client-first message")
        if authzid and (
            not authzid.startswith("a=")
            or not _SASLNAME.fullmatch(authzid[2:])
            or _unescape(authzid[2:]) != _unescape(attrs["n"])
        ):
            raise SASLError("authorization identity not allowed")
        self._client_first_bare = bare
        self._gs2_header = f"{gs2_flag},{authzid},"
        self._nonce = attrs["r"] + self._server_nonce
        return _unescape(attrs["n"])

    def server_first(self, credentials: ScramCredentials) -> bytes:
        self._credentials = credentials
        salt = base64.b64encode(credentials.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={credentials.iterations}"
        return self._server_first.encode()

    def client_final(self, message: bytes) -> bytes:
        credentials = self._credentials
        if credentials is None:
            raise SASLError("out of order")
        text = _decode(message)
        without_proof, _, proof_part = text.rpartition(",p=")
        attrs = _attributes(without_proof)
        if attrs.get("r") != self._nonce:
            raise SASLError("nonce mismatch")
        if attrs.get("c") != base64.b64encode(self._gs2_header.encode()).decode():
            raise SASLError("channel binding mismatch")
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except (binascii.Error, ValueError):
            raise SASLError("bad proof") from None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(credentials.stored_key, auth_message)
        if len(proof) != len(signature):
            raise SASLError("bad proof")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), credentials.stored_key):
            raise SASLError("wrong password")
        return b"v=" + base64.b64encode(_hmac(credentials.server_key, auth_message))


def _unescape(name: str) -> str:
    """A saslname (checked against _SASLNAME: every "=" starts an escape) as the name it stands for."""
    return name.replace("=2C", ",").replace("=3D", "=")

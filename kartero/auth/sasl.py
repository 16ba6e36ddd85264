"""SASL mechanisms, sans-I/O: PLAIN (RFC 4616) now; the protocols frame the exchange.

Imports only the stdlib (it is a protocol core). Verifying the password is the caller's job.
"""

from __future__ import annotations

import base64
import binascii
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

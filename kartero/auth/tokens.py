"""Secrets of the HTTP side: API bearer tokens and browser session ids, stored only as SHA-256.

The secrets are 256 random bits (`secrets.token_urlsafe(32)`), so a fast hash is right here (unlike
passwords, nothing can be guessed); a stolen database gives no usable token or session.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "kt_"  # makes a leaked token recognisable to secret scanners and in logs
MAX_SECRET = 256  # longer input is not one of ours: refused without hashing it
TOKEN_NAME_MAX = 64


def new_secret(prefix: str = "") -> tuple[str, str]:
    """A fresh secret and its stored hash."""
    secret = prefix + secrets.token_urlsafe(32)
    return secret, secret_hash(secret)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def valid_token_name(name: str) -> bool:
    """Names are for people and the CLI: letters, digits, `-`, `_`, `.`, at most 64."""
    return 0 < len(name) <= TOKEN_NAME_MAX and all(c.isascii() and (c.isalnum() or c in "-_.") for c in name)

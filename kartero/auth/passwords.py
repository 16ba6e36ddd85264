"""Password hashing with argon2id.

Parameters: OWASP's first recommendation (19 MiB, 2 passes, 1 lane) — about 20 ms a check here, so a
burst of logins (or of guesses) cannot tie up the CPU and memory the way RFC 9106's 64 MiB profile would.
Hashes made with other parameters keep verifying: the parameters are part of each hash.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("empty password")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when `password` matches; never raises for a wrong password or a damaged hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False

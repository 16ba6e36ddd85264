"""The MTA-STS policy this server publishes (RFC 8461) for every local domain, and its id.

Every local domain has the same MX hosts (this server's host name and `[mta_sts] mx`), so they share
one policy text. Its id is a hash of the text: `kartero dns` prints the `_mta-sts` TXT record with it,
and the record changes exactly when the policy does, which is what tells senders to fetch it again
(§3.1).
"""

from __future__ import annotations

import hashlib

from kartero.config import MtaStsConfig


def policy_text(hostname: str, settings: MtaStsConfig) -> str:
    """The policy file (§3.2): `key: value` lines ending in CRLF, the version first, one `mx:` line
    per MX host name."""
    mx = dict.fromkeys([hostname, *settings.mx])
    lines = ["version: STSv1", f"mode: {settings.mode}", *(f"mx: {name}" for name in mx),
             f"max_age: {settings.max_age_s}"]  # fmt: skip
    return "".join(f"{line}\r\n" for line in lines)


def policy_id(text: str) -> str:
    """The id of a policy text: 32 hex digits of its SHA-256 (§3.1: 1 to 32 letters and digits)."""
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]

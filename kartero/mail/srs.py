"""The Sender Rewriting Scheme (SRS), as Shevek's paper describes it and libsrs2/postsrsd implement it.

A forwarded message leaves with an envelope sender of ours, so the next hop's SPF check sees our domain,
and its bounce comes back to us, who send it on to the original sender:

    SRS0=HHHH=TT=orig-domain=orig-local@forwarder        (first forwarder)
    SRS1=HHHH=first-forwarder==HHHH=TT=orig-domain=orig-local@forwarder   (a later one)

`TT` is the day of rewriting (days since the epoch mod 1024, two base32 characters), `HHHH` the first four
base64 characters of an HMAC-SHA1 under our secret over the ASCII-lowercased fields (timestamp, domain,
local part for SRS0; first forwarder and the rest for SRS1), compared case-insensitively because
mail systems may change the case of a local part. A later forwarder does not stack a second SRS0: it
hashes the first forwarder's opaque part and points back there (SRS1), so the bounce skips the middle.

Only the hash decides whether a bounce is relayed: an address without a valid hash is refused, so SRS
addresses cannot make an open relay; one older than `max_age_days` is refused too (a replay of a stolen
address works for that long only). Pure: stdlib only, no I/O, no clock (the caller passes `now`).
Reversing is linear in the address's length and raises only `SRSError` for any input.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

# libsrs2's defaults: 21 days before a bounce is refused, 4 base64 characters of hash (24 bits).
MAX_AGE_DAYS = 21
HASH_LENGTH = 4
_SEPARATORS = frozenset("=+-")  # the separator after the SRS0/SRS1 tag (libsrs2 accepts any of these)
_SEP = "="  # between the other fields, always
_TIME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # base32, 5 bits a character
_TIME_SLOTS = 1024  # two characters: days mod 2^10
_DAY_S = 86400
# RFC 5321 §4.5.3.1.1: a local part of at most 64 octets. Our own MX refuses a longer one at RCPT, so a
# longer SRS address could never take its bounce back: such a sender is not rewritten.
MAX_LOCAL_PART = 64
# What is looked at when reversing (RFC 5321 §4.5.3.1.3: a path is at most 256 octets).
MAX_ADDRESS = 256
# atext of RFC 5322 §3.2.3 (and UTF-8 by RFC 6531): what a dot-string local part may hold.
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-")


class Failure(StrEnum):
    MALFORMED = "malformed"  # not an SRS address of ours, or broken
    FORGED = "forged"  # the hash does not match under any of our secrets
    EXPIRED = "expired"  # a valid hash, older than max_age_days (or from the future)
    UNREWRITABLE = "unrewritable"  # forward(): a sender that cannot be carried in an SRS local part


class SRSError(ValueError):
    """Why an address cannot be reversed (or a sender cannot be rewritten); `failure` says which."""

    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(f"{failure}: {detail}")
        self.failure = failure


def is_srs(local_part: str) -> bool:
    """Whether a local part claims to be an SRS address (SRS0 or SRS1 and a separator, any case)."""
    tag = local_part[:4]
    return len(local_part) > 4 and tag.isascii() and tag.upper() in ("SRS0", "SRS1") and local_part[4] in _SEPARATORS


def timestamp(now: float) -> str:
    """The two base32 characters of the day `now` falls on (days since the epoch mod 1024)."""
    day = int(now // _DAY_S) % _TIME_SLOTS
    return _TIME_CHARS[day >> 5] + _TIME_CHARS[day & 31]


@dataclass(frozen=True, slots=True)
class SRS:
    """Rewrites senders with the first of `secrets` and accepts hashes made with any of them (rotation:
    put the new secret first and keep the old one until its addresses have expired)."""

    secrets: tuple[bytes, ...]
    max_age_days: int = MAX_AGE_DAYS

    def __post_init__(self) -> None:
        if not self.secrets or not all(self.secrets):
            raise ValueError("SRS needs at least one non-empty secret")
        if not 0 < self.max_age_days < _TIME_SLOTS:
            raise ValueError(f"max_age_days must be between 1 and {_TIME_SLOTS - 1}")

    def forward(self, sender: str, forwarder_domain: str, now: float) -> str:
        """The SRS address for mail from `sender` (`local@domain`, not null) forwarded by us as
        `forwarder_domain`: SRS0 for an ordinary sender, SRS1 for one that is already SRS0 or SRS1 of
        another forwarder. Raises SRSError(UNREWRITABLE) for a sender without a domain, with a local
        part that would need quoting, or when the result's local part passes 64 octets."""
        local, at, domain = sender.rpartition("@")
        if not at or not local or not domain:
            raise SRSError(Failure.UNREWRITABLE, "not local@domain")
        if not _is_dot_string(local) or _SEP in domain:
            raise SRSError(Failure.UNREWRITABLE, "the local part needs quoting")
        rewritten = self._srs1(local, domain) if is_srs(local) else None
        if rewritten is None:
            stamp = timestamp(now)
            rewritten = _SEP.join(("SRS0", self._hash(stamp, domain, local), stamp, domain, local))
        if len(rewritten.encode("utf-8", "surrogatepass")) > MAX_LOCAL_PART:
            raise SRSError(Failure.UNREWRITABLE, "the SRS local part would pass 64 octets")
        return f"{rewritten}@{forwarder_domain}"

    def _srs1(self, local: str, domain: str) -> str | None:
        """SRS1 for a sender that is SRS0 (`domain` is its forwarder) or SRS1 (it names the first
        forwarder); None for one that only looks like SRS1 and has no first forwarder to point at."""
        if local[:4].upper() == "SRS0":
            host, opaque = domain, local[4:]  # the opaque part keeps its separator: `SRS1=H=host==H=TT=...`
        else:
            _hash, sep1, rest = local[5:].partition(_SEP)
            host, sep2, opaque = rest.partition(_SEP)
            if not sep1 or not sep2 or not host or not opaque:
                return None
        return _SEP.join(("SRS1", self._hash(host, opaque), host, opaque))

    def reverse(self, address: str, now: float) -> str:
        """The address a bounce to our SRS `address` goes to: the original sender (SRS0) or the first
        forwarder's SRS0 address (SRS1). Raises SRSError: MALFORMED (not SRS, broken), FORGED (no secret
        of ours made the hash), EXPIRED (SRS0 older than max_age_days). Never anything else."""
        if len(address) > MAX_ADDRESS:
            raise SRSError(Failure.MALFORMED, "too long")
        local, at, _forwarder = address.rpartition("@")
        if not at or not is_srs(local):
            raise SRSError(Failure.MALFORMED, "not an SRS address")
        if local[:4].upper() == "SRS0":
            given, sep1, rest = local[5:].partition(_SEP)
            stamp, sep2, rest = rest.partition(_SEP)
            host, sep3, user = rest.partition(_SEP)
            if not (sep1 and sep2 and sep3 and host and user) or len(stamp) != 2:
                raise SRSError(Failure.MALFORMED, "SRS0 needs hash, timestamp, domain and local part")
            self._check(given, stamp, host, user)
            self._check_age(stamp, now)
            return f"{user}@{host}"
        given, sep1, rest = local[5:].partition(_SEP)
        host, sep2, opaque = rest.partition(_SEP)
        if not (sep1 and sep2 and host and opaque):
            raise SRSError(Failure.MALFORMED, "SRS1 needs hash, forwarder and its SRS0 part")
        self._check(given, host, opaque)
        return f"SRS0{opaque}@{host}"

    def _hash(self, *fields: str, secret: bytes | None = None) -> str:
        mac = hmac.new(self.secrets[0] if secret is None else secret, digestmod=hashlib.sha1)
        for field in fields:
            mac.update(field.encode("utf-8", "surrogatepass").lower())  # bytes.lower(): ASCII only, as libsrs2
        return base64.b64encode(mac.digest()).decode("ascii")[:HASH_LENGTH]

    def _check(self, given: str, *fields: str) -> None:
        if len(given) != HASH_LENGTH:
            raise SRSError(Failure.MALFORMED, "the hash is not 4 characters")
        given_key = given.encode("utf-8", "surrogatepass").lower()
        for secret in self.secrets:
            if hmac.compare_digest(self._hash(*fields, secret=secret).encode("ascii").lower(), given_key):
                return
        raise SRSError(Failure.FORGED, "the hash does not match")

    def _check_age(self, stamp: str, now: float) -> None:
        then = 0
        for char in stamp:
            position = _TIME_CHARS.find(char.upper()) if char.isascii() else -1
            if position < 0:
                raise SRSError(Failure.MALFORMED, "the timestamp is not base32")
            then = then << 5 | position
        age = (int(now // _DAY_S) - then) % _TIME_SLOTS  # a stamp from the future is ~1023 days old
        if age > self.max_age_days:
            raise SRSError(Failure.EXPIRED, f"{age} days old")


def _is_dot_string(local: str) -> bool:
    """RFC 5321 Dot-string (atext, or UTF-8 per RFC 6531, in dot-separated runs): needs no quoting."""
    return all(atom and all(c in _ATEXT or c >= "\x80" for c in atom) for atom in local.split("."))

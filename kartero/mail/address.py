"""Envelope addresses: the Path grammar of RFC 5321 §4.1.2, extended for UTF-8 by RFC 6531 §3.3.

Parsing is purely syntactic. Deciding whether a domain is ours (and its IDNA form) is policy's job.
Source routes (`<@a,@b:user@c>`) are parsed and then ignored, as RFC 5321 §C asks; this is also why the
old `@local:user@remote` relay trick cannot work here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# RFC 5321 §4.5.3.1: size limits on the wire, in octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256


def _or_non_ascii(ascii_set: str) -> str:
    """The class `[ascii_set]` plus UTF8-non-ascii (RFC 6531 §3.3, as decoded characters: U+0080 to
    U+10FFFF), written as the negation of the ASCII characters outside it: the same set, but `re`
    compiles a class range that leaves Latin-1 by walking its first 65,536 code points in Python, which
    cost every process importing this module (each `kartero` command, each server start) ~0.15 s."""
    member = re.compile(f"[{ascii_set}]")
    outside = [c for c in range(128) if not member.fullmatch(chr(c))]
    runs: list[list[int]] = []
    for c in outside:
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "[^" + "".join(f"\\x{a:02x}" + (f"-\\x{b:02x}" if b > a else "") for a, b in runs) + "]"


_ATEXT = _or_non_ascii(r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-")
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QTEXT = _or_non_ascii(r"\x20\x21\x23-\x5b\x5d-\x7e")  # qtextSMTP
_QUOTED = rf'"(?:{_QTEXT}|\\[\x20-\x7e])*"'
_LET_DIG = _or_non_ascii("A-Za-z0-9")
_LDH = _or_non_ascii(r"A-Za-z0-9\-")
_SUB_DOMAIN = rf"{_LET_DIG}(?:{_LDH}*{_LET_DIG})?"
_DOMAIN = rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*"
_LITERAL = r"\[[!-Z^-~]+\]"  # dcontent: %d33-90 / %d94-126; checked further below
_MAILBOX = rf"(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})"
_ADL = rf"@{_DOMAIN}(?:,@{_DOMAIN})*"
_PATH = re.compile(rf"<(?:(?P<route>{_ADL}):)?{_MAILBOX}>")
_DOMAIN_RE = re.compile(_DOMAIN)
_DOT_STRING_RE = re.compile(_DOT_STRING)


class AddressError(ValueError):
    """The text is not a valid RFC 5321 path; the message says why (for logs, not for the peer)."""


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: `local_part` is unquoted; `domain` is as sent (a name, or an address literal)."""

    local_part: str
    domain: str

    def __post_init__(self) -> None:
        if not self.local_part or len(self.local_part.encode()) > MAX_LOCAL_PART:
            raise AddressError("local part empty or longer than 64 octets")
        if len(self.domain.encode()) > MAX_DOMAIN:
            raise AddressError("domain longer than 255 octets")

    @property
    def is_ascii(self) -> bool:
        return self.local_part.isascii() and self.domain.isascii()

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")

    def quoted_local_part(self) -> str:
        """The local part as it must be written: a dot-string where possible, else quoted."""
        if _DOT_STRING_RE.fullmatch(self.local_part):
            return self.local_part
        escaped = self.local_part.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'

    def __str__(self) -> str:
        if not self.domain:
            return self.local_part
        return f"{self.quoted_local_part()}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Path:
    """A reverse- or forward-path. `mailbox` is None for the null path `<>`.

    The RFC 5321 §4.1.1.3 special recipient `<Postmaster>` (no domain) is an `Address` whose domain is
    the empty string; policy maps it to the primary domain.
    """

    mailbox: Address | None

    @property
    def is_null(self) -> bool:
        return self.mailbox is None

    def __str__(self) -> str:
        return f"<{self.mailbox or ''}>"


NULL_PATH = Path(None)


def _unquote(local: str) -> str:
    if local.startswith('"'):
        return re.sub(r"\\(.)", r"\1", local[1:-1])
    return local


def _check_literal(literal: str) -> None:
    inner = literal[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            raise AddressError(f"bad IPv6 address literal {literal}") from None
        return
    if ":" in inner:
        raise AddressError(f"unsupported address literal {literal}")
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        raise AddressError(f"bad IPv4 address literal {literal}") from None


def parse_path(text: str, *, allow_null: bool = False, allow_postmaster: bool = False) -> tuple[Path, str]:
    """Parse a path at the start of `text`; return it and the rest of the text (the parameters).

    Raises AddressError when the path is malformed or too long.
    """
    if allow_null and text.startswith("<>"):
        return NULL_PATH, text[2:]
    if allow_postmaster and text[:12].lower() == "<postmaster>":
        return Path(Address("postmaster", "")), text[12:]
    # A path is at most 256 octets (RFC 5321 §4.5.3.1.3), so the match never looks further: whatever
    # follows it costs nothing here (a 10 MB quoted local part took the regex 4.6 s).
    m = _PATH.match(text, 0, MAX_PATH)
    if m is None:
        raise AddressError("not a valid <path>, or longer than 256 octets")
    if len(m.group(0).encode()) > MAX_PATH:
        raise AddressError("path longer than 256 octets")
    domain = m.group("domain")
    if domain.startswith("["):
        _check_literal(domain)
    return Path(Address(_unquote(m.group("local")), domain)), text[m.end() :]


def parse_mailbox(text: str) -> Address:
    """Parse a bare `local@domain` (as typed in the CLI or config, or taken from a header); raises
    AddressError."""
    if len(text) + 2 > MAX_PATH:
        raise AddressError("address longer than 256 octets")
    path, rest = parse_path(f"<{text}>")
    if rest or path.mailbox is None:
        raise AddressError(f"not a valid address: {text!r}")
    return path.mailbox


def is_valid_domain(text: str) -> bool:
    """True for a syntactically valid domain name (RFC 5321 Domain, U-labels allowed)."""
    return len(text) <= MAX_DOMAIN and bool(_DOMAIN_RE.fullmatch(text)) and len(text.encode()) <= MAX_DOMAIN

"""Address lists (RFC 5322 §3.4) parsed the way IMAP's ENVELOPE wants them.

Tolerant by design: real headers hold unquoted commas in names, stray angle brackets, missing domains
and raw 8-bit text. The parser never raises; what it cannot understand becomes a mailbox without a host.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EnvelopeAddress:
    """One IMAP address: (name, adl, mailbox, host). A group start is (None, None, name, None) and a group
    end (None, None, None, None), as RFC 9051 §7.5.2 describes."""

    name: bytes | None
    adl: bytes | None
    mailbox: bytes | None
    host: bytes | None


GROUP_END = EnvelopeAddress(None, None, None, None)


_Token = tuple[str, bytes, int, int]


_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|<[^>]*>?|[,:;@.]|[^\s()<>,:;@."]+|\S')


def _tokens(value: bytes) -> list[_Token]:
    """(kind, text, start, end) tokens: 'q' quoted string, 'a' angle address, 's' special, 'w' word."""
    if b"(" in value:
        value = _strip_comments(value)
    out: list[_Token] = []
    for m in _TOKEN.finditer(value):
        text = m.group(0)
        first = text[:1]
        if first == b'"':
            inner = text[1:-1] if len(text) > 1 and text.endswith(b'"') else text[1:]
            out.append(("q", re.sub(rb"\\(.)", rb"\1", inner), m.start(), m.end()))
        elif first == b"<":
            out.append(("a", text[1:].rstrip(b">").strip(), m.start(), m.end()))
        elif len(text) == 1 and first in b",:;@.":
            out.append(("s", text, m.start(), m.end()))
        else:
            out.append(("w", text, m.start(), m.end()))
    return out


def _strip_comments(value: bytes) -> bytes:
    """Comments (nested, RFC 5322 §3.2.2) replaced by a space, quoted strings left alone."""
    out = bytearray()
    depth = 0
    i, n = 0, len(value)
    in_quote = False
    while i < n:
        c = value[i : i + 1]
        if in_quote:
            out += c
            if c == b"\\" and i + 1 < n:
                out += value[i + 1 : i + 2]
                i += 1
            elif c == b'"':
                in_quote = False
        elif depth:
            if c == b"\\":
                i += 1
            elif c == b"(":
                depth += 1
            elif c == b")":
                depth -= 1
                if not depth:
                    out += b" "
        elif c == b"(":
            depth = 1
        else:
            out += c
            in_quote = c == b'"'
        i += 1
    return bytes(out)


def _split_addr_spec(spec: bytes) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(adl, mailbox, host) of `[@route,@route:]local@domain`."""
    adl = None
    if spec.startswith(b"@") and b":" in spec:
        route, _, spec = spec.partition(b":")
        adl = route
    local, at, host = spec.rpartition(b"@")
    if not at:
        return adl, spec or None, b""
    if local.startswith(b'"') and local.endswith(b'"') and len(local) >= 2:
        local = local[1:-1]
    return adl, local, host


def _phrase_text(tokens: list[_Token]) -> bytes:
    """A display name: token texts (quoted strings unquoted), one space where the header had any gap."""
    out = bytearray()
    for index, (_, text, start, _end) in enumerate(tokens):
        if index and start > tokens[index - 1][3]:
            out += b" "
        out += text
    return bytes(out)


@functools.lru_cache(maxsize=4096)
def parse_address_list(value: bytes) -> tuple[EnvelopeAddress, ...]:
    """Every mailbox and group of an address-list header value, in order (cached: the same From and To
    headers come again and again)."""
    result: list[EnvelopeAddress] = []
    phrase: list[_Token] = []
    angle: bytes | None = None
    in_group = False

    def flush() -> None:
        nonlocal phrase, angle
        if angle is not None:
            name = _phrase_text(phrase) or None
            adl, mailbox, host = _split_addr_spec(angle)
            if mailbox is not None or name is not None:
                result.append(EnvelopeAddress(name, adl, mailbox, host))
        elif phrase:
            # A bare addr-spec: its tokens joined without spaces ("a" "." "b" "@" "c" -> a.b@c).
            spec = b"".join(b'"' + t[1] + b'"' if t[0] == "q" else t[1] for t in phrase)
            adl, mailbox, host = _split_addr_spec(spec)
            result.append(EnvelopeAddress(None, adl, mailbox, host))
        phrase, angle = [], None

    for token in _tokens(value):
        kind, text = token[0], token[1]
        if kind == "a":
            angle = text
        elif kind == "s" and text == b",":
            flush()
        elif kind == "s" and text == b":" and angle is None and not in_group:
            name = _phrase_text(phrase)
            phrase = []
            in_group = True
            result.append(EnvelopeAddress(None, None, name, None))
        elif kind == "s" and text == b";" and in_group:
            flush()
            in_group = False
            result.append(GROUP_END)
        else:
            phrase.append(token)
    flush()
    if in_group:
        result.append(GROUP_END)
    return tuple(result)

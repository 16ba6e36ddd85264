"""Address lists (RFC 5322 §3.4) parsed the way IMAP's ENVELOPE wants them.

Tolerant by design: real headers hold unquoted commas in names, stray angle brackets, missing domains
and raw 8-bit text. The parser never raises; what it cannot understand becomes a mailbox without a host.
It is linear in the value: one tokenizing regex whose alternatives each start with their own characters
and never give back what they matched, comments skipped without recursion.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

from kartero.mime.headers import strip_comments


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
_QUOTED_PAIR = re.compile(rb"\\(.)")  # unquoted by split and join: a template sub is 4x slower per pair


def _tokens(value: bytes) -> Iterator[_Token]:
    """(kind, text, start, end) tokens: 'q' quoted string, 'a' angle address, 's' special, 'w' word."""
    if b"(" in value:
        value = strip_comments(value)
    for m in _TOKEN.finditer(value):
        text = m.group(0)
        first = text[:1]
        if first == b'"':
            inner = text[1:-1] if len(text) > 1 and text.endswith(b'"') else text[1:]
            yield ("q", b"".join(_QUOTED_PAIR.split(inner)), m.start(), m.end())
        elif first == b"<":
            yield ("a", text[1:].rstrip(b">").strip(), m.start(), m.end())
        elif len(text) == 1 and first in b",:;@.":
            yield ("s", text, m.start(), m.end())
        else:
            yield ("w", text, m.start(), m.end())


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


_CACHED_VALUE_BYTES = 1024  # the cache holds the From and To headers that recur, never a huge value


def parse_address_list(value: bytes, limit: int | None = None) -> tuple[EnvelopeAddress, ...]:
    """Every mailbox and group of an address-list header value in order, or the first `limit` of them
    (only as much of the value is read). Short values are cached: the same From and To come again and
    again."""
    if len(value) <= _CACHED_VALUE_BYTES:
        return _parse_cached(value)[:limit]
    return tuple(itertools.islice(iter_addresses(value), limit))


@functools.lru_cache(maxsize=4096)
def _parse_cached(value: bytes) -> tuple[EnvelopeAddress, ...]:
    return tuple(iter_addresses(value))


def iter_addresses(value: bytes) -> Iterator[EnvelopeAddress]:
    """The addresses of parse_address_list, one at a time, reading the value only as far as needed."""
    phrase: list[_Token] = []
    angle: bytes | None = None
    in_group = False
    for token in _tokens(value):
        kind, text = token[0], token[1]
        if kind == "a":
            angle = text
        elif kind == "s" and text == b",":
            if (address := _address(phrase, angle)) is not None:
                yield address
            phrase, angle = [], None
        elif kind == "s" and text == b":" and angle is None and not in_group:
            yield EnvelopeAddress(None, None, _phrase_text(phrase), None)
            phrase = []
            in_group = True
        elif kind == "s" and text == b";" and in_group:
            if (address := _address(phrase, angle)) is not None:
                yield address
            phrase, angle = [], None
            in_group = False
            yield GROUP_END
        else:
            phrase.append(token)
    if (address := _address(phrase, angle)) is not None:
        yield address
    if in_group:
        yield GROUP_END


def _address(phrase: list[_Token], angle: bytes | None) -> EnvelopeAddress | None:
    """The mailbox that `phrase` and an optional <angle address> make, if any."""
    if angle is not None:
        name = _phrase_text(phrase) or None
        adl, mailbox, host = _split_addr_spec(angle)
        return EnvelopeAddress(name, adl, mailbox, host) if mailbox is not None or name is not None else None
    if phrase:
        # A bare addr-spec: its tokens joined without spaces ("a" "." "b" "@" "c" -> a.b@c).
        spec = b"".join(b'"' + t[1] + b'"' if t[0] == "q" else t[1] for t in phrase)
        adl, mailbox, host = _split_addr_spec(spec)
        return EnvelopeAddress(None, adl, mailbox, host)
    return None

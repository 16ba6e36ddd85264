"""Address lists (RFC 5322 §3.4) parsed the way IMAP's ENVELOPE wants them.

Tolerant by design: real headers hold unquoted commas in names, stray angle brackets, missing domains
and raw 8-bit text. The parser never raises; what it cannot understand becomes a mailbox without a host.
It is linear in the value: one tokenizing regex whose alternatives each start with their own characters
and never give back what they matched, comments found without recursion.

Comments follow Dovecot (src/lib-mail/message-address.c): those inside an address, `<user (c)@ (c)
domain.org>`, are dropped, and the last comment of an address without angle brackets is its name:
`user@domain (Real Name)` is ("Real Name", NIL, "user", "domain").
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

from kartero.mime.headers import comment_spans, quoted_string_end


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
    """(kind, text, start, end) tokens: 'q' quoted string, 'a' angle address, 's' special, 'w' word, 'c' a
    comment's text, in the order they stand (a comment inside an angle address comes after it)."""
    spans = comment_spans(value) if b"(" in value else []
    comments: list[_Token] = []
    if spans:
        blanked = bytearray(value)  # comments as blanks of their own length: tokens keep their offsets
        for start, end, closed in spans:
            blanked[start:end] = b" " * (end - start)
            text = value[start + 1 : end - 1 if closed else end]
            comments.append(("c", b"".join(_QUOTED_PAIR.split(text)).strip(), start, end))
        value = bytes(blanked)
    pending = iter(comments)
    comment = next(pending, None)
    for m in _TOKEN.finditer(value):
        while comment is not None and comment[2] < m.start():
            yield comment
            comment = next(pending, None)
        text = m.group(0)
        first = text[:1]
        if first == b'"':
            inner = text[1:-1] if len(text) > 1 and text.endswith(b'"') else text[1:]
            yield ("q", b"".join(_QUOTED_PAIR.split(inner)), m.start(), m.end())
        elif first == b"<":
            yield ("a", _without_blanks(text[1:].rstrip(b">")), m.start(), m.end())
        elif len(text) == 1 and first in b",:;@.":
            yield ("s", text, m.start(), m.end())
        else:
            yield ("w", text, m.start(), m.end())
    if comment is not None:
        yield comment
        yield from pending


_BLANKS = re.compile(rb"[ \t\r\n]+")


def _without_blanks(spec: bytes) -> bytes:
    """An angle address without the white space (and blanked comments) between its tokens; quoted strings
    keep theirs."""
    if b'"' not in spec:
        return _BLANKS.sub(b"", spec)
    out = bytearray()
    position = 0
    while (quote := spec.find(b'"', position)) >= 0:
        out += _BLANKS.sub(b"", spec[position:quote])
        end = quoted_string_end(spec, quote)
        end = len(spec) if end < 0 else end
        out += spec[quote:end]
        position = end
    out += _BLANKS.sub(b"", spec[position:])
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
    comment: bytes | None = None  # the last comment since the address began
    in_group = False
    for token in _tokens(value):
        kind, text = token[0], token[1]
        if kind == "c":
            if phrase or angle is not None:  # a comment before an address is no part of it (Dovecot)
                comment = text
        elif kind == "a":
            angle = text
        elif kind == "s" and text == b",":
            if (address := _address(phrase, angle, comment)) is not None:
                yield address
            phrase, angle, comment = [], None, None
        elif kind == "s" and text == b":" and angle is None and not in_group:
            yield EnvelopeAddress(None, None, _phrase_text(phrase), None)
            phrase, comment = [], None
            in_group = True
        elif kind == "s" and text == b";" and in_group:
            if (address := _address(phrase, angle, comment)) is not None:
                yield address
            phrase, angle, comment = [], None, None
            in_group = False
            yield GROUP_END
        else:
            phrase.append(token)
    if (address := _address(phrase, angle, comment)) is not None:
        yield address
    if in_group:
        yield GROUP_END


def _address(phrase: list[_Token], angle: bytes | None, comment: bytes | None) -> EnvelopeAddress | None:
    """The mailbox that `phrase` and an optional <angle address> make, if any; a bare addr-spec takes its
    last comment as its name."""
    if angle is not None:
        name = _phrase_text(phrase) or None
        adl, mailbox, host = _split_addr_spec(angle)
        return EnvelopeAddress(name, adl, mailbox, host) if mailbox is not None or name is not None else None
    if phrase:
        # A bare addr-spec: its tokens joined without spaces ("a" "." "b" "@" "c" -> a.b@c).
        spec = b"".join(b'"' + t[1] + b'"' if t[0] == "q" else t[1] for t in phrase)
        adl, mailbox, host = _split_addr_spec(spec)
        return EnvelopeAddress(comment or None, adl, mailbox, host)
    return None

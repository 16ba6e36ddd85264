"""Address lists (RFC 5322 §3.4) parsed the way IMAP's ENVELOPE wants them.

Tolerant by design: real headers hold unquoted commas in names, stray angle brackets, missing domains
and raw 8-bit text. The parser never raises; what it cannot understand becomes a mailbox without a host.
"""

from __future__ import annotations

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
_SPECIALS = b'()<>[]:;@\\,."'


_Token = tuple[str, bytes, int, int]


def _tokens(value: bytes) -> list[_Token]:
    """(kind, text, start, end) tokens: 'q' quoted string, 'a' angle address, 's' special, 'w' word."""
    out: list[_Token] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i : i + 1]
        if c in (b" ", b"\t", b"\r", b"\n"):
            i += 1
        elif c == b"(":  # comment, possibly nested; dropped
            depth = 0
            while i < n:
                ch = value[i : i + 1]
                if ch == b"\\":
                    i += 2
                    continue
                if ch == b"(":
                    depth += 1
                elif ch == b")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        elif c == b'"':
            j, buf = i + 1, bytearray()
            while j < n and value[j : j + 1] != b'"':
                if value[j : j + 1] == b"\\" and j + 1 < n:
                    j += 1
                buf += value[j : j + 1]
                j += 1
            out.append(("q", bytes(buf), i, j + 1))
            i = j + 1
        elif c == b"<":
            j = value.find(b">", i + 1)
            if j < 0:
                j = n
            out.append(("a", value[i + 1 : j].strip(), i, j + 1))
            i = j + 1
        elif c in (b",", b":", b";", b"@", b"."):
            out.append(("s", c, i, i + 1))
            i += 1
        else:
            j = i
            while j < n and value[j : j + 1] not in (b" ", b"\t", b"\r", b"\n") and value[j] not in b'()<>,:;@."':
                j += 1
            if j == i:
                j = i + 1  # a lone special we do not interpret, e.g. "[" or ">"
            out.append(("w", value[i:j], i, j))
            i = j
    return out


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


def parse_address_list(value: bytes) -> list[EnvelopeAddress]:
    """Every mailbox and group of an address-list header value, in order."""
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
    return result

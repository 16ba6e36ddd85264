"""IMAP URLs of message parts for CATENATE (RFC 4469 §3, URL syntax of RFC 5092).

Only the relative form that names a message of the current user on this server is taken:
`/mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.l]]`, the mailbox percent-encoded UTF-8 and the
keywords in any case. RFC 4469 §3 describes only such URLs; anything else (a scheme, a server, URLAUTH, a
path relative to the selected mailbox) is `NO [BADURL]`. Parsing is one pass over at most MAX_URL octets.
"""

from __future__ import annotations

from dataclasses import dataclass

from kartero.imap.syntax import MAX_NUMBER, MAX_NUMBER64, Section, decode_mailbox, parse_number, parse_section
from kartero.imap.tokens import ParseError, upper_ascii

_HEX = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class MessageUrl:
    mailbox: str
    uidvalidity: int | None
    uid: int
    section: Section | None = None
    partial: tuple[int, int | None] | None = None  # origin, and length (None: to the end)


def parse_message_url(url: bytes) -> MessageUrl | None:
    """The message part a relative IMAP URL names, or None when it is not such a URL."""
    if not url.startswith(b"/") or url.startswith(b"//") or any(b <= 0x20 or b >= 0x7F for b in url):
        return None
    # ";" cannot appear in an enc-mailbox or a parameter value (RFC 5092 bchar), so it splits the URL into
    # the mailbox and `KEY=value` parameters. UIDVALIDITY follows the mailbox directly, UID, SECTION and
    # PARTIAL each follow a "/", in that order.
    pieces = url[1:].split(b";")
    names = [upper_ascii(piece.partition(b"=")[0].decode("ascii")) for piece in pieces[1:]]
    if not all(b"=" in piece for piece in pieces[1:]) or not _in_order(names):
        return None
    values: dict[str, bytes] = {}
    mailbox_raw = b""
    for k, piece in enumerate(pieces):
        if k + 1 < len(pieces):
            slashed = names[k] != "UIDVALIDITY"
            if piece.endswith(b"/") != slashed:
                return None
            piece = piece[:-1] if slashed else piece
        if k == 0:
            mailbox_raw = piece
        else:
            values[names[k - 1]] = piece.partition(b"=")[2]
    if not all(values.values()):
        return None
    try:
        mailbox = decode_mailbox(_unescape(mailbox_raw), utf8=True)
        uidvalidity = _number(values["UIDVALIDITY"]) if "UIDVALIDITY" in values else None
        uid = _number(values["UID"])
        section = None
        if "SECTION" in values:
            section = parse_section(upper_ascii(_unescape(values["SECTION"]).decode("utf-8")))
        partial = _partial(values["PARTIAL"]) if "PARTIAL" in values else None
    except (ParseError, UnicodeDecodeError, ValueError):
        return None
    if not mailbox or not uid or uidvalidity == 0:
        return None
    return MessageUrl(mailbox, uidvalidity, uid, section, partial)


def _in_order(names: list[str]) -> bool:
    """[UIDVALIDITY] UID [SECTION] [PARTIAL], nothing else (no URLAUTH, EXPIRE, ...)."""
    expected = ["UIDVALIDITY", "UID", "SECTION", "PARTIAL"]
    if names[:1] != ["UIDVALIDITY"]:
        expected.remove("UIDVALIDITY")
    if "UID" not in names:
        return False
    position = 0
    for name in names:
        while position < len(expected) and expected[position] != name:
            position += 1
        if position == len(expected):
            return False
        position += 1
    return True


def _unescape(text: bytes) -> bytes:
    """Percent-decoding (RFC 3986 §2.1); ValueError for a `%` not followed by two hex digits."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == 0x25:  # "%"
            if i + 2 >= len(text) or text[i + 1] not in _HEX or text[i + 2] not in _HEX:
                raise ValueError("bad percent-encoding")
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(text[i])
            i += 1
    return bytes(out)


def _number(text: bytes, maximum: int = MAX_NUMBER) -> int:
    return parse_number(text.decode("ascii"), "URL number", maximum)


def _partial(text: bytes) -> tuple[int, int | None]:
    """RFC 5092 partial-range = number ["." nz-number]."""
    origin, dot, length = text.partition(b".")
    if not dot:
        return (_number(origin, MAX_NUMBER64), None)
    count = _number(length, MAX_NUMBER64)
    if not count:
        raise ValueError("partial length must not be 0")
    return (_number(origin, MAX_NUMBER64), count)


def badurl_text(url: bytes) -> str:
    """The URL as the BADURL response code can carry it (RFC 4469 §5: text without "]"); octets it cannot
    carry are percent-encoded, so a URL never breaks or forges a response."""
    return "".join(chr(b) if 0x20 < b < 0x7F and b != 0x5D else f"%{b:02X}" for b in url)

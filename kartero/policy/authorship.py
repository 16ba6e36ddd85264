"""Who a submitted message says it is from, read strictly: its header fields and the mailbox lists of
From:, Sender:, Resent-From: and Resent-Sender: (RFC 5322 §3.4, §3.6.2, §3.6.6; UTF-8 per RFC 6532).

`mime.addresses` is tolerant on purpose (it must index any mail that arrives). Here tolerance is the
attack: whatever a mail client might read differently from us is refused instead of guessed at. So:
- header lines are `name: value` with a name of printable US-ASCII, or continuation lines; anything
  else (a line without a colon, NUL or control bytes in a name, a bare CR or LF) is an error;
- a mailbox list is `mailbox *("," mailbox)` with CFWS; no groups, no empty elements, no source routes,
  no obsolete local parts or domains (`a . b@c`). The one obsolete form kept is a "." in a display
  name (`John Q. Public <jqp@example.org>`), which clients send unquoted;
- display names and comments are returned decoded (quoted pairs undone, RFC 2047 encoded words decoded)
  so the policy can refuse one that shows an address (`find_addresses`).

Everything is one left-to-right pass over a field of at most MAX_FIELD_BYTES: linear, no regex, no
recursion (comment nesting is a counter, limited to MAX_COMMENT_DEPTH).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import unicodedata
from dataclasses import dataclass

# A longer From:/Sender: field is abuse, not mail (RFC 5322 §2.1.1 lines are at most 998 octets).
MAX_FIELD_BYTES = 8192
# Addresses in one field; every one must be the user's, so a real message has one or two.
MAX_MAILBOXES = 32
MAX_COMMENT_DEPTH = 16
# Header lines of one message (fields and continuations): real mail has well under a hundred.
MAX_HEADER_LINES = 10_000
_FTEXT = bytes(range(33, 127))
# Longer than any address (RFC 5321 §4.5.3.1: 64 + 1 + 255).
MAX_ADDRESS_CHARS = 320

_ATEXT_ASCII = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
# Where an address shown in a display name or comment begins and ends.
_ADDRESS_BREAKS = frozenset("<>()[],;:")
_ADDRESS_TRIM = "\"'`."
# Charsets decoded as such in encoded words; others (and bytes-to-bytes codecs such as rot13, hex or
# zlib, and punycode, which is quadratic) are read as latin-1.
_TEXT_CODEC_PREFIXES = ("iso8859", "cp", "utf", "koi8", "mac", "euc", "iso2022", "shift_jis", "gb", "big5")
_TEXT_CODECS = frozenset({"ascii", "latin-1", "hz", "johab", "tis-620"})


class HeaderError(ValueError):
    """The header block is not a sequence of well-formed fields; the message says why (for the log)."""


class MailboxListError(ValueError):
    """The field is not a strict mailbox list; the message says why (for the log)."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One address of a list: `display_name` as a client shows it (quotes removed, encoded words
    decoded), `local_part` unquoted, `domain` a name or a `[literal]`."""

    display_name: str
    local_part: str
    domain: str


@dataclass(frozen=True, slots=True)
class MailboxList:
    mailboxes: tuple[Mailbox, ...]
    comments: tuple[str, ...]  # decoded; some clients show `addr (Name)` comments as the name


def split_fields(block: bytes) -> list[tuple[str, bytes]]:
    """The fields of a header block (CRLF lines, ending with its empty line if there is one): names
    lower-cased, values unfolded (RFC 5322 §2.2.3). Raises HeaderError on any other line, and beyond
    MAX_HEADER_LINES (this runs on the event loop for every submitted message)."""
    crlf = block.count(b"\r\n")
    if block.count(b"\r") != crlf or block.count(b"\n") != crlf:
        raise HeaderError("bare CR or LF in the header")
    block = block.rstrip(b"\r\n")
    if not block:
        return []
    lines = block.split(b"\r\n", MAX_HEADER_LINES)
    if len(lines) > MAX_HEADER_LINES:
        raise HeaderError(f"more than {MAX_HEADER_LINES} header lines")
    fields: list[tuple[str, list[bytes]]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise HeaderError("continuation line before the first field")
            fields[-1][1].append(line)
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")  # obs-optional (RFC 5322 §4.5.6): white space before the colon
        if not colon or not name:
            raise HeaderError("header line without a field name and colon")
        if name.translate(None, _FTEXT):  # RFC 5322 §2.2: printable US-ASCII except ":"
            raise HeaderError("field name holds a byte that is not printable US-ASCII")
        fields.append((name.decode("ascii").lower(), [value]))
    return [(name, b"".join(parts)) for name, parts in fields]


def parse_mailbox_list(value: bytes) -> MailboxList:
    """Parse a field value (unfolded) as a strict mailbox list; raises MailboxListError."""
    if len(value) > MAX_FIELD_BYTES:
        raise MailboxListError(f"field longer than {MAX_FIELD_BYTES} octets")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise MailboxListError("field is not UTF-8") from None
    parser = _Parser(text)
    mailboxes: list[Mailbox] = []
    while True:
        parser.cfws()
        if parser.at_end():
            raise MailboxListError("empty element in the mailbox list" if mailboxes else "empty mailbox list")
        mailboxes.append(parser.mailbox())
        if len(mailboxes) > MAX_MAILBOXES:
            raise MailboxListError(f"more than {MAX_MAILBOXES} mailboxes")
        parser.cfws()
        if parser.at_end():
            return MailboxList(tuple(mailboxes), tuple(parser.comments))
        if not parser.take(","):
            raise MailboxListError(parser.unexpected())


def _is_atext(c: str) -> bool:
    """RFC 5322 atext, plus UTF8-non-ascii (RFC 6532 §3.2) other than controls and white space."""
    if c.isascii():
        return c in _ATEXT_ASCII
    return not c.isspace() and unicodedata.category(c) != "Cc"


def _is_text(c: str) -> bool:
    """What a quoted string or comment may hold besides its delimiters: VCHAR, WSP and UTF-8."""
    if c.isascii():
        return "\x20" <= c <= "\x7e" or c == "\t"
    return unicodedata.category(c) != "Cc"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.comments: list[str] = []

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self, c: str) -> bool:
        if self.peek() == c:
            self.pos += 1
            return True
        return False

    def unexpected(self) -> str:
        c = self.peek()
        if c in (":", ";"):
            return "group syntax is not allowed here"
        return f"unexpected {c!r} at offset {self.pos}" if c else "unexpected end of field"

    def cfws(self) -> bool:
        """Skip white space and comments (keeping the comments' text); True if anything was skipped."""
        start = self.pos
        while True:
            c = self.peek()
            if c in (" ", "\t"):
                self.pos += 1
            elif c == "(":
                self._comment()
            else:
                return self.pos > start

    def _comment(self) -> None:
        text, n = self.text, len(self.text)
        depth = 0
        out: list[str] = []
        while True:
            if self.pos >= n:
                raise MailboxListError("unterminated comment")
            c = text[self.pos]
            self.pos += 1
            if c == "(":
                depth += 1
                if depth > MAX_COMMENT_DEPTH:
                    raise MailboxListError(f"comments nested deeper than {MAX_COMMENT_DEPTH}")
                out.append(" ")
            elif c == ")":
                depth -= 1
                out.append(" ")
                if not depth:
                    self.comments.append("".join(out))
                    return
            elif c == "\\":
                out.append(self._quoted_pair())
            elif _is_text(c):
                out.append(c)
            else:
                raise MailboxListError("control character in a comment")

    def _quoted_pair(self) -> str:
        c = self.peek()
        if not c or not _is_text(c):
            raise MailboxListError("bad quoted pair")
        self.pos += 1
        return c

    def _quoted_string(self) -> str:
        self.pos += 1  # the opening quote
        text, n = self.text, len(self.text)
        out: list[str] = []
        while True:
            if self.pos >= n:
                raise MailboxListError("unterminated quoted string")
            c = text[self.pos]
            self.pos += 1
            if c == '"':
                return "".join(out)
            if c == "\\":
                out.append(self._quoted_pair())
            elif _is_text(c):
                out.append(c)
            else:
                raise MailboxListError("control character in a quoted string")

    def _atom(self) -> str:
        start = self.pos
        text, n = self.text, len(self.text)
        while self.pos < n and _is_atext(text[self.pos]):
            self.pos += 1
        return text[start : self.pos]

    def _words(self) -> list[tuple[str, str, bool]]:
        """Atoms, quoted strings and dots up to the next other character: (kind, text, CFWS before)."""
        words: list[tuple[str, str, bool]] = []
        while True:
            spaced = self.cfws()
            c = self.peek()
            if c == '"':
                words.append(("quoted", self._quoted_string(), spaced))
            elif c == ".":
                self.pos += 1
                words.append(("dot", ".", spaced))
            elif c and _is_atext(c):
                words.append(("atom", self._atom(), spaced))
            else:
                return words

    def mailbox(self) -> Mailbox:
        words = self._words()
        if self.take("<"):
            if words and words[0][0] == "dot":
                raise MailboxListError("display name starts with '.'")
            display = "".join((" " if index and spaced else "") + text
                              for index, (_, text, spaced) in enumerate(words))  # fmt: skip
            self.cfws()
            if self.peek() == "@":
                raise MailboxListError("source routes are not allowed")
            local, domain = self._addr_spec(self._words())
            if not self.take(">"):
                raise MailboxListError(self.unexpected())
            return Mailbox(decode_encoded_words(display), local, domain)
        return Mailbox("", *self._addr_spec(words))

    def _addr_spec(self, words: list[tuple[str, str, bool]]) -> tuple[str, str]:
        if not self.take("@"):
            raise MailboxListError(self.unexpected())
        if len(words) == 1 and words[0][0] == "quoted":
            local = words[0][1]
        else:
            # dot-atom-text: atom *("." atom), nothing between (CFWS only around the whole)
            kinds = [kind for kind, _, _ in words]
            if not words or kinds != ["atom", "dot"] * (len(words) // 2) + ["atom"]:
                raise MailboxListError("not a valid local part")
            if any(spaced for _, _, spaced in words[1:]):
                raise MailboxListError("white space or comment inside a local part (obsolete syntax)")
            local = "".join(text for _, text, _ in words)
        if not local:
            raise MailboxListError("empty local part")
        self.cfws()
        if self.take("["):
            start = self.pos
            while self.peek() and self.peek() not in "[]\\" and _is_text(self.peek()):
                self.pos += 1
            if not self.take("]"):
                raise MailboxListError("bad domain literal")
            domain = "[" + self.text[start : self.pos - 1].strip(" \t") + "]"
        else:
            labels = [self._atom()]
            while self.take("."):
                labels.append(self._atom())
            if not all(labels):
                raise MailboxListError("not a valid domain")
            domain = ".".join(labels)
        self.cfws()
        return local, domain


def decode_encoded_words(text: str) -> str:
    """Text with its RFC 2047 encoded words decoded as a mail client shows them (white space between
    two adjacent encoded words dropped, §6.2); malformed words are left as they are."""
    out: list[str] = []
    pos = 0
    previous_end = -1
    start = text.find("=?")
    while start >= 0:
        word = _encoded_word(text, start)
        if word is None:
            start = text.find("=?", start + 2)
            continue
        decoded, end = word
        between = text[pos:start]
        if not (pos == previous_end and not between.strip(" \t")):
            out.append(between)
        out.append(decoded)
        pos = previous_end = end
        start = text.find("=?", end)
    out.append(text[pos:])
    return "".join(out)


def _encoded_word(text: str, start: int) -> tuple[str, int] | None:
    """(decoded text, end) of `=?charset?B|Q?payload?=` at `start`, or None. Each attempt reads no
    further than the third "?" after `start`, so scanning a field is linear."""
    charset_end = text.find("?", start + 2)
    if charset_end < 0 or text[charset_end + 2 : charset_end + 3] != "?":
        return None
    charset, encoding = text[start + 2 : charset_end], text[charset_end + 1].upper()
    payload_end = text.find("?", charset_end + 3)
    if not charset or encoding not in ("B", "Q") or payload_end < 0 or text[payload_end + 1 : payload_end + 2] != "=":
        return None
    payload = text[charset_end + 3 : payload_end]
    if any(c.isspace() for c in charset + payload):
        return None
    try:
        raw = payload.encode("utf-8")
        data = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True) if encoding == "B" else (
            binascii.a2b_qp(raw, header=True))  # fmt: skip
    except (binascii.Error, ValueError):
        return None
    return _decode_charset(data, charset), payload_end + 2


def _decode_charset(data: bytes, charset: str) -> str:
    name = charset.split("*", 1)[0]  # RFC 2231 §5: charset*language
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        codec = "latin-1"
    if codec not in _TEXT_CODECS and not codec.startswith(_TEXT_CODEC_PREFIXES):
        codec = "latin-1"
    try:
        return data.decode(codec, "replace")
    except (LookupError, UnicodeError, ValueError):
        return data.decode("latin-1")


def find_addresses(text: str) -> list[str]:
    """Every piece of a display name or comment that a client would show as an address: a run between
    white space and brackets with an "@" that has something on both sides. Encoded words are decoded
    and the text NFKC-folded first, so `=?utf-8?b?...?=` and a fullwidth at sign (U+FF20) count too."""
    folded = unicodedata.normalize("NFKC", decode_encoded_words(text))
    found: list[str] = []
    run: list[str] = []
    for c in folded + " ":
        if c.isspace() or c in _ADDRESS_BREAKS:
            if "@" in run:
                candidate = "".join(run).strip(_ADDRESS_TRIM)
                local, at, domain = candidate.rpartition("@")
                if at and local.strip("@") and domain:
                    found.append(candidate)
            run = []
        else:
            run.append(c)
    return found

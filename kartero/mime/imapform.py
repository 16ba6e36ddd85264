"""ENVELOPE, BODY and BODYSTRUCTURE in IMAP syntax (RFC 9051 §7.5.2, §9), computed once at delivery.

They live here rather than in kartero/imap/ because the store computes them when a message arrives and
keeps the bytes: a FETCH then only copies them (the store must not import a protocol package).
"""

from __future__ import annotations

import re

from kartero.mime.addresses import EnvelopeAddress, parse_address_list
from kartero.mime.headers import HeaderBlock, MessageData, count_newlines
from kartero.mime.structure import Part

NIL = b"NIL"
# An ENVELOPE lists at most this many addresses per field, and the envelopes of the messages embedded in
# one message this many together: each address is a Python step (an RFC 5322 list can be megabytes).
MAX_LIST_ADDRESSES = 1000
MAX_MESSAGE_ADDRESSES = 10_000
_QUOTABLE = re.compile(rb"[\t\x20-\x7e]{0,1023}")


def imap_string(value: bytes) -> bytes:
    """A quoted string when the bytes allow it, else a literal (8-bit text, quotes, long values)."""
    if b"\0" in value:
        value = value.replace(b"\0", b"")
    if _QUOTABLE.fullmatch(value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | None) -> bytes:
    return NIL if value is None else imap_string(value)


def _address(a: EnvelopeAddress) -> bytes:
    return b"(" + b" ".join(nstring(v) for v in (a.name, a.adl, a.mailbox, a.host)) + b")"


class _AddressBudget:
    """How many more addresses envelopes may list."""

    def __init__(self, addresses: int) -> None:
        self.left = addresses

    def address_list(self, value: bytes | None) -> bytes:
        if value is None or self.left <= 0:
            return NIL
        addresses = parse_address_list(value, min(MAX_LIST_ADDRESSES, self.left))
        self.left -= len(addresses)
        if not addresses:
            return NIL
        return b"(" + b"".join(_address(a) for a in addresses) + b")"


def envelope(header: HeaderBlock) -> bytes:
    """The ENVELOPE of a message header; Sender and Reply-To default to From (RFC 9051 §7.5.2)."""
    return _envelope(header, _AddressBudget(6 * MAX_LIST_ADDRESSES))


def _envelope(header: HeaderBlock, budget: _AddressBudget) -> bytes:
    from_ = budget.address_list(header.get("from"))
    sender = budget.address_list(header.get("sender"))
    reply_to = budget.address_list(header.get("reply-to"))
    fields = [
        nstring(header.get("date")),
        nstring(header.get("subject")),
        from_,
        from_ if sender == NIL else sender,
        from_ if reply_to == NIL else reply_to,
        budget.address_list(header.get("to")),
        budget.address_list(header.get("cc")),
        budget.address_list(header.get("bcc")),
        nstring(header.get("in-reply-to")),
        nstring(header.get("message-id")),
    ]
    return b"(" + b" ".join(fields) + b")"


def _params(params: tuple[tuple[bytes, bytes], ...]) -> bytes:
    if not params:
        return NIL
    joined = join_continuations(params)
    return b"(" + b" ".join(imap_string(k) + b" " + imap_string(v) for k, v in joined) + b")"


def _continuation(name: bytes) -> tuple[bytes, int, bool] | None:
    """`title*2` -> (b"title", 2, False), `title*0*` -> (b"title", 0, True); None for any other name."""
    base, star, rest = name.partition(b"*")
    extended = rest.endswith(b"*")
    number = rest[:-1] if extended else rest
    if not star or not base or not number.isdigit() or len(number) > 3 or (number != b"0" and number[:1] == b"0"):
        return None
    return base, int(number), extended


def join_continuations(params: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
    """RFC 2231 §3: `name*0`, `name*1`, ... are pieces of one value; they are sent joined, as Dovecot does,
    under `name`, or under `name*` when a piece is extended (`name*0*=utf-8''caf%C3%A9`; plain pieces after
    it are percent-encoded so the joined value stays one RFC 2231 §4 value). Pieces that do not run 0..n
    without a gap stay as they are. Linear: one pass to group, one to emit (at most MAX_PARAMS pairs)."""
    pieces: dict[bytes, dict[int, tuple[bool, bytes]]] = {}
    for name, value in params:
        if (parsed := _continuation(name)) is not None:
            base, number, extended = parsed
            pieces.setdefault(base.lower(), {}).setdefault(number, (extended, value))
    out: list[tuple[bytes, bytes]] = []
    done: set[bytes] = set()
    for name, value in params:
        parsed = _continuation(name)
        if parsed is None:
            out.append((name, value))
            continue
        key = parsed[0].lower()
        group = pieces[key]
        if sorted(group) != list(range(len(group))):
            out.append((name, value))  # a gap or a repeat: not one value
        elif key not in done:
            done.add(key)
            extended = group[0][0]
            text = b"".join(v if e or not extended else _percent(v) for e, v in (group[i] for i in range(len(group))))
            out.append((parsed[0] + (b"*" if extended else b""), text))
    return out


def _percent(value: bytes) -> bytes:
    """A plain piece inside an extended value: RFC 2231 §7 attribute-char kept, everything else %XX."""
    return b"".join(bytes([c]) if 0x21 <= c < 0x7F and c not in b"*'%()<>@,;:\\\"/[]?=" else b"%%%02X" % c
                    for c in value)  # fmt: skip


def _extension(part: Part) -> bytes:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc."""
    disposition = part.disposition
    dsp = NIL if disposition is None else b"(" + imap_string(disposition[0]) + b" " + _params(disposition[1]) + b")"
    languages = part.languages
    # always the list form, one language too, as Dovecot sends it
    lang = b"(" + b" ".join(imap_string(t) for t in languages) + b")" if languages else NIL
    return dsp + b" " + lang + b" " + nstring(part.header.get("content-location"))


class _Walk:
    """The state of one walk of a message's tree: LF counts of its ranges, and the address budget of
    its embedded messages' envelopes.

    A message/rfc822 part's line count covers its embedded message, whose own text parts are counted
    too: the embedded tree is summed from its pieces, so each byte is read once however deep such parts
    nest."""

    def __init__(self, data: MessageData) -> None:
        self.data = data
        self.addresses = _AddressBudget(MAX_MESSAGE_ADDRESSES)
        self.ranges: dict[tuple[int, int], int] = {}
        self.parts: dict[int, int] = {}  # id(part) -> LFs in its header and body

    def lines(self, part: Part) -> int:
        """The body-fld-lines of `part`: the line ends (LFs) in its body, as Dovecot counts them. A last line
        without one is not counted: in a multipart, the CRLF before the boundary is the boundary's (RFC 2046
        §5.1.1), so a one-line part has no line end of its own."""
        if part.end <= part.body_start:
            return 0
        return self._in_body(part)

    def _in_range(self, start: int, end: int) -> int:
        key = (start, end)
        if key not in self.ranges:
            self.ranges[key] = count_newlines(self.data, start, end)
        return self.ranges[key]

    def _in_part(self, part: Part) -> int:
        if id(part) not in self.parts:
            self.parts[id(part)] = self._in_range(part.header_start, part.body_start) + self._in_body(part)
        return self.parts[id(part)]

    def _in_body(self, part: Part) -> int:
        if part.message is not None:  # the embedded message spans exactly this body
            return self._in_part(part.message)
        if not part.children:
            return self._in_range(part.body_start, part.end)
        count, pos = 0, part.body_start
        for child in part.children:  # in order and disjoint: delimiters and preamble lie between them
            count += self._in_range(pos, child.header_start) + self._in_part(child)
            pos = child.end
        return count + self._in_range(pos, part.end)


def body_structure(part: Part, data: MessageData, *, extended: bool) -> bytes:
    """BODYSTRUCTURE (extended) or BODY (not extended) of `part`."""
    body, structure = body_forms(part, data)
    return structure if extended else body


def body_forms(part: Part, data: MessageData) -> tuple[bytes, bytes]:
    """(BODY, BODYSTRUCTURE) of `part`, built in one walk of the tree."""
    return _forms(part, _Walk(data))


def _forms(part: Part, walk: _Walk) -> tuple[bytes, bytes]:
    if part.children:
        forms = [_forms(child, walk) for child in part.children]
        subtype = imap_string(part.content_type.subtype)
        body = b"(" + b"".join(f[0] for f in forms) + b" " + subtype + b")"
        structure = b"".join(f[1] for f in forms) + b" " + subtype
        structure += b" " + _params(part.content_type.params) + b" " + _extension(part)
        return body, b"(" + structure + b")"
    ct = part.content_type
    header = part.header
    params = ct.params
    if ct.type.lower() == b"text" and ct.param(b"charset") is None:
        params = (*params, (b"charset", b"us-ascii"))  # RFC 2046 §4.1.2: the default charset of text/*
    fields = [
        imap_string(ct.type),
        imap_string(ct.subtype),
        _params(params),
        nstring(header.get("content-id")),
        nstring(header.get("content-description")),
        imap_string(part.encoding),
        b"%d" % (part.end - part.body_start),
    ]
    body_fields = fields
    if part.message is not None:
        inner_body, inner_structure = _forms(part.message, walk)
        lines = b"%d" % walk.lines(part)
        message_envelope = _envelope(part.message.header, walk.addresses)
        body_fields = [*fields, message_envelope, inner_body, lines]
        fields = [*fields, message_envelope, inner_structure, lines]
    elif ct.type.lower() == b"text":
        lines = b"%d" % walk.lines(part)
        body_fields = fields = [*fields, lines]
    extension = [nstring(header.get("content-md5")), _extension(part)]
    return b"(" + b" ".join(body_fields) + b")", b"(" + b" ".join(fields + extension) + b")"

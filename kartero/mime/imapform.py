"""ENVELOPE, BODY and BODYSTRUCTURE in IMAP syntax (RFC 9051 §7.5.2, §9), computed once at delivery.

They live here rather than in kartero/imap/ because the store computes them when a message arrives and
keeps the bytes: a FETCH then only copies them (the store must not import a protocol package).
"""

from __future__ import annotations

import re

from kartero.mime.addresses import EnvelopeAddress, parse_address_list
from kartero.mime.headers import HeaderBlock
from kartero.mime.structure import Part, parse_disposition

NIL = b"NIL"
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


def _address_list(value: bytes | None) -> bytes:
    if value is None:
        return NIL
    addresses = parse_address_list(value)
    if not addresses:
        return NIL
    return b"(" + b"".join(_address(a) for a in addresses) + b")"


def envelope(header: HeaderBlock) -> bytes:
    """The ENVELOPE of a message header; Sender and Reply-To default to From (RFC 9051 §7.5.2)."""
    from_ = _address_list(header.get("from"))
    sender = _address_list(header.get("sender"))
    reply_to = _address_list(header.get("reply-to"))
    fields = [
        nstring(header.get("date")),
        nstring(header.get("subject")),
        from_,
        from_ if sender == NIL else sender,
        from_ if reply_to == NIL else reply_to,
        _address_list(header.get("to")),
        _address_list(header.get("cc")),
        _address_list(header.get("bcc")),
        nstring(header.get("in-reply-to")),
        nstring(header.get("message-id")),
    ]
    return b"(" + b" ".join(fields) + b")"


def _params(params: tuple[tuple[bytes, bytes], ...]) -> bytes:
    if not params:
        return NIL
    return b"(" + b" ".join(imap_string(k) + b" " + imap_string(v) for k, v in params) + b")"


def _extension(part: Part) -> bytes:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc."""
    header = part.header
    disposition = parse_disposition(header.get("content-disposition"))
    dsp = NIL if disposition is None else b"(" + imap_string(disposition[0]) + b" " + _params(disposition[1]) + b")"
    lang_value = header.get("content-language")
    languages = [t.strip() for t in lang_value.split(b",") if t.strip()] if lang_value else []
    if not languages:
        lang = NIL
    elif len(languages) == 1:
        lang = imap_string(languages[0])
    else:
        lang = b"(" + b" ".join(imap_string(t) for t in languages) + b")"
    return dsp + b" " + lang + b" " + nstring(header.get("content-location"))


def _lines(data: bytes, start: int, end: int) -> int:
    if end <= start:
        return 0
    count = data.count(b"\n", start, end)
    return count if data[end - 1 : end] == b"\n" else count + 1


def body_structure(part: Part, data: bytes, *, extended: bool) -> bytes:
    """BODYSTRUCTURE (extended) or BODY (not extended) of `part`."""
    body, structure = body_forms(part, data)
    return structure if extended else body


def body_forms(part: Part, data: bytes) -> tuple[bytes, bytes]:
    """(BODY, BODYSTRUCTURE) of `part`, built in one walk of the tree."""
    if part.children:
        forms = [body_forms(child, data) for child in part.children]
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
        inner_body, inner_structure = body_forms(part.message, data)
        lines = b"%d" % _lines(data, part.body_start, part.end)
        message_envelope = envelope(part.message.header)
        body_fields = [*fields, message_envelope, inner_body, lines]
        fields = [*fields, message_envelope, inner_structure, lines]
    elif ct.type.lower() == b"text":
        lines = b"%d" % _lines(data, part.body_start, part.end)
        body_fields = fields = [*fields, lines]
    extension = [nstring(header.get("content-md5")), _extension(part)]
    return b"(" + b" ".join(body_fields) + b")", b"(" + b" ".join(fields + extension) + b")"

"""What the store keeps about each message so IMAP never re-parses it: the IMAP forms of ENVELOPE, BODY
and BODYSTRUCTURE, the MIME part offsets, and decoded header fields for SEARCH and SORT."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from kartero.mime.addresses import parse_address_list
from kartero.mime.headers import HeaderBlock, decode_words
from kartero.mime.imapform import body_forms, envelope
from kartero.mime.structure import Part, parse_message


@dataclass(frozen=True, slots=True)
class MessageIndex:
    envelope: bytes
    body: bytes
    bodystructure: bytes
    parts: str  # JSON part tree, see part_tree()
    subject: str  # decoded and case-folded header values, for SEARCH (RFC 9051 §6.4.4: case-insensitive)
    from_: str
    to: str
    cc: str
    bcc: str
    message_id: str
    sent_date: int | None  # unix seconds of the Date header, for SEARCH SENT* and SORT DATE
    sort_subject: str  # RFC 5256 base subject, upper-cased
    sort_from: str  # addr-mailbox of the first address, lower-cased (RFC 5256 §3)
    sort_to: str
    sort_cc: str


def part_tree(part: Part) -> list[Any]:
    """[header_start, body_start, end, encoding, children, embedded message] for section fetches."""
    return [
        part.header_start,
        part.body_start,
        part.end,
        part.encoding.decode("latin-1").lower(),
        [part_tree(child) for child in part.children],
        part_tree(part.message) if part.message is not None else None,
    ]


def _first_mailbox(header: HeaderBlock, name: str) -> str:
    value = header.get(name)
    if value is None:
        return ""
    for address in parse_address_list(value):
        if address.host is not None and address.mailbox is not None:
            return address.mailbox.decode("utf-8", "replace").lower()
    return ""


_SUBJ_TRAILER = re.compile(r"(\s*\(fwd\)\s*|\s+)$", re.IGNORECASE)
_SUBJ_LEADER = re.compile(
    r"^(\s*(\[[^\[\]]*\]\s*)*(re|fwd?)\s*(\[[^\[\]]*\])?\s*:\s*|\s*\[[^\[\]]*\]\s+(?=\S))", re.IGNORECASE
)


def base_subject(subject: str) -> str:
    """RFC 5256 §2.1: the subject without reply/forward markers and list tags, for SORT and THREAD."""
    text = " ".join(subject.split())
    while True:
        before = text
        while (m := _SUBJ_TRAILER.search(text)) and m.group(0):
            text = text[: m.start()]
        while (m := _SUBJ_LEADER.match(text)) and m.group(0):
            text = text[m.end() :]
        if text.lower().startswith("[fwd:") and text.endswith("]"):
            text = text[5:-1].strip()
        if text == before:
            return text.upper()


def _sent_date(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        return int(parsedate_to_datetime(value.decode("latin-1")).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def index_message(data: bytes) -> MessageIndex:
    """Parse `data` once; never raises on malformed mail."""
    root = parse_message(data)
    header = root.header

    def decoded(name: str) -> str:
        return " ".join(decode_words(v) for v in header.get_all(name)).casefold()

    subject = " ".join(decode_words(v) for v in header.get_all("subject"))
    body, bodystructure = body_forms(root, data)
    return MessageIndex(
        envelope=envelope(header),
        body=body,
        bodystructure=bodystructure,
        parts=json.dumps(part_tree(root), separators=(",", ":")),
        subject=subject.casefold(),
        from_=decoded("from"),
        to=decoded("to"),
        cc=decoded("cc"),
        bcc=decoded("bcc"),
        message_id=(header.get("message-id") or b"").decode("latin-1").strip(),
        sent_date=_sent_date(header.get("date")),
        sort_subject=base_subject(subject),
        sort_from=_first_mailbox(header, "from"),
        sort_to=_first_mailbox(header, "to"),
        sort_cc=_first_mailbox(header, "cc"),
    )

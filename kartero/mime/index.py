"""What the store keeps about each message so IMAP never re-parses it: the IMAP forms of ENVELOPE, BODY
and BODYSTRUCTURE, the MIME part offsets, and decoded header fields for SEARCH and SORT."""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from kartero.mime.addresses import parse_address_list
from kartero.mime.headers import HeaderBlock, MessageData, decode_words
from kartero.mime.imapform import MAX_LIST_ADDRESSES, body_forms, envelope
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
    for address in parse_address_list(value, MAX_LIST_ADDRESSES):
        if address.host is not None and address.mailbox is not None:
            return address.mailbox.decode("utf-8", "replace").lower()
    return ""


def base_subject(subject: str) -> str:
    """RFC 5256 §2.1: the subject without reply/forward markers and list tags, for SORT and THREAD.

    Linear in the subject: the text is walked with two indices and never re-sliced, and a run of
    "[tag]" blobs is read once however often the leader step then drops one of them (issue 8: the
    regex version took 36 s on a 120 KB subject of tags).
    """
    text = " ".join(subject.split())  # (1): the only white space left is single spaces
    start, end = 0, len(text)
    while True:
        before = (start, end)
        start, end = _without_trailers(text, start, end)
        start = _without_leaders(text, start, end)
        # (6): "[fwd: ...]" around the whole subject
        if text[start : min(start + 5, end)].lower() == "[fwd:" and text.endswith("]", start, end):
            start, end = start + 5, end - 1
            while start < end and text[start] == " ":
                start += 1
            while end > start and text[end - 1] == " ":
                end -= 1
        if (start, end) == before:
            return text[start:end].upper()


def _without_trailers(text: str, start: int, end: int) -> tuple[int, int]:
    """(2): drop trailing white space and "(fwd)" markers."""
    while start < end:
        if text[end - 1] == " ":
            end -= 1
        elif end - start >= 5 and text[end - 5 : end].lower() == "(fwd)":
            end -= 5
        else:
            break
    return start, end


def _without_leaders(text: str, start: int, end: int) -> int:
    """(3)-(5): drop leading "re:"/"fw:"/"fwd:" markers (each may follow "[blob]"s and hold one before
    its colon), and "[blob]"s that are followed by more text; the new start of the subject."""
    startswith = text.startswith
    while True:
        position = start + 1 if startswith(" ", start, end) else start
        droppable = -1
        if startswith("[", position, end):
            position, droppable = _after_blobs(text, position, end)
        marker_end = _refwd_end(text, position, end)
        if marker_end < 0:
            # No marker after this run of blobs, so none after any shorter tail of it either (5): drop
            # the blobs that are followed by a space and more text (4), then stop.
            return max(start, droppable)
        start = marker_end


def _after_blobs(text: str, position: int, end: int) -> tuple[int, int]:
    """(end of the run of *("[" *BLOBCHAR "]" [" "]) at `position`, end of its leading blobs that are
    each followed by a space and more text, or -1). _blob_end inlined: this is the hot loop."""
    find, startswith = text.find, text.startswith
    droppable, dropping = -1, True
    while startswith("[", position, end):
        next_open = find("[", position + 1, end)
        close = find("]", position + 1, end if next_open < 0 else next_open)
        if close < 0:
            break
        if startswith(" ", close + 1, end):
            position = close + 2
            if dropping and position < end:
                droppable = position
                continue
        else:
            position = close + 1
        dropping = False
    return position, droppable


def _blob_end(text: str, position: int, end: int) -> int:
    """The end of "[" *BLOBCHAR "]" at `position`, or -1.

    Both searches stop at the next "[": a search from another "[" covers other text, so all blob
    lookups together read the subject a bounded number of times.
    """
    if not text.startswith("[", position, end):
        return -1
    next_open = text.find("[", position + 1, end)
    close = text.find("]", position + 1, end if next_open < 0 else next_open)
    return close + 1 if close >= 0 else -1


def _refwd_end(text: str, position: int, end: int) -> int:
    """The end of ("re" / "fw" ["d"]) [" "] [blob] [" "] ":" [" "] at `position`, or -1."""
    word = text[position : min(position + 3, end)].lower()
    if word[:2] == "re":
        position += 2
    elif word[:2] == "fw":
        position += 3 if word == "fwd" else 2
    else:
        return -1
    startswith = text.startswith
    if startswith(" ", position, end):
        position += 1
    if startswith("[", position, end):
        blob_end = _blob_end(text, position, end)
        if blob_end < 0:
            return -1  # a "[" that opens no blob cannot be followed by the colon
        position = blob_end + 1 if startswith(" ", blob_end, end) else blob_end
    if not startswith(":", position, end):
        return -1
    return position + 2 if startswith(" ", position + 1, end) else position + 1


def _sent_date(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        return int(parsedate_to_datetime(value.decode("latin-1")).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def index_message(data: MessageData) -> MessageIndex:
    """Parse `data` (bytes, or an mmap of a spool file) once; never raises on malformed mail."""
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

"""What the store keeps about each message so IMAP never re-parses it: the IMAP forms of ENVELOPE, BODY
and BODYSTRUCTURE, the MIME part offsets, and decoded header fields for SEARCH and SORT.

Every message gets an index: the structured parse keeps what it can of broken mail, and should it ever
fail (a bug), a fallback index built from the header block as bytes stands in, so a message is stored,
never refused (issue 8). Nothing here logs; a caller that wants to log calls the two parts itself.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime, parsedate_tz
from typing import TypeVar

from kartero.mime.addresses import EnvelopeAddress, parse_address_list
from kartero.mime.headers import (
    EMPTY_HEADER,
    HeaderBlock,
    MessageData,
    decode_words,
    find_body_start,
    parse_header_block,
)
from kartero.mime.imapform import NIL, body_forms, envelope, nstring
from kartero.mime.parttree import PartNode, node_of
from kartero.mime.preview import make_preview
from kartero.mime.structure import MAX_HEADER_BYTES, MAX_HEADER_LINES, TEXT_PLAIN, Part, parse_message

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MessageIndex:
    envelope: bytes
    body: bytes
    bodystructure: bytes
    parts: PartNode  # stored with encode_parts (kartero.mime.parttree)
    subject: str  # decoded and case-folded header values, for SEARCH (RFC 9051 §6.4.4: case-insensitive)
    from_: str  # the address fields as "Name <mailbox@host>, group: a@b;", without comments
    to: str
    cc: str
    bcc: str
    message_id: str
    sent_date: int | None  # unix seconds of the Date header, for SORT DATE
    sent_day: int | None  # the calendar day written in the Date header (00:00 UTC), for SEARCH SENT*
    sort_subject: str  # RFC 5256 base subject, upper-cased
    sort_from: str  # addr-mailbox of the first ENVELOPE address (a group's name), lower-cased (RFC 5256 §3)
    sort_to: str
    sort_cc: str
    preview: str  # RFC 8970 PREVIEW (kartero.mime.preview)


def _first_mailbox(header: HeaderBlock, name: str) -> str:
    """RFC 5256 §3: the addr-mailbox of the first ENVELOPE address, which for a group is the group's name
    (RFC 9051 §7.5.2), as Dovecot sorts."""
    value = header.get(name)
    if value is None:
        return ""
    for address in parse_address_list(value, 1):
        if address.mailbox is not None:
            return address.mailbox.decode("utf-8", "replace").lower()
    return ""


# SEARCH FROM/TO/CC/BCC read a field of at most this many addresses in its normalised form; a longer one
# as written (decoded), so no address in it becomes unsearchable and the work stays a step per address.
MAX_SEARCH_ADDRESSES = 10_000


def _address_text(values: list[bytes]) -> str:
    """Address fields as SEARCH reads them, the way Dovecot writes them back (message_address_write):
    `Name <mailbox@host>` or `mailbox@host`, `group: a@b, c@d;`, names decoded, comments gone."""
    out: list[str] = []
    for value in values:
        addresses = parse_address_list(value, MAX_SEARCH_ADDRESSES + 1)
        out.append(_written(addresses) if len(addresses) <= MAX_SEARCH_ADDRESSES else decode_words(value))
    return ", ".join(out)


def _written(addresses: tuple[EnvelopeAddress, ...]) -> str:
    items: list[str] = []
    group: list[str] | None = None  # the members of the group being read
    group_name = ""
    for address in addresses:
        if address.host is None:  # a group starts (its name as mailbox) or ends (all NIL): RFC 9051 §7.5.2
            if group is None and address.mailbox is not None:
                group_name, group = decode_words(address.mailbox), []
            elif group is not None:
                items.append(f"{group_name}: {', '.join(group)};")
                group = None
            continue
        spec = (address.mailbox or b"").decode("utf-8", "replace")
        if address.host:
            spec += "@" + address.host.decode("utf-8", "replace")
        if address.adl:
            spec = address.adl.decode("utf-8", "replace") + ":" + spec
        if address.name or address.adl:
            spec = f"{decode_words(address.name or b'')} <{spec}>".lstrip()
        (items if group is None else group).append(spec)
    if group is not None:  # cut off by the limit
        items.append(f"{group_name}: {', '.join(group)};")
    return ", ".join(items)


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


def _sent_day(value: bytes | None) -> int | None:
    """The day the Date header names, time and zone disregarded (RFC 9051 §6.4.4 SENTON: "Sun, 25 Mar 2007
    00:00:00 +0200" is 25 March), as unix seconds of that day's 00:00 UTC."""
    if value is None:
        return None
    try:
        parsed = parsedate_tz(value.decode("latin-1"))
        if parsed is None:
            return None
        day = datetime.datetime(parsed[0], parsed[1], parsed[2], tzinfo=datetime.UTC)
        return int(day.timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def index_message(data: MessageData) -> MessageIndex:
    """The index of any message, `bytes` or an mmap of a spool file: structured_index(), or
    fallback_index() if that fails. Never raises, logs nothing."""
    try:
        return structured_index(data)
    except Exception:  # a parser bug must not refuse the message: the fallback needs little of the parser
        return fallback_index(data)


def structured_index(data: MessageData) -> MessageIndex:
    """Parse `data` once into its full index. Malformed mail gives a best-effort structure; an exception
    means a bug (callers that log it then use fallback_index)."""
    root = parse_message(data)
    header = root.header
    subject = " ".join(decode_words(v) for v in header.get_all("subject"))
    body, bodystructure = body_forms(root, data)
    tree = node_of(root)
    return MessageIndex(
        envelope=envelope(header),
        body=body,
        bodystructure=bodystructure,
        parts=tree,
        subject=subject.casefold(),
        from_=_address_text(header.get_all("from")).casefold(),
        to=_address_text(header.get_all("to")).casefold(),
        cc=_address_text(header.get_all("cc")).casefold(),
        bcc=_address_text(header.get_all("bcc")).casefold(),
        message_id=(header.get("message-id") or b"").decode("latin-1").strip(),
        sent_date=_sent_date(header.get("date")),
        sent_day=_sent_day(header.get("date")),
        sort_subject=base_subject(subject),
        sort_from=_first_mailbox(header, "from"),
        sort_to=_first_mailbox(header, "to"),
        sort_cc=_first_mailbox(header, "cc"),
        preview=make_preview(lambda start, end: data[start:end], tree),
    )


def fallback_index(data: MessageData) -> MessageIndex:
    """A minimal index for a message the structured parse failed on; never raises.

    One text/plain part spans what follows the first blank line within the first MAX_HEADER_BYTES (or
    follows those bytes when they hold none); header fields are read from that block best-effort, each
    on its own: what cannot be read is NIL in the ENVELOPE and empty in the search fields.
    """
    size = len(data)
    window = data[: min(size, MAX_HEADER_BYTES)]
    header_end, body_start = find_body_start(window)
    header = _safely(lambda: parse_header_block(window[:header_end], MAX_HEADER_LINES), EMPTY_HEADER)

    def decoded(name: str) -> str:
        return " ".join(_decoded_or_raw(value) for value in header.get_all(name))

    plain = b'"text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d 0' % (size - body_start)
    tree = PartNode(0, body_start, size, "7bit")
    leaf = Part(0, body_start, size, EMPTY_HEADER, TEXT_PLAIN)
    body, bodystructure = _safely(
        lambda: body_forms(leaf, data), (b"(" + plain + b")", b"(" + plain + b" NIL NIL NIL NIL)")
    )
    subject = decoded("subject")
    return MessageIndex(
        envelope=_safely(lambda: envelope(header), _plain_envelope(header)),
        body=body,
        bodystructure=bodystructure,
        parts=tree,
        subject=subject.casefold(),
        from_=decoded("from").casefold(),
        to=decoded("to").casefold(),
        cc=decoded("cc").casefold(),
        bcc=decoded("bcc").casefold(),
        message_id=(header.get("message-id") or b"").decode("latin-1").strip(),
        sent_date=_safely(lambda: _sent_date(header.get("date")), None),
        sent_day=_safely(lambda: _sent_day(header.get("date")), None),
        sort_subject=_safely(lambda: base_subject(subject), ""),
        sort_from=_safely(lambda: _first_mailbox(header, "from"), ""),
        sort_to=_safely(lambda: _first_mailbox(header, "to"), ""),
        sort_cc=_safely(lambda: _first_mailbox(header, "cc"), ""),
        preview=_safely(lambda: make_preview(lambda start, end: data[start:end], tree), ""),
    )


def _decoded_or_raw(value: bytes) -> str:
    return _safely(lambda: decode_words(value), value.decode("latin-1"))


def _plain_envelope(header: HeaderBlock) -> bytes:
    """An ENVELOPE with the unstructured fields as written and NIL for every address list."""
    fields = [nstring(header.get("date")), nstring(header.get("subject")), *[NIL] * 6]
    fields += [nstring(header.get("in-reply-to")), nstring(header.get("message-id"))]
    return b"(" + b" ".join(fields) + b")"


def _safely(compute: Callable[[], T], default: T) -> T:
    """compute(), or `default` if it raises: the fallback index must come out whatever failed before."""
    try:
        return compute()
    except Exception:
        return default

"""Message bodies: the DATA reader (RFC 5321 §4.1.1.4, §4.5.2) and the checks every body passes.

The reader works on whole chunks with bytes methods (find, count, replace), never line by line in
Python, so a 20 MB body costs a handful of C-level passes.

SMTP smuggling defence: the only end of data is <CRLF>.<CRLF>. A bare LF or bare CR anywhere in the
body refuses the message, so `\\n.\\n` or `\\r.\\r` can never end one message early for us or for a
server we relay to later.
"""

from __future__ import annotations

from kartero.smtp import replies
from kartero.smtp.replies import Reply

_END = b"\r\n.\r\n"
# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including the CRLF.
MAX_TEXT_LINE = 998


def check_body(body: bytes) -> Reply | None:
    """Return the refusal for a body that breaks the text rules, or None when it is clean.

    `body` is the body as transmitted (still dot-stuffed for DATA), so line lengths are those on the
    wire, as RFC 5321 counts them.
    """
    crlf = body.count(b"\r\n")
    if body.count(b"\n") != crlf or body.count(b"\r") != crlf:
        return replies.BARE_LINE_ENDING
    if len(body) > MAX_TEXT_LINE and max(map(len, body.split(b"\r\n"))) > MAX_TEXT_LINE:
        return replies.TEXT_LINE_TOO_LONG
    return None


def unstuff(body: bytes) -> bytes:
    """Undo dot-stuffing: a leading period on any line is removed (RFC 5321 §4.5.2)."""
    if body.startswith(b"."):
        body = body[1:]
    return body.replace(b"\r\n.", b"\r\n")


class DataReader:
    """Collects one DATA body until <CRLF>.<CRLF>, holding at most about `max_size_bytes` of it.

    The stream is read as if preceded by the CRLF that ended the DATA command, so an empty message
    (".\\r\\n" right away) ends too.
    """

    def __init__(self, max_size_bytes: int) -> None:
        # Dot-stuffing can make the wire form a little longer than the message; allow for it here and
        # check the exact size after unstuffing.
        self._keep_limit = max_size_bytes + max_size_bytes // 8 + 1024
        self._chunks: list[bytes] = []
        self._length = 0  # octets of body seen so far (kept or not)
        self._tail = b"\r\n"  # the last few octets of the stream, to find _END across chunks
        self.is_overflowed = False

    @property
    def length(self) -> int:
        return self._length

    def feed(self, data: bytes | bytearray) -> int | None:
        """Take bytes; return how many of them belong to the body incl. the terminator, or None
        when all of them were body and the terminator has not come yet.

        Only body octets are copied, so the caller may pass its whole input buffer: commands pipelined
        behind the terminator cost nothing here (a copy of them per message made a pipelining client's
        work quadratic).
        """
        tail = self._tail
        # A terminator that starts in the tail lies within the tail and the first 4 octets of data.
        idx = (tail + data[:4]).find(_END)
        if idx < 0:
            found = data.find(_END)
            idx = found if found < 0 else len(tail) + found
        if idx < 0:
            self._keep(bytes(data))
            self._tail = (tail + data[-4:])[-4:]
            return None
        # In stream terms (stream = CRLF + body), the terminator starts at offset - len(tail) + idx.
        body_end = self._length - len(tail) + 2 + idx  # end of body incl. its last CRLF
        consumed = body_end - self._length + 3
        if body_end >= self._length:
            self._keep(bytes(data[: body_end - self._length]))
        else:
            self._truncate(body_end)
        return consumed

    def body(self) -> bytes:
        """The body as transmitted (still dot-stuffed), valid once `feed` returned a count."""
        return b"".join(self._chunks)

    def _keep(self, data: bytes) -> None:
        self._length += len(data)
        if self.is_overflowed:
            return
        if self._length > self._keep_limit:
            self.is_overflowed = True
            self._chunks.clear()
        else:
            self._chunks.append(data)

    def _truncate(self, length: int) -> None:
        # The terminator began inside bytes already kept (a CRLF at the end of an earlier chunk).
        self._length = length
        if not self.is_overflowed:
            self._chunks = [b"".join(self._chunks)[:length]]

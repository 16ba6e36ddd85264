"""Message bodies: the DATA reader (RFC 5321 §4.1.1.4, §4.5.2) and the checks every body passes.

Both work on whole chunks with bytes methods (find, count, replace), never line by line in Python, and
both are incremental: a body is checked, unstuffed and handed on as it arrives, so the core holds at
most `spool_threshold` octets of a message; past that the adapter takes the body out in pieces
(`MessageData` events) and writes them to a spool file (issue 8: memory per session is a constant, not
a multiple of the message).

SMTP smuggling defence: the only end of data is <CRLF>.<CRLF>. A bare LF or bare CR anywhere in the
body refuses the message, so `\\n.\\n` or `\\r.\\r` can never end one message early for us or for a
server we relay to later.
"""

from __future__ import annotations

from kartero.mail import replies
from kartero.mail.replies import Reply

_END = b"\r\n.\r\n"
# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including the CRLF.
MAX_TEXT_LINE = 998
# Octets handed to the adapter at a time once a message spills out of memory.
SPILL_PIECE = 64 * 1024


class BodyCollector:
    """Takes a body as transmitted, in pieces of any size, and keeps what the message is.

    Checks the text rules (no bare CR or LF, no line over MAX_TEXT_LINE + CRLF), undoes dot-stuffing
    (DATA only) and counts the message size; the first rule broken becomes `refusal`, checked in the
    order size, bare line ending, long line. Holds the message in memory until it passes
    `spool_threshold` octets; from then on `take()` hands out what it holds.
    """

    def __init__(self, max_size_bytes: int, spool_threshold: int, *, dot_stuffed: bool,
                 refuse_nul: bool = False) -> None:  # fmt: skip
        self._max_size = max_size_bytes
        self._refuse_nul = refuse_nul
        self._threshold = spool_threshold
        self._dot_stuffed = dot_stuffed
        self._carry = b""  # the line in progress (held until its CRLF comes)
        self._carry_at_line_start = True  # False once an over-long line was cut short
        self._held: list[bytes] = []
        self._held_size = 0
        self.size = 0  # octets of message (after unstuffing) seen so far
        self.spilled = 0  # octets handed out by take()
        self.is_8bit = False  # an octet above 127 was seen (the queue needs to know: BODY=8BITMIME)
        self.is_spilling = False
        self._too_big = self._bare = self._too_long = self._nul = False

    @property
    def refusal(self) -> Reply | None:
        if self._too_big:
            return replies.SIZE_EXCEEDED
        if self._bare:
            return replies.BARE_LINE_ENDING
        if self._too_long:
            return replies.TEXT_LINE_TOO_LONG
        if self._nul:
            return replies.NUL_IN_DATA
        return None

    @property
    def ready(self) -> int:
        """Octets `take()` would hand out now (0 unless spilling)."""
        return self._held_size if self.is_spilling else 0

    def feed(self, data: bytes) -> None:
        data = self._carry + data
        end = data.rfind(b"\r\n")
        carry = data
        if end >= 0:
            self._lines(data[: end + 2])
            carry = data[end + 2 :]
            self._carry_at_line_start = True
        if len(carry) > MAX_TEXT_LINE + 1:  # + 1: a CR at the end may be the start of the CRLF
            # Too long: the message is refused; count and check what is dropped, hold one octet.
            self._too_long = True
            dropped = carry[:-1]
            self._check_bare(dropped)
            self._keep(self._unstuffed_start(dropped))
            carry = carry[-1:]
            self._carry_at_line_start = False
        self._carry = carry

    def finish(self) -> None:
        """The body ended; what was carried is its last (unterminated) line."""
        carry, self._carry = self._carry, b""
        if carry:
            self._too_long = self._too_long or len(carry) > MAX_TEXT_LINE
            self._check_bare(carry)
            self._keep(self._unstuffed_start(carry))

    def _unstuffed_start(self, data: bytes) -> bytes:
        """`data` (no CRLF in it) without the stuffed period of the line it starts, if it starts one."""
        if self._dot_stuffed and self._carry_at_line_start and data.startswith(b"."):
            return data[1:]
        return data

    def take(self) -> bytes:
        """Hand out what is held (the adapter writes it to its spool file)."""
        data = b"".join(self._held)
        self._held, self._held_size = [], 0
        self.spilled += len(data)
        return data

    def rest(self) -> bytes:
        """What is held at the end: the whole message, or the part after the last `take()`."""
        data = b"".join(self._held)
        self._held, self._held_size = [], 0
        return data

    def _lines(self, lines: bytes) -> None:
        """Whole lines (`lines` starts at a line start and ends with CRLF)."""
        crlf = None
        if len(lines) > MAX_TEXT_LINE + 2:
            # One split serves the line-length check and the count of CRLFs (issue 10: counting b"\r\n"
            # was the slowest of the body's scans).
            pieces = lines.split(b"\r\n")
            crlf = len(pieces) - 1
            if not self._too_long:
                self._too_long = max(map(len, pieces)) > MAX_TEXT_LINE
        self._check_bare(lines, crlf)
        if self._dot_stuffed:  # RFC 5321 §4.5.2: a leading period on any line is removed
            if lines.startswith(b"."):
                lines = lines[1:]
            lines = lines.replace(b"\r\n.", b"\r\n")
        self._keep(lines)

    def _check_bare(self, data: bytes, crlf: int | None = None) -> None:
        """Bare CR or LF (and NUL, where refused) in `data`, which holds whole CRLFs only (`crlf` of
        them, when the caller counted)."""
        if self._refuse_nul and not self._nul:
            # A NUL ends strings in C clients and filters: each may read a different message.
            self._nul = b"\0" in data
        if not self._bare:
            if crlf is None:
                crlf = data.count(b"\r\n")
            self._bare = data.count(b"\n") != crlf or data.count(b"\r") != crlf

    def _keep(self, data: bytes) -> None:
        self.size += len(data)
        if not self.is_8bit and not data.isascii():
            self.is_8bit = True
        if self.size > self._max_size:
            self._too_big = True
        if self.refusal is not None:
            self._held, self._held_size = [], 0  # refused: nothing more is kept
            return
        self._held.append(data)
        self._held_size += len(data)
        if not self.is_spilling and self.size > self._threshold:
            self.is_spilling = True


class DataReader:
    """Finds the end of one DATA body (<CRLF>.<CRLF>) and passes the body to a BodyCollector.

    The stream is read as if preceded by the CRLF that ended the DATA command, so an empty message
    (".\\r\\n" right away) ends too. The last four octets seen are held back until it is known that they
    do not start the terminator.
    """

    def __init__(self, collector: BodyCollector) -> None:
        self.collector = collector
        self._hold = b"\r\n"  # the virtual CRLF, then the last octets not yet passed on
        self._skip = 2  # octets of the virtual CRLF still to drop
        self.length = 0  # octets of body seen (as transmitted), for logs

    def feed(self, data: bytes | bytearray) -> int | None:
        """Take bytes; return how many of them belong to the body incl. the terminator, or None when
        all of them were body and the terminator has not come yet.

        Only body octets are copied, so the caller may pass its whole input buffer: commands pipelined
        behind the terminator cost nothing here.
        """
        hold = self._hold
        # A terminator that starts in the held octets lies within them and the first 4 octets of data.
        idx = (hold + data[:4]).find(_END)
        if idx < 0:
            found = data.find(_END)
            idx = found if found < 0 else len(hold) + found
        if idx >= 0:
            end_in_data = idx + 2 - len(hold)  # the terminator's CRLF ends the body
            self._pass(hold + bytes(data[:end_in_data]) if end_in_data >= 0 else hold[: len(hold) + end_in_data])
            self._hold = b""
            self.collector.finish()
            return idx + 5 - len(hold)
        if len(data) >= 4:
            self._pass(hold + bytes(data[:-4]))
            self._hold = bytes(data[-4:])
        else:
            joined = hold + bytes(data)
            self._pass(joined[:-4])
            self._hold = joined[-4:]
        return None

    def _pass(self, body: bytes) -> None:
        if self._skip:
            cut = min(self._skip, len(body))
            body, self._skip = body[cut:], self._skip - cut
        self.length += len(body)
        if body:
            self.collector.feed(body)

"""mbox files (mboxrd, and the mboxo most tools write), read for an import and written by an export.

Reading: a message starts at a `From ` line at the start of the file, or after an empty line when the
line ends in a date (`From sender Thu Nov 29 10:00:00 2026`): a body line `From ` that a sloppy writer
did not quote is not taken for a separator. The empty line before a separator belongs to the file, not
to the message. A line of one or more `>` before `From ` loses one `>` (mboxrd); mboxo's quoting cannot
be undone exactly and is read the same way. mboxcl2's Content-Length framing is not used. The internal
date is the From_ line's (UTC unless it names a zone), the envelope sender its first word.

The header fields mail programs keep their state in (Status, X-Status, X-Keywords; X-UID, X-IMAP,
X-IMAPbase of UW-IMAP and Dovecot) are read as flags and left out of the stored message: they are the
mbox file's, not the message's (Dovecot hides them too). Status R is \\Seen (O, "old", has no IMAP flag);
X-Status A \\Answered, F \\Flagged, T \\Draft, D \\Deleted; X-Keywords the keywords. An export writes
them back the same way, so an export imported again gives the same messages and flags.

The file is read in lines of at most LINE_PIECE octets (a longer line comes in pieces; only a piece
that starts a line can be a separator or a header field): memory stays bounded whatever the file holds.
"""

from __future__ import annotations

import calendar
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kartero.migrate.buffer import Captured, MessageBuffer
from kartero.migrate.model import (
    MAX_KEYWORDS,
    SEPARATOR,
    FolderFound,
    Item,
    MessageFound,
    Unreadable,
    canonical_folder,
    check_folder_name,
    clean_flags,
)
from kartero.store.interface import INBOX

LINE_PIECE = 64 * 1024
# The part of a From_ line or a state header field that is looked at (they are short).
_FIELD_LIMIT = 1000
# Flags gathered from one message's state fields at most (the store keeps MAX_KEYWORDS keywords): a header
# of a million X-Keywords lines, each up to _FIELD_LIMIT octets of new words, must not grow a set without
# end (an 85 MiB one took 880 MB and 21 s before).
_MAX_STATE_FLAGS = 2 * MAX_KEYWORDS
STATE_FIELDS = frozenset({b"status", b"x-status", b"x-keywords", b"x-uid", b"x-imap", b"x-imapbase"})
_X_STATUS = {"A": "\\Answered", "F": "\\Flagged", "T": "\\Draft", "D": "\\Deleted"}
_MONTHS = {m.lower(): n for n, m in enumerate(calendar.month_abbr) if m}
MAILER_DAEMON = "MAILER-DAEMON"


@dataclass(frozen=True, slots=True)
class FromLine:
    sender: str
    date: int | None  # unix seconds; None: no date could be read


def parse_from_line(line: bytes) -> FromLine | None:
    """The sender and date of a `From ` line; None when it has no date (then, past the file's first
    line, it is a body line). Dates as asctime writes them (`Thu Nov 29 10:00:00 2026`), with or without
    seconds, with a numeric zone before or after the year."""
    if not line.startswith(b"From "):
        return None
    words = line[5:_FIELD_LIMIT].decode("ascii", "replace").split()
    if not words:
        return None
    month_at = next((i for i, w in enumerate(words[1:], 1) if w[:3].lower() in _MONTHS and len(w) <= 9), None)
    if month_at is None or len(words) < month_at + 3:
        return None
    rest = words[month_at + 1 :]
    zone = next((w for w in rest[2:4] if w[:1] in "+-" and w[1:].isdigit() and len(w) == 5), None)
    year = next((w for w in rest[2:4] if w.isdigit() and len(w) == 4), None)
    day, clock = rest[0], rest[1].split(":")
    if year is None or not day.isdigit() or not 2 <= len(clock) <= 3 or not all(c.isdigit() for c in clock):
        return None
    if not (1 <= int(day) <= 31 and int(clock[0]) < 24 and int(clock[1]) < 60 and int(clock[-1]) <= 60):
        return None
    try:
        moment = calendar.timegm((int(year), _MONTHS[words[month_at][:3].lower()], int(day), int(clock[0]),
                                  int(clock[1]), int(clock[2]) if len(clock) == 3 else 0, 0, 0, 0))  # fmt: skip
        time.gmtime(moment)  # a date Python can show (the store and IMAP will)
    except (ValueError, OverflowError):
        return None
    if zone is not None:
        offset = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
        moment += -offset if zone[0] == "+" else offset
    return FromLine(words[0] if month_at > 1 else MAILER_DAEMON, moment)


def format_from_line(sender: str, date: int) -> bytes:
    """A From_ line as mutt and Dovecot write it: the envelope sender (MAILER-DAEMON for none or for one
    a From_ line cannot hold) and the date in asctime form, UTC."""
    if not sender or any(ch.isspace() for ch in sender) or not sender.isascii():
        sender = MAILER_DAEMON
    return f"From {sender} {time.asctime(time.gmtime(date))}\n".encode("ascii")


def state_flags(field: bytes, value: bytes) -> set[str]:
    """The flags a Status, X-Status or X-Keywords field means (the others mean none)."""
    text = value[:_FIELD_LIMIT].decode("ascii", "replace")
    if field == b"status":
        return {"\\Seen"} if "R" in text else set()
    if field == b"x-status":
        return {_X_STATUS[ch] for ch in text if ch in _X_STATUS}
    if field == b"x-keywords":
        return {word for word in text.replace(",", " ").split()}
    return set()


def format_state_fields(flags: Iterable[str]) -> bytes:
    """Status, X-Status and X-Keywords fields for these flags (the inverse of `state_flags`)."""
    lowered = {f.lower(): f for f in flags}
    status = "RO" if "\\seen" in lowered else "O"
    x_status = "".join(letter for letter, flag in _X_STATUS.items() if flag.lower() in lowered)
    keywords = sorted(f for f in lowered.values() if not f.startswith("\\"))
    out = f"Status: {status}\n"
    if x_status:
        out += f"X-Status: {x_status}\n"
    if keywords:
        out += f"X-Keywords: {' '.join(keywords)}\n"
    return out.encode("ascii", "replace")


@dataclass(frozen=True, slots=True)
class MboxMessage:
    body: Captured
    sender: str
    date: int | None
    flags: frozenset[str]
    octets: int  # read from the file for this message, its From_ line included


def _is_blank(piece: bytes) -> bool:
    return piece in (b"\n", b"\r\n")


def read_mbox(file: BinaryIO, new_buffer: Callable[[], MessageBuffer]) -> Iterator[MboxMessage]:
    """The messages of an mbox file, one at a time, each in a buffer of its own. Raises ValueError when
    the file does not start with a From_ line (it is not an mbox); an empty file has no messages."""
    piece = file.readline(LINE_PIECE)
    if not piece:
        return
    if not piece.startswith(b"From "):
        raise ValueError("not an mbox file (it does not start with a From line)")
    while piece:
        start = parse_from_line(piece) or FromLine(MAILER_DAEMON, None)
        octets = len(piece)
        buffer = new_buffer()
        flags: set[str] = set()
        in_header, dropping, at_line_start, pending_blank = True, False, True, b""
        try:
            while True:
                piece = file.readline(LINE_PIECE)
                octets += len(piece)
                if not piece:
                    break
                line_start, at_line_start = at_line_start, piece.endswith(b"\n")
                if not line_start:
                    if not dropping:
                        buffer.write(piece)
                    continue
                if pending_blank:
                    if piece.startswith(b"From ") and parse_from_line(piece) is not None:
                        octets -= len(piece)
                        break  # the next message: the blank line was the separator
                    in_header = dropping = False  # (an empty line ends the header)
                    buffer.write(pending_blank)
                    pending_blank = b""
                if _is_blank(piece):
                    pending_blank = piece
                    continue
                if in_header:
                    if piece[:1] in (b" ", b"\t"):
                        if not dropping:
                            buffer.write(piece)
                        continue
                    name, colon, value = piece[:_FIELD_LIMIT].partition(b":")
                    name = name.strip(b" \t").lower()
                    if colon and name and b" " not in name and name.isascii():
                        dropping = name in STATE_FIELDS
                        if dropping:
                            if len(flags) < _MAX_STATE_FLAGS:
                                flags |= state_flags(name, value.strip())
                            continue
                    else:  # a body without a header
                        in_header = dropping = False
                if piece.startswith(b">") and piece.lstrip(b">").startswith(b"From "):
                    piece = piece[1:]  # mboxrd: one `>` less
                buffer.write(piece)
        except BaseException:
            buffer.discard()
            raise
        kept, _ = clean_flags(flags)
        yield MboxMessage(buffer.finish(), start.sender, start.date, kept, octets)


def write_mbox_message(out: BinaryIO, sender: str, date: int, flags: Iterable[str], message: BinaryIO) -> None:
    """Append one message: the From_ line, its state fields, its lines with CRLF as LF and `From `
    quoted the mboxrd way (`>` added before any run of `>` + `From `), a final line end if it lacks one,
    and the empty line before the next From_ line. State fields in the message's own header (a sender
    can write `X-Status: D` or `X-Keywords: ...`) are left out, as Dovecot leaves them out when it saves
    to mbox: a reader takes every state field for the mbox file's, so they would become flags the
    message never had here."""
    out.write(format_from_line(sender, date))
    out.write(format_state_fields(flags))
    at_line_start, held_cr, last = True, b"", b"\n"
    in_header, dropping = True, False
    while piece := message.readline(LINE_PIECE):
        piece = held_cr + piece
        held_cr = b""
        if piece.endswith(b"\r") and len(piece) >= LINE_PIECE:
            piece, held_cr = piece[:-1], b"\r"  # maybe the first half of a CRLF
        line_start, at_line_start = at_line_start, piece.endswith(b"\n")
        if in_header:
            if line_start and piece[:1] not in (b" ", b"\t"):  # a field's first line, or the header's end
                name, colon, _ = piece[:_FIELD_LIMIT].partition(b":")
                name = name.strip(b" \t").lower()
                in_header = bool(colon) and bool(name) and b" " not in name and name.isascii()  # as read_mbox
                dropping = in_header and name in STATE_FIELDS
            if dropping:
                continue
        if line_start and piece.lstrip(b">").startswith(b"From "):
            piece = b">" + piece
        if piece.endswith(b"\r\n"):
            piece = piece[:-2] + b"\n"
        out.write(piece)
        last = piece
    if held_cr:
        out.write(held_cr)
        last = held_cr
    if not last.endswith(b"\n"):
        out.write(b"\n")
    out.write(b"\n")


def _folder_of(relative: Path) -> str:
    """The folder an mbox file holds, from its path under the directory imported: levels from the
    directories (Thunderbird's `Name.sbd` is Name), `.mbox` dropped, INBOX in any case is INBOX."""
    parts = [p.removesuffix(".sbd") for p in relative.parts[:-1]] + [relative.name.removesuffix(".mbox")]
    return canonical_folder(SEPARATOR.join(parts))


class MboxSource:
    """One mbox file (into `folder`, INBOX unless told), or a directory of them (each file a folder,
    named by its path: `Archive/2024.mbox` is Archive/2024; hidden files and Thunderbird's `.msf`
    indexes are skipped)."""

    unit = "bytes"

    def __init__(self, path: Path, work_dir: Path, folder: str | None = None) -> None:
        self.path = path.resolve()
        self.identity = f"mbox:{self.path}"
        self._work_dir = work_dir
        self.files: list[tuple[str, Path]] = []
        self.problems: list[Unreadable] = []
        if self.path.is_file():
            self.files.append((canonical_folder(folder or INBOX), self.path))
        else:
            for top, dirs, names in os.walk(self.path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if name.startswith(".") or name.endswith(".msf"):
                        continue
                    full = Path(top) / name
                    target = _folder_of(full.relative_to(self.path))
                    if (problem := check_folder_name(target)) is not None:
                        self.problems.append(Unreadable(str(full), problem, 0))
                        continue
                    self.files.append((target, full))
            self.files.sort(key=lambda entry: (entry[0] != INBOX, entry[0]))
        self.total = sum(_size(p) for _, p in self.files)

    def items(self) -> Iterator[Item]:
        yield from self.problems
        for folder, path in self.files:
            yield FolderFound(folder)
            read = 0
            try:
                fallback_date = int(os.stat(path).st_mtime)
                with open(path, "rb") as file:
                    for message in read_mbox(file, lambda: MessageBuffer(self._work_dir, crlf=True)):
                        read += message.octets
                        yield MessageFound(folder, message.body, message.flags,
                                           message.date if message.date is not None else fallback_date,
                                           message.sender, message.octets)  # fmt: skip
            except (OSError, ValueError) as exc:
                problem = exc.strerror if isinstance(exc, OSError) else str(exc)
                yield Unreadable(folder, f"{path}: {problem}", max(_size(path) - read, 0))


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
